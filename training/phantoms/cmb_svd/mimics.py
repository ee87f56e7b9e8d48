"""cmb-svd mimics: thin tubes and blobs rasterised once per subject onto a template-space grid.

Veins (medullary, cortical, deep veins, dural sinuses), flow voids of the basal and Sylvian
arteries and calcifications (globus pallidus, choroid plexus, pineal): what a reader must not
call microbleeds. They darken the signal but never enter the microbleed mask.
"""
from __future__ import annotations

import numpy as np

from ..anatomy import BrainTemplate, Volume
from ..geometry import soft_inside
from .sites import _MNI, _direction, _lps, _region_name, _Sites, _surface_points


class _Raster:
    """Darkening (0..1) on a regular template-space grid (axis-aligned, signed steps)."""

    def __init__(self, affine: np.ndarray, shape: tuple[int, int, int]) -> None:
        self.affine = np.asarray(affine, float)
        self.step = np.diag(self.affine)[:3].astype(np.float32)
        self.origin = self.affine[:3, 3].astype(np.float32)
        self.array = np.zeros(shape, np.float32)

    @classmethod
    def head_box(cls, step: float) -> "_Raster":
        lo = np.array([-85.0, -90.0, -75.0])  # LPS, the head around the template brain
        hi = np.array([85.0, 120.0, 95.0])
        affine = np.diag([step, step, step, 1.0])
        affine[:3, 3] = lo
        return cls(affine, tuple(int(v) for v in np.ceil((hi - lo) / step) + 1))

    def volume(self) -> Volume:
        return Volume(self.array, self.affine)

    def _box(self, lo: np.ndarray, hi: np.ndarray):
        i0, i1 = (lo - self.origin) / self.step, (hi - self.origin) / self.step
        top = np.array(self.array.shape)
        a = np.clip(np.floor(np.minimum(i0, i1)).astype(int), 0, top)
        b = np.clip(np.ceil(np.maximum(i0, i1)).astype(int) + 1, 0, top)
        sl = tuple(slice(int(i), int(j)) for i, j in zip(a, b))
        axes = [self.origin[k] + self.step[k] * np.arange(a[k], b[k], dtype=np.float32) for k in range(3)]
        return sl, np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    def _edge(self) -> float:
        return max(0.35, 0.3 * float(np.abs(self.step).max()))

    def tube(self, path: np.ndarray, radius: float, dark: float) -> None:
        """A tube of ``radius`` mm along the polyline ``path`` (template LPS)."""
        edge = self._edge()
        for a, b in zip(path[:-1].astype(np.float32), path[1:].astype(np.float32)):
            pad = radius + 3 * edge
            sl, pts = self._box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
            if pts.size == 0:
                continue
            ab = b - a
            t = np.clip(((pts - a) @ ab) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
            d = np.linalg.norm(pts - (a + t[..., None] * ab), axis=-1)
            self.array[sl] = np.maximum(self.array[sl], dark * soft_inside(d - radius, edge))

    def blob(self, centre: np.ndarray, radii: np.ndarray, dark: float) -> None:
        edge = self._edge()
        pad = float(np.max(radii)) + 3 * edge
        sl, pts = self._box(centre - pad, centre + pad)
        if pts.size == 0:
            return
        k = np.sqrt((((pts - centre) / radii) ** 2).sum(-1))
        self.array[sl] = np.maximum(self.array[sl], dark * soft_inside((k - 1.0) * float(np.min(radii)), edge))


def _jitter(rng: np.random.Generator, path_mni: list[tuple], sd: float, flip_x: bool = False) -> np.ndarray:
    """A polyline given in MNI mm (left side), mirrored if asked, shifted by ``sd`` mm, as template LPS."""
    p = np.asarray(path_mni, float)
    if flip_x:
        p[:, 0] *= -1
    return p * _MNI + rng.normal(0.0, sd, 3)


def _mimics(rng: np.random.Generator, t: BrainTemplate, sites: _Sites, raster: _Raster) -> list[dict]:
    """Draw into ``raster`` the veins, sinuses, flow voids and calcifications of every class."""
    out: list[dict] = []

    def add(kind: str, where: str, path: np.ndarray, radius: float, dark: float) -> None:
        raster.tube(path, radius, dark)
        out.append({"type": kind, "location": where, "template_lps": path.mean(axis=0)})

    def calcify(where: str, centre: np.ndarray, radii: np.ndarray, dark: float) -> None:
        raster.blob(centre, radii, dark)
        out.append({"type": "calcification", "location": where, "template_lps": centre})

    # Medullary veins: thin, fanning out from the lateral ventricles' bodies through the deep white
    # matter (mostly in the axial plane, so they show as lines; the steeper ones as dots).
    for side, sx in (("left", -1.0), ("right", 1.0)):
        wall = sites.ventricle_surface[side]
        for _ in range(int(rng.integers(20, 40))):
            s = wall[int(rng.integers(len(wall)))]
            a, b = np.radians(rng.uniform(-10, 40)), np.radians(rng.uniform(-55, 55))
            v = np.array([sx * np.cos(a) * np.cos(b), np.cos(a) * np.sin(b), np.sin(a)]) * _MNI
            length = rng.uniform(15, 35)
            bend = rng.normal(0, 0.12, 3)
            path = np.stack([s + v * length * f + bend * length * f * f for f in (0.0, 0.35, 0.7, 1.0)])
            raster.tube(path, rng.uniform(0.35, 0.65), rng.uniform(0.55, 0.9))
        out.append({"type": "vein", "location": f"{side} medullary veins (periventricular white matter)",
                    "template_lps": wall.mean(axis=0)})
    # Cortical veins ascending the convexity in the sulci.
    for _ in range(int(rng.integers(10, 20))):
        e0, e1 = rng.uniform(-5, 30), rng.uniform(55, 80)
        a0 = rng.uniform(0, 360)
        elev = np.linspace(e0, e1, 10) + rng.normal(0, 2, 10).cumsum() * 0.3
        azim = a0 + np.linspace(0, rng.uniform(-20, 20), 10) + np.sin(np.linspace(0, 3, 10)) * rng.uniform(-6, 6)
        path = _surface_points(t, _direction(elev, azim), rng.uniform(-1.5, -0.3))
        add("vein", f"cortical vein over {_region_name(sites, t, path[len(path) // 3])}", path,
            rng.uniform(0.7, 1.3), rng.uniform(0.55, 0.8))
    # Dural sinuses and deep veins.
    sss = _surface_points(t, _direction(np.linspace(5, 175, 24), np.full(24, 90.0)), rng.uniform(0.5, 2.0))
    sss[:, 0] = rng.normal(0, 0.5)
    add("vein", "superior sagittal sinus", sss, rng.uniform(2.2, 3.2), rng.uniform(0.45, 0.7))
    add("vein", "straight sinus and vein of Galen",
        _jitter(rng, [(0, -36, 8), (0, -44, 6), (0, -60, 2), (0, -78, -2), (0, -96, -4)], 1.0),
        rng.uniform(1.6, 2.4), rng.uniform(0.5, 0.75))
    for flip, side in ((False, "left"), (True, "right")):
        add("vein", f"{side} internal cerebral vein",
            _jitter(rng, [(-2, -4, 14), (-3, -16, 14), (-2.5, -28, 12), (-1, -37, 9)], 0.8, flip),
            rng.uniform(0.9, 1.3), rng.uniform(0.55, 0.8))
        add("vein", f"{side} thalamostriate vein",
            _jitter(rng, [(-19, -24, 20), (-14, -14, 19), (-8, -5, 16), (-3, -3, 14)], 0.8, flip),
            rng.uniform(0.6, 0.9), rng.uniform(0.45, 0.7))
        add("vein", f"{side} basal vein of Rosenthal",
            _jitter(rng, [(-20, 0, -14), (-21, -12, -10), (-16, -26, -5), (-8, -38, 2), (-2, -42, 5)], 1.0, flip),
            rng.uniform(0.8, 1.2), rng.uniform(0.5, 0.75))
        add("vein", f"{side} transverse sinus",
            _jitter(rng, [(-2, -98, -5), (-25, -98, -10), (-45, -85, -18), (-55, -65, -26)], 1.0, flip),
            rng.uniform(2.0, 3.0), rng.uniform(0.4, 0.65))

    # Flow voids of the basal and Sylvian arteries (round dark dots where they cross the slice).
    stem = sites.infratentorial["Brain_Stem"]
    zs = np.arange(-40.0, -14.0, 4.0)
    front = [stem[(np.abs(stem[:, 2] - z) < 2) & (np.abs(stem[:, 0]) < 4)] for z in zs]
    basilar = np.array([[0.0, f[:, 1].min() - rng.uniform(2.5, 4.0), z] for f, z in zip(front, zs) if len(f)])
    add("flow_void", "basilar artery (prepontine cistern)", basilar, rng.uniform(1.3, 1.9), rng.uniform(0.8, 0.92))
    for flip, side in ((False, "left"), (True, "right")):
        add("flow_void", f"{side} internal carotid terminus",
            _jitter(rng, [(-14, 2, -26), (-14, 0, -16)], 0.8, flip), rng.uniform(1.5, 2.0), rng.uniform(0.8, 0.92))
        add("flow_void", f"{side} MCA M1 (Sylvian)",
            _jitter(rng, [(-14, 0, -16), (-24, -2, -11), (-32, 0, -8), (-38, 2, -5)], 0.8, flip),
            rng.uniform(1.0, 1.5), rng.uniform(0.8, 0.92))
        for _ in range(int(rng.integers(2, 4))):
            y = rng.uniform(-14, 14)
            add("flow_void", f"{side} MCA M2 (insular cistern)",
                _jitter(rng, [(-40, y, -4), (-41, y - 2, 6), (-39, y - 3, 16)], 0.8, flip),
                rng.uniform(0.7, 1.1), rng.uniform(0.75, 0.9))
        add("flow_void", f"{side} posterior cerebral artery",
            _jitter(rng, [(0, -16, -16), (-10, -20, -12), (-18, -30, -8), (-22, -42, -4)], 0.8, flip),
            rng.uniform(0.8, 1.2), rng.uniform(0.75, 0.9))

    # Calcifications: symmetric globus pallidus, choroid plexus glomus, pineal.
    if rng.random() < 0.4:
        pall = sites.deep["Left_Pallidum"]
        for _ in range(int(rng.integers(1, 3))):
            c = pall[int(rng.integers(len(pall)))]
            radii = rng.uniform(1.8, 4.0, 3)
            dark = rng.uniform(0.6, 0.88)
            for side, cc in (("Left", c), ("Right", c * np.array([-1, 1, 1]) + rng.normal(0, 1.0, 3))):
                calcify(f"{side}_Pallidum (globus pallidus)", cc, radii * rng.uniform(0.8, 1.2, 3), dark)
    if rng.random() < 0.4:
        for side in ("left", "right"):
            calcify(f"{side} choroid plexus (atrium)", sites.trigone[side] + rng.normal(0, 1.5, 3),
                    rng.uniform(2.0, 4.0, 3), rng.uniform(0.7, 0.92))
    if rng.random() < 0.35:
        calcify("pineal gland", _lps(0, -31, 3) + rng.normal(0, 1.0, 3), rng.uniform(1.5, 3.0, 3),
                rng.uniform(0.7, 0.9))
    return out
