"""Non-contrast head CT with intracranial hemorrhage (RSNA's and CQ500's labels).

Anatomy: the template head (brain, CSF, skull with tables and diploe, scalp, fat) warped per
subject, pitched and placed in the gantry; HU per tissue with subject variation, correlated
quantum noise, partial volume over 5 mm (full) slices.

Positives, alone or together as they co-occur clinically: intraparenchymal (deep
hypertensive or lobar, with oedema), intraventricular (dependent layering, or extension of a
deep bleed), subdural (long thin crescent), epidural (short thick biconvex lens, often with a
fracture), subarachnoid (blood in cisterns, Sylvian fissure or convexity sulci), calvarial
fracture, mass effect and midline shift (the brain is displaced inside a skull that stays).
Mimics in every class: choroid-plexus, pineal and basal-ganglia calcification, and
beam-hardening streaks in the posterior fossa, some of them hyperdense.

Labels: any, iph, ivh, sdh, edh, sah (RSNA) + fracture, mass_effect, midline_shift (CQ500),
at study level and per slice; one mask per lesion.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .anatomy import BrainTemplate, load_template
from .baseline import read_series
from .geometry import Grid, Scene, SubjectWarp, ellipsoid_distance, render, soft_inside
from .head import HeadParams, head_tissues, random_head
from .identity import make_identity, pick_description
from .registry import TaskSpec
from .study import Series, Study

LABELS = ("any", "iph", "ivh", "sdh", "edh", "sah", "fracture", "mass_effect", "midline_shift")
BLEEDS = ("iph", "ivh", "sdh", "edh", "sah")
_BRAIN_CENTRE = np.array([0.0, 18.0, 15.0], np.float32)  # template LPS, mid-brain
_SEPTUM = np.array([0.0, -8.0, 12.0], np.float32)  # septum pellucidum, where midline shift is measured

_DESCRIPTIONS = {
    "siemens": ("Head 5.0 H30s", "Kopf 5.0 J40s", "HeadSeq 5.0 H31s", "Schaedel nativ 5.0"),
    "ge": ("HEAD STD 5mm", "5mm Stnd", "Routine Head STND", "AX BRAIN 5MM"),
    "philips": ("Brain 5mm", "Head NC 5.0 UB", "Brain Sequential 5mm", "iDose Brain"),
}
_MISLEADING = ("CT ABDOMEN", "Bone 1.0", "localizer", "TEST")
_KERNELS = {"siemens": "H30s", "ge": "STANDARD", "philips": "UB"}


def _surface_point(template: BrainTemplate, direction: np.ndarray, depth_mm: float) -> np.ndarray:
    """Where a ray from mid-brain along ``direction`` meets envelope distance ``depth_mm``."""
    direction = direction / np.linalg.norm(direction)
    radii = np.arange(20.0, 120.0, 0.5, dtype=np.float32)
    pts = _BRAIN_CENTRE + radii[:, None] * direction[None, :].astype(np.float32)
    d = template.envelope.sample(pts, order=1, cval=1e3)
    i = int(np.argmax(d >= depth_mm))
    return pts[i]


def _random_direction(rng: np.random.Generator, min_z: float = -0.2, max_z: float = 0.8) -> np.ndarray:
    while True:
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        v[1] *= 0.9
        if min_z <= v[2] <= max_z:
            return v.astype(np.float32)


class _Lesions:
    """The hemorrhages, fracture, displacement and mimics of one study, in template space."""

    def __init__(self, rng: np.random.Generator, template: BrainTemplate, bleeds: set[str], gap: float, skull: float):
        self.template = template
        self.items: list[dict] = []
        self.pushes: list[tuple[np.ndarray, float, float]] = []  # (centre, magnitude mm, length mm)
        self.gap = gap
        self.skull = skull
        self.fracture: dict | None = None
        edh_site = None
        if "edh" in bleeds:
            u = _random_direction(rng, -0.1, 0.7)
            u[0] = np.sign(u[0] or 1) * max(abs(u[0]), 0.5)
            edh_site = u / np.linalg.norm(u)
            t = float(rng.uniform(5.0, 22.0))
            self._convexity("edh", edh_site, t, float(np.radians(rng.uniform(18, 32))), rng.uniform(55, 85), power=2.0)
        if "sdh" in bleeds:
            u = _random_direction(rng, -0.1, 0.8)
            u[0] = np.sign(u[0] or 1) * max(abs(u[0]), 0.6)
            t = float(rng.uniform(2.5, 14.0))
            hu = rng.uniform(38, 50) if rng.random() < 0.2 else rng.uniform(50, 75)  # some subacute, near-isodense
            self._convexity("sdh", u / np.linalg.norm(u), t, float(np.radians(rng.uniform(45, 75))), hu, power=4.0)
        if "iph" in bleeds:
            deep = rng.random() < 0.6
            if deep:
                region = ("Left_Putamen", "Right_Putamen", "Left_Thalamus_Proper", "Right_Thalamus_Proper")[int(rng.integers(4))]
                pts = template.region_points(region)
            else:
                pts = template.region_points("Left_Cerebral_White_Matter", "Right_Cerebral_White_Matter")
            centre = pts[int(rng.integers(len(pts)))].astype(np.float32)
            radius = float(rng.uniform(3.0, 18.0))
            parts = [(centre, rng.uniform(0.7, 1.3, 3) * radius)]
            for _ in range(int(rng.integers(0, 3))):
                parts.append((centre + rng.normal(0, radius * 0.5, 3).astype(np.float32), rng.uniform(0.5, 0.9, 3) * radius))
            self.items.append({
                "type": "iph", "location": "deep" if deep else "lobar", "centre": centre, "parts": parts,
                "hu": float(rng.uniform(55, 85)), "edema_mm": float(rng.uniform(2.0, 7.0)),
            })
            if radius > 8:
                self.pushes.append((centre, radius * rng.uniform(0.25, 0.5), radius * 2.5 + 20))
        if "ivh" in bleeds:
            vent = template.region_points("Left_Lateral_Ventricle", "Right_Lateral_Ventricle")
            front, back = (float(v) for v in np.quantile(vent[:, 1], [0.02, 0.98]))
            fill = float(rng.uniform(0.15, 0.65))  # how far forward the dependent blood reaches
            self.items.append({
                "type": "ivh", "location": "ventricular", "level_y": back - fill * (back - front),
                "hu": float(rng.uniform(45, 70)), "centre": vent.mean(axis=0),
            })
        if "sah" in bleeds:
            site = rng.choice(["basal_cisterns", "sylvian", "convexity"])
            if site == "basal_cisterns":
                centre = np.array([0.0, 2.0, -18.0], np.float32) + rng.normal(0, 3, 3).astype(np.float32)
            elif site == "sylvian":
                centre = np.array([rng.choice([-1, 1]) * 40.0, -5.0, -2.0], np.float32) + rng.normal(0, 4, 3).astype(np.float32)
            else:
                centre = _surface_point(template, _random_direction(rng, 0.0, 0.8), -3.0)
            self.items.append({
                "type": "sah", "location": str(site), "centre": centre,
                "sigma": float(rng.uniform(10.0, 22.0)), "hu": float(rng.uniform(45, 75)),
            })
        if "fracture" in bleeds:
            u = edh_site if edh_site is not None else _random_direction(rng, 0.0, 0.8)
            point = _surface_point(template, u, gap + skull * 0.5)
            normal = np.cross(u, rng.normal(size=3)).astype(np.float32)
            self.fracture = {
                "type": "fracture", "location": "calvarium", "centre": point,
                "normal": normal / np.linalg.norm(normal), "width": float(rng.uniform(1.0, 2.5)),
                "length": float(rng.uniform(15.0, 45.0)),
            }
        # Mimics, in every class.
        self.mimics: list[dict] = []
        if rng.random() < 0.6:
            for side in ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle"):
                pts = template.region_points(side)
                trig = pts[pts[:, 1] > np.quantile(pts[:, 1], 0.8)]
                self.mimics.append({"type": "calcification", "location": "choroid_plexus",
                                    "centre": trig.mean(axis=0).astype(np.float32) + rng.normal(0, 1.5, 3).astype(np.float32),
                                    "radius": float(rng.uniform(1.5, 4.0)), "hu": float(rng.uniform(90, 300))})
        if rng.random() < 0.5:
            pts = template.region_points("3rd_Ventricle")
            back = pts[np.argmax(pts[:, 1])].astype(np.float32) + np.array([0.0, 4.0, 0.0], np.float32)
            self.mimics.append({"type": "calcification", "location": "pineal", "centre": back,
                                "radius": float(rng.uniform(1.5, 3.5)), "hu": float(rng.uniform(90, 350))})
        if rng.random() < 0.12:
            for side in ("Left_Pallidum", "Right_Pallidum"):
                c = template.region_centroid(side).astype(np.float32)
                self.mimics.append({"type": "calcification", "location": "basal_ganglia", "centre": c,
                                    "radius": float(rng.uniform(2.0, 4.5)), "hu": float(rng.uniform(70, 200))})

    def _convexity(self, kind: str, u: np.ndarray, t: float, extent: float, hu: float, power: float) -> None:
        site = _surface_point(self.template, u, self.gap)
        self.items.append({"type": kind, "location": "convexity", "direction": u, "centre": site,
                           "thickness": t, "extent": extent, "hu": float(hu), "power": power})
        self.pushes.append((site, t * 0.9, 45.0 + 2.0 * t))

    def displaced(self, q: np.ndarray) -> np.ndarray:
        """Where the brain is sampled: pushed away from each space-occupying lesion."""
        qb = q.copy()
        for centre, magnitude, length in self.pushes:
            r = q - centre
            dist = np.linalg.norm(r, axis=-1, keepdims=True) + 1e-3
            qb -= (r / dist) * magnitude * np.exp(-0.5 * (dist / length) ** 2)
        return qb

    def midline_shift_mm(self) -> float:
        qb = self.displaced(_SEPTUM[None, :])[0]
        return float(abs(qb[0] - _SEPTUM[0]))

    def max_push_mm(self) -> float:
        return max((m for _, m, _ in self.pushes), default=0.0)

    def occupancy(self, item: dict, q: np.ndarray, fr: dict, d: np.ndarray, labels: np.ndarray) -> np.ndarray:
        kind = item["type"]
        if kind in ("edh", "sdh"):
            v = q - _BRAIN_CENTRE
            cosang = (v @ item["direction"]) / (np.linalg.norm(v, axis=-1) + 1e-3)
            ang = np.arccos(np.clip(cosang, -1, 1))
            profile = np.clip(1.0 - (ang / item["extent"]) ** item["power"], 0.0, 1.0)
            thick = item["thickness"] * profile
            inner_edge = self.gap - thick
            band = soft_inside(inner_edge - d, 0.5) * soft_inside(d - self.gap - 0.3, 0.4)
            return band * (thick > 0.3)
        if kind == "iph":
            occ = np.zeros(q.shape[:-1], np.float32)
            for centre, radii in item["parts"]:
                occ = np.maximum(occ, soft_inside(ellipsoid_distance(q, centre, radii), 0.6))
            return occ * (fr["gm"] + fr["wm"] + fr["csf"])
        if kind == "ivh":
            ids = self.template.ids("Left_Lateral_Ventricle", "Right_Lateral_Ventricle")
            in_vent = np.isin(labels, ids)
            # Supine patient: blood settles posteriorly (+y in LPS), in the occipital horns first.
            return in_vent * soft_inside(item["level_y"] - q[..., 1], 1.0) * fr["csf"]
        if kind == "sah":
            ids = self.template.ids("Left_Lateral_Ventricle", "Right_Lateral_Ventricle", "3rd_Ventricle", "4th_Ventricle")
            w = np.exp(-0.5 * np.sum((q - item["centre"]) ** 2, axis=-1) / item["sigma"] ** 2)
            return fr["csf"] * ~np.isin(labels, ids) * np.clip((w - 0.3) / 0.4, 0, 1)
        raise ValueError(kind)

    def scene(self, warp: SubjectWarp, head: HeadParams) -> Scene:
        template = self.template

        def scene(p: np.ndarray) -> dict[str, np.ndarray]:
            q = warp(p)
            qb = self.displaced(q) if self.pushes else q
            fr = head_tissues(template, q, head, q_brain=qb)
            d = template.envelope.sample(q, order=1, cval=1e3)
            labels = template.labels.sample(qb, order=0)
            out = dict(fr)
            hu_blood = np.zeros(q.shape[:-1], np.float32)
            blood_total = np.zeros(q.shape[:-1], np.float32)
            edema = np.zeros(q.shape[:-1], np.float32)
            for i, item in enumerate(self.items):
                occ = np.clip(self.occupancy(item, q if item["type"] in ("edh", "sdh") else qb, fr, d, labels), 0, 1)
                occ = np.minimum(occ, 1.0 - blood_total)
                out[f"lesion{i}"] = occ
                hu_blood += occ * item["hu"]
                blood_total += occ
                if item["type"] == "iph":
                    ring = np.zeros_like(occ)
                    for centre, radii in item["parts"]:
                        ring = np.maximum(ring, soft_inside(ellipsoid_distance(qb, centre, radii + item["edema_mm"]), 1.0))
                    edema = np.maximum(edema, (ring - occ).clip(0) * (fr["wm"] + fr["gm"]))
            if self.fracture is not None:
                f = self.fracture
                r = q - f["centre"]
                across = np.abs(r @ f["normal"])
                along = np.linalg.norm(r - (r @ f["normal"])[..., None] * f["normal"], axis=-1)
                cut = soft_inside(across - f["width"] / 2, 0.3) * soft_inside(along - f["length"] / 2, 2.0)
                lost = cut * (fr["bone"] + fr["diploe"])
                out["fracture"] = lost
            mimic = np.zeros(q.shape[:-1], np.float32)
            mimic_hu = np.zeros(q.shape[:-1], np.float32)
            for m in self.mimics:
                occ = soft_inside(np.linalg.norm(qb - m["centre"], axis=-1) - m["radius"], 0.5)
                occ = np.minimum(occ, 1.0 - mimic)
                mimic += occ
                mimic_hu += occ * m["hu"]
            out["blood"], out["blood_hu"] = blood_total, hu_blood
            out["edema"], out["mimic"], out["mimic_hu"] = edema, mimic, mimic_hu
            return out

        return scene


def _hu(rng: np.random.Generator) -> dict[str, float]:
    return {
        "gm": rng.uniform(34, 42), "wm": rng.uniform(23, 30), "csf": rng.uniform(2, 10),
        "bone": rng.uniform(1100, 1700), "diploe": rng.uniform(350, 700), "scalp": rng.uniform(25, 45),
        "fat": rng.uniform(-110, -80), "air": -1000.0,
    }


def _streaks(rng: np.random.Generator, grid: Grid, n_low: int) -> np.ndarray:
    """Beam-hardening-like streaks (dark, some bright) across the lowest slices."""
    img = np.zeros(grid.shape, np.float32)
    ny, nx = grid.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    px = grid.pixel_spacing[1]
    for k in range(min(n_low, grid.shape[0])):
        for _ in range(int(rng.integers(1, 4))):
            ang = rng.uniform(0, np.pi)
            cy, cx = ny * rng.uniform(0.45, 0.7), nx * rng.uniform(0.35, 0.65)
            dist = np.abs((xx - cx) * np.sin(ang) - (yy - cy) * np.cos(ang)) * px
            along = np.abs((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)) * px
            amp = rng.uniform(-45, -15) if rng.random() < 0.7 else rng.uniform(15, 40)
            img[k] += amp * np.exp(-0.5 * (dist / rng.uniform(1.0, 2.5)) ** 2) * np.exp(-0.5 * (along / 45.0) ** 2)
    return img


def generate(rng: np.random.Generator, case_id: str, label: str, size: str, slices: int | None = None) -> Study:
    """One head CT of class ``label``. ``slices`` (full size only) asks for that many thin
    contiguous slices over the same head coverage instead of the usual 2.5–5 mm ones, e.g. a
    300-slice series for the node's ingest benchmark (no sub-slice sampling then: the slices
    are already thinner than the partial-volume profile)."""
    if slices is not None and (size != "full" or slices < 2):
        raise ValueError(f"slices needs size 'full' and at least 2 slices, got {size!r}, {slices!r}")
    template = load_template()
    hemorrhage = label == "hemorrhage"
    identity = make_identity(rng, "CT", (18, 92) if hemorrhage else (18, 90))
    head = random_head(rng, identity.age_years)
    bleeds: set[str] = set()
    if hemorrhage:
        first = str(rng.choice(BLEEDS, p=[0.3, 0.12, 0.25, 0.13, 0.2]))
        bleeds.add(first)
        companions = {"iph": ("ivh", 0.35), "edh": ("fracture", 0.7), "sdh": ("sah", 0.35), "sah": ("ivh", 0.15), "ivh": ("iph", 0.3)}
        other, p = companions[first]
        if rng.random() < p:
            bleeds.add(other)
        if rng.random() < 0.2:
            bleeds.add(str(rng.choice(BLEEDS)))
    elif rng.random() < 0.08:
        bleeds.add("fracture")  # an isolated fracture without bleeding
    lesions = _Lesions(rng, template, bleeds, head.csf_gap_mm, head.skull_mm)

    pitch = rng.uniform(-18, 12)
    warp = SubjectWarp(
        rng,
        centre=np.array([rng.uniform(-6, 6), rng.uniform(-15, 10), rng.uniform(-120, 80)]),
        angles_deg=(pitch, rng.uniform(-6, 6), rng.uniform(-6, 6)),
        scale=tuple(rng.uniform(0.92, 1.08, 3)),
        warp_mm=float(rng.uniform(1.5, 4.0)),
    )
    bottom = warp.to_patient(np.array([0.0, 10.0, -52.0]))
    top = warp.to_patient(np.array([0.0, 10.0, 88.0]))
    span = float(top[2] - bottom[2])
    oblique = rng.random() < 0.3
    tilt = np.radians(rng.uniform(-15, -5)) if oblique else 0.0
    rot = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    if size == "full":
        thickness = float(rng.choice([5.0, 5.0, 4.0, 2.5]))
        nz = int(np.ceil(span / thickness)) + 1
        fov = rng.uniform(220, 250)
        shape, subsamples = (nz, 512, 512), 3
        if slices is not None:
            nz, subsamples = slices, 1
            thickness = round(span / (nz - 1), 3)
            shape = (nz, 512, 512)
    else:
        nz = 24
        thickness = round(span / (nz - 1), 1)
        fov = rng.uniform(230, 250)
        shape, subsamples = (nz, 128, 128), 2
    pix = round(float(fov / shape[1]), 4)
    centre = (bottom + top) / 2
    grid = Grid.centred(centre, shape, (pix, pix), thickness, thickness, rot)
    fr = render(lesions.scene(warp, head), grid, subsamples)

    hu_t = _hu(rng)
    base = sum(fr[k] * hu_t[k] for k in ("gm", "wm", "csf", "bone", "diploe", "scalp", "fat", "air"))
    soft = np.clip(1.0 - fr["blood"] - fr["mimic"], 0.0, 1.0)
    hu = base * soft + fr["blood_hu"] + fr["mimic_hu"] - fr["edema"] * rng.uniform(5, 10)
    if "fracture" in fr:
        hu = hu - fr["fracture"] * (hu_t["bone"] - 30.0) * 0.9
    hu += _streaks(rng, grid, max(2, nz // 5))
    noise = rng.normal(0, 1, shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, (0, 0.8, 0.8))
    hu += noise / noise.std() * rng.uniform(3.0, 6.0)

    scanner = identity.scanner
    signed = scanner.style == "ge"
    stored_hu = np.clip(np.rint(hu), -1024, 3071)
    if signed:  # GE stores signed HU; the others store HU + 1024 unsigned
        pixels, rescale = stored_hu.astype(np.int16), (1.0, 0.0)
    else:
        pixels, rescale = (stored_hu + 1024).astype(np.uint16), (1.0, -1024.0)

    # Masks: one id per lesion (hemorrhage), the fracture, and the calcification mimics.
    hem_mask = np.zeros(shape, np.uint8)
    lesions_truth = []
    vox = pix * pix * thickness
    for i, item in enumerate(lesions.items):
        m = (fr[f"lesion{i}"] >= 0.5) & (hem_mask == 0)
        if m.sum() == 0:
            continue
        lid = len(lesions_truth) + 1
        hem_mask[m] = lid
        lesions_truth.append(_lesion_record(lid, item, m, grid, vox))
    masks = {"hemorrhage": ("ct", hem_mask)}
    contrast = {"hemorrhage": "brighter"}
    if "fracture" in fr:
        fm = (fr["fracture"] >= 0.3).astype(np.uint8)
        if fm.any():
            masks["fracture"] = ("ct", fm)
            contrast["fracture"] = "darker"
    mim_mask = np.zeros(shape, np.uint8)
    mim_truth = []
    labelled, n = ndimage.label(fr["mimic"] >= 0.5)
    for j in range(1, n + 1):
        mim_mask[labelled == j] = j
    for m in lesions.mimics:
        mim_truth.append({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in m.items()})
    masks["mimics"] = ("ct", mim_mask)
    if n:
        contrast["mimics"] = "brighter"

    present = {t for t in (r["type"] for r in lesions_truth)}
    shift = lesions.midline_shift_mm() if lesions.pushes else 0.0
    labels = {k: 0 for k in LABELS}
    for t in present:
        labels[t] = 1
    labels["any"] = int(bool(present & set(BLEEDS)))
    labels["fracture"] = int("fracture" in masks)
    labels["mass_effect"] = int(lesions.max_push_mm() >= 4.0 and labels["any"] == 1)
    labels["midline_shift"] = int(shift >= 5.0)
    min_px = max(1, int(np.ceil(5.0 / (pix * pix))))  # >= 5 mm² on a slice counts
    per_slice = {t: [0] * nz for t in LABELS}
    for rec in lesions_truth:
        for k in range(nz):
            if (hem_mask[k] == rec["id"]).sum() >= min_px:
                per_slice[rec["type"]][k] = 1
                per_slice["any"][k] = 1
    if "fracture" in masks:
        per_slice["fracture"] = [int(masks["fracture"][1][k].sum() >= min_px) for k in range(nz)]
    if labels["mass_effect"]:
        per_slice["mass_effect"] = list(per_slice["any"])
    if labels["midline_shift"]:
        per_slice["midline_shift"] = list(per_slice["any"])

    description = pick_description(rng, _DESCRIPTIONS, scanner.style, _MISLEADING)
    attributes = {
        "KVP": float(rng.choice([100, 120, 120, 140])),
        "XRayTubeCurrent": int(rng.integers(150, 350)),
        "ExposureTime": int(rng.integers(800, 1500)),
        "ConvolutionKernel": _KERNELS[scanner.style],
        "GantryDetectorTilt": 0.0,
        "TableHeight": round(float(rng.uniform(120, 180)), 1),
        "RotationDirection": "CW",
        "ReconstructionDiameter": round(float(fov), 1),
        "DataCollectionDiameter": 500.0,
        "PatientWeight": float(rng.integers(50, 100)),
        "FilterType": "HEAD" if scanner.style != "ge" else "BODY FILTER",
    }
    ct = Series(
        key="ct", kind="CT", modality="CT", grid=grid, pixels=pixels, description=description,
        image_type=["ORIGINAL", "PRIMARY", "AXIAL"], window=(40.0, 80.0), attributes=attributes,
        rescale=rescale, body_part="HEAD", protocol="Head routine",
    )
    return Study(
        task="ct-hemorrhage", case_id=case_id, label=label, labels=labels, identity=identity,
        study_description=pick_description(rng, {"siemens": ("CT Schaedel",), "ge": ("CT HEAD WO CONTRAST",), "philips": ("CT Brain",)}, scanner.style, p_misleading=0.0),
        series=[ct], masks=masks, mask_contrast=contrast,
        truth={
            "lesions": lesions_truth,
            "mimics": mim_truth,
            "per_slice_labels": per_slice,
            "midline_shift_mm": round(shift, 2),
            "age": identity.age_years,
        },
    )


def _lesion_record(lid: int, item: dict, mask: np.ndarray, grid: Grid, vox: float) -> dict:
    centroid = grid.index_to_lps(np.argwhere(mask).mean(axis=0))
    rec = {"id": lid, "type": item["type"], "location": item["location"], "hu": round(item["hu"], 1),
           "volume_mm3": round(float(mask.sum() * vox), 1), "centroid_lps": [round(float(v), 2) for v in centroid],
           "slices": sorted({int(k) for k in np.nonzero(mask.any(axis=(1, 2)))[0]})}
    if "thickness" in item:
        rec["max_thickness_mm"] = round(item["thickness"], 1)
    return rec


def baseline(study_dir: Path) -> float:
    """Naive detector: number of voxels in the blood HU range (55–90) inside the head."""
    import SimpleITK as sitk

    hu = sitk.GetArrayFromImage(read_series(study_dir, "ct"))
    return float(((hu >= 55) & (hu <= 90)).sum())


TASK = TaskSpec(
    name="ct-hemorrhage",
    classes=("hemorrhage", "normal"),
    generate=generate,
    summary="non-contrast head CT: IPH, IVH, SDH, EDH, SAH, fracture, mass effect, midline shift; calcification and streak mimics",
    baseline=baseline,
    baseline_positive="hemorrhage",
)
