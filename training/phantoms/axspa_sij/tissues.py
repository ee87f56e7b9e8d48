"""Tissue fractions of a subject's pelvis, with its lesions, at points of the sacral frame.

Bone, joint, lesions, lumbar spine, vessels, muscles, pelvic contents and subcutaneous fat
are laid down by priority, each taking its share of what is left; smooth random fields
(:class:`_Texture`) vary marrow fat, muscle fat and the borders of bone and lesions.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..geometry import soft_inside
from .lesions import _LESION_TISSUE, Lesion
from .pelvis import Pelvis, _capsule, _smax, _smin, _step


class _Texture:
    """Smooth random fields in the sacral frame (marrow fat, muscle fat, lesion borders)."""

    lo = np.array([-170.0, -150.0, -160.0], np.float32)
    step = 6.0

    def __init__(self, rng: np.random.Generator) -> None:
        shape = (3, 58, 48, 55)
        noise = rng.standard_normal(shape).astype(np.float32)
        self.fields = np.stack([ndimage.gaussian_filter(f, s) for f, s in zip(noise, (0.9, 1.3, 0.7))])
        self.fields /= self.fields.reshape(3, -1).std(axis=1)[:, None, None, None]

    def sample(self, q: np.ndarray) -> np.ndarray:
        idx = ((q.reshape(-1, 3) - self.lo) / self.step).T
        return np.stack([
            ndimage.map_coordinates(f, idx, order=1, mode="nearest", prefilter=False).reshape(q.shape[:-1])
            for f in self.fields
        ])


def _lesion_distance(les: Lesion, left, n, y, z, rough):
    """A lesion's signed distance, computed only near it (50 mm elsewhere)."""
    reach = max(les.radii) + 0.3 * les.radii[0] + 6.0
    near = (left == (les.side > 0)) & (np.abs(y - les.centre[1]) < reach) & (np.abs(z - les.centre[2]) < reach)
    out = np.full(n.shape, 50.0, np.float32)
    if near.any():
        out[near] = les.distance(n[near], y[near], z[near], np.broadcast_to(rough, n.shape)[near])
    return out


def _anatomy(q: np.ndarray, pel: Pelvis, lesions: list[Lesion], tex: _Texture) -> dict[str, np.ndarray]:
    """Tissue fractions (and lesion/joint occupancies, keys starting with ``_``) at sacral-frame points."""
    f4 = np.float32
    X, Y, Z = q[..., 0], q[..., 1], q[..., 2]
    u = np.abs(X)
    left = X >= 0
    # The texture is smooth (~5 mm): one sample per pixel serves all its sub-slices.
    t_ff, t_mf, t_rough = tex.sample(q.mean(axis=0) if q.ndim == 4 else q)

    # ---- sacrum
    Yc = Y - pel.bend(Z).astype(f4)  # y relative to the curved sacral centre line
    amp, ky, kz, ph_l, ph_r = pel.ripple
    B = pel.b0(Z) * np.where(left, f4(1 + pel.asym), f4(1 - pel.asym)) - f4(pel.taper) * Yc
    B = B + f4(amp) * np.sin(f4(ky) * Yc + f4(kz) * Z + np.where(left, f4(ph_l), f4(ph_r)))
    h_b, h_l, p_z, hw = pel.h_b(Z), pel.h_l(Z), pel.p(Z), pel.hw(Z)
    A = -(h_l + (h_b - h_l) * np.exp(-((X / hw) ** 4)))  # anterior surface
    P = p_z + 5.0 * np.exp(-((X / 7.0) ** 2))  # posterior surface with the median crest
    y_cart = pel.y_cart(Z)
    B_eff = B - pel.lig_gap * _step((Yc - y_cart) / 3.0) - 3.0 * _step((Z - pel.z_hi) / 3.0)
    d_env = _smax(_smax(u - B_eff, A - Yc, 3.0), Yc - P, 3.0)
    d_env = _smax(d_env, _smax(Z - (pel.z_top - 0.08 * u), pel.z_bot - Z, 4.0), 3.0)
    cw = np.interp(Z, (pel.z_bot, pel.z_top), (4.5, 11.0)).astype(f4)
    cd = np.interp(Z, (pel.z_bot, pel.z_top), (3.0, 6.0)).astype(f4)
    y_can = p_z - 2.5 - cd
    d_can = (np.sqrt((X / cw) ** 2 + ((Yc - y_can) / cd) ** 2) - 1.0) * cd
    d_for = None
    for zf, xf, rf in pel.foramina:
        d = np.sqrt((u - xf) ** 2 + (Z - zf) ** 2) - rf
        d_for = d if d_for is None else np.minimum(d_for, d)
    d_env = d_env + 0.5 * t_rough
    d_sac = _smax(d_env, -np.minimum(d_can, d_for), 1.0)

    # ---- ilium: posterior block with the auricular surface, and the wing
    Jm = B + f4(pel.joint)
    nI = u - Jm
    y_ant = -h_l - 2.0
    y_post = p_z + pel.psis * np.exp(-(((Z - pel.psis_z) / 24.0) ** 2)) + 2.0
    thick = pel.il_thick * (0.7 + 0.3 * _step((Z - pel.z_lo - 15.0) / 20.0))  # thinner over the notch
    d_blk = _smax(_smax(-nI, nI - thick, 4.0), _smax(y_ant - Yc, Yc - y_post, 5.0), 5.0)
    d_blk = _smax(d_blk, _smax(Z - (pel.z_top + pel.il_top - 0.35 * nI), (pel.z_lo - 3.0) - Z, 8.0), 8.0)
    # The wing stands in the scanner's frame (untilted): a coronal-oblique slice meets it
    # further out the higher it goes, which gives the superolateral flare of the ilia.
    t = np.radians(pel.tilt)
    ct, st = f4(np.cos(t)), f4(np.sin(t))
    vy = ct * Y - st * Z
    vz = st * Y + ct * Z
    beta = np.radians(pel.wing_angle)
    cb, sb = f4(np.cos(beta)), f4(np.sin(beta))
    z0 = 0.5 * (pel.z_hi + pel.z_lo)
    u0 = pel.b_hi + pel.joint + 0.55 * pel.il_thick
    vy0 = np.cos(t) * (-pel.h_l(z0) + 4.0) - np.sin(t) * z0
    along = (u - u0) * cb - (vy - vy0) * sb
    delta = (u - u0) * sb + (vy - vy0) * cb
    a01 = np.clip(along / pel.wing_len, 0.0, 1.0)
    delta = delta - pel.wing_bulge * 4.0 * a01 * (1.0 - a01)
    vz_top = np.cos(t) * pel.z_top
    z_crest = vz_top + pel.crest + 14.0 * np.sin(np.pi * a01)
    vz_lo = np.cos(t) * pel.z_lo
    z_low = vz_lo - 4.0 - pel.body_drop * np.exp(-(((a01 - 0.45) / 0.2) ** 2))
    tw = pel.wing_t * (1.0 + 0.8 * (1.0 - a01) ** 2) + 6.0 * _step((vz - z_crest + 10.0) / 5.0) \
        + 10.0 * _step((vz_lo - 20.0 - vz) / 10.0)
    d_wing = _smax(np.abs(delta) - tw / 2, _smax(-along - 10.0, along - pel.wing_len, 6.0), 3.0)
    d_wing = _smax(d_wing, _smax(vz - z_crest, z_low - vz, 6.0), 3.0)
    d_il = _smin(d_blk, d_wing, 6.0) - 0.5 * t_rough

    # ---- osteophytes: bone added at the anterior joint margin
    n = u - B  # joint coordinate of every point, on its own side
    ost_occ = {}
    for les in lesions:
        if les.kind != "osteophyte":
            continue
        d = _lesion_distance(les, left, n, Yc, Z, t_rough)
        ost_occ[les.id] = soft_inside(d, 0.6) * (1.0 - soft_inside(np.minimum(d_il, d_sac), 0.6))
        d_il = _smin(d_il, d, 2.0)

    # ---- lumbar spine above: L5 and L4 bodies, their discs, canal and arches (lordosis tilts them back)
    y5 = Yc - (Z - pel.z_top) * 0.35
    h_top = pel.h_body[0]
    back = -h_top + 31.0
    waist = 2.5 * np.sin(np.pi * (Z - pel.z_top - pel.disc_h) / (27.0 + pel.disc_h)) ** 2  # concave sides
    box_xy = _smax(np.abs(X) - pel.hw_body[0] - 2.0 + waist, _smax(-h_top - 1.0 - y5, y5 - back, 6.0), 8.0)
    box_xy = box_xy + 0.4 * t_rough
    z_d1 = pel.z_top + pel.disc_h  # top of the L5/S1 disc
    z_d2 = z_d1 + 27.0  # bottom of the L4/L5 disc
    z_d3 = z_d2 + pel.disc_h + 1.5
    d_l5 = np.minimum(_smax(box_xy, _smax(z_d1 + 1.0 - Z, Z - z_d2, 3.0), 2.0),
                      _smax(box_xy, z_d3 + 1.0 - Z, 3.0))
    d_disc = np.minimum(_smax(box_xy + 1.0, _smax(pel.z_top + 0.5 - Z, Z - z_d1, 1.5), 1.0),
                        _smax(box_xy + 1.0, _smax(z_d2 + 0.5 - Z, Z - z_d3, 1.5), 1.0))
    d_can5 = _smax(np.sqrt((X / 11.0) ** 2 + ((y5 - back - 8.0) / 7.0) ** 2) * 7.0 - 7.0, pel.z_top - 4.0 - Z, 3.0)
    d_arch = np.minimum(_smax(np.abs(X) - 22.0, np.abs(y5 - back - 21.0) - 5.0, 3.0),
                        _smax(np.abs(X) - 4.0, np.abs(y5 - back - 36.0) - 12.0, 3.0))
    d_arch = _smax(d_arch, pel.z_top + 10.0 - Z, 4.0) + 0.4 * t_rough

    # ---- joint space: cartilage in front and below, ligament behind and above
    d_zone = _smax(_smax(pel.z_lo - 1.0 - Z, Z - pel.z_top, 2.0), _smax(y_ant - Yc, Yc - y_post, 2.0), 2.0)
    gap = soft_inside(_smax(B_eff - 1.0 - u, u - Jm - 0.5, 1.0), 0.5) * soft_inside(d_zone, 1.0)
    cart_share = soft_inside(Yc - y_cart, 1.5) * soft_inside(Z - pel.z_hi, 1.5)

    # ---- lesion occupancies (marrow lesions, erosions)
    bone_occ = {"sacral": soft_inside(d_sac, 0.5), "iliac": soft_inside(d_il, 0.5)}
    marrow_occ = {"sacral": soft_inside(d_sac + pel.cortex + (pel.sub_sac - pel.cortex) * np.exp(-((n / 3.0) ** 2)), 0.5),
                  "iliac": soft_inside(d_il + pel.cortex + (pel.sub_il - pel.cortex) * np.exp(-((nI / 3.0) ** 2)), 0.5)}
    occ = {les.id: soft_inside(_lesion_distance(les, left, n, Yc, Z, t_rough), les.edge)
           for les in lesions if les.kind != "osteophyte"}

    # ---- compose by priority
    out: dict[str, np.ndarray] = {}
    body_rem = _body(X, vy, vz, pel)
    rem = body_rem["body"]
    subcut = body_rem["subcut"]
    out["air"] = 1.0 - rem

    def add(name, value):
        out[name] = out[name] + value if name in out else value

    # erosions take bone and cartilage first
    ero_total = np.zeros_like(X)
    for les in lesions:
        if les.kind != "erosion":
            continue
        e = occ[les.id] * np.clip(bone_occ[les.bone] + gap, 0.0, 1.0) * rem
        e = np.minimum(e, rem - ero_total)
        out[f"_les{les.id}"] = e
        ero_total = ero_total + e
    add("erosion", ero_total)
    rem = rem - ero_total

    marrow = {}
    for bone in ("sacral", "iliac"):
        b = bone_occ[bone] * rem
        m = marrow_occ[bone] * rem
        add("cortex", np.clip(b - m, 0.0, None))
        marrow[bone] = m
        if bone == "sacral":
            holes = np.clip(soft_inside(d_env, 0.5) - bone_occ["sacral"], 0.0, 1.0) * rem
            in_canal = d_can < d_for
            sac = np.where(in_canal, _step((Z - (pel.z_top - 45.0)) / 10.0), 0.0)  # dural sac above S2
            root = np.where(in_canal, 0.3, 0.1 + 0.6 * soft_inside(d_for + 2.2, 0.8))
            add("csf", holes * sac * 0.8)
            add("nerve", holes * np.where(in_canal, 0.2 + 0.2 * (1.0 - sac), root))
            add("fat", holes * np.where(in_canal, 0.6 * (1.0 - sac), 1.0 - root))
            rem = rem * (1.0 - soft_inside(d_env, 0.5))
        else:
            rem = rem * (1.0 - bone_occ[bone])
    for les_id, o in ost_occ.items():
        out[f"_les{les_id}"] = o * (1.0 - out["air"])

    # remnant discs inside the sacral bodies
    seg = np.zeros_like(X)
    body_core = soft_inside(np.abs(X) - 0.85 * hw, 1.5) * soft_inside(Yc - (A + 2.0 * h_b * 0.9), 2.0)
    for zs, ts in pel.segments:
        seg = np.maximum(seg, np.exp(-(((Z - zs + 0.8 * t_rough) / (0.5 * ts)) ** 2)))
    seg = seg * body_core * marrow["sacral"]
    marrow["sacral"] = marrow["sacral"] - seg
    add("disc", seg)

    # marrow lesions replace marrow (fat/water) by lesion tissue
    for les in lesions:
        if les.kind not in _LESION_TISSUE:
            continue
        m = marrow[les.bone]
        out[f"_les{les.id}"] = occ[les.id] * m  # where this lesion holds the marrow (not taken before)
        take = m * occ[les.id] * f4(les.strength)
        marrow[les.bone] = m - take
        add(_LESION_TISSUE[les.kind], take)
    ff = np.clip(pel.ff + 0.09 * t_ff, 0.15, 0.95)
    for bone in ("sacral", "iliac"):
        add("mfat", marrow[bone] * ff)
        add("mwater", marrow[bone] * (1.0 - ff))

    # lumbar spine (no lesions)
    disc = soft_inside(d_disc, 0.6) * rem
    add("disc", disc)
    rem = rem - disc
    for d_v in (d_l5, d_arch):
        v = soft_inside(d_v, 0.5) * rem
        vm = soft_inside(d_v + pel.cortex, 0.5) * rem
        add("cortex", np.clip(v - vm, 0.0, None))
        add("mfat", vm * ff)
        add("mwater", vm * (1.0 - ff))
        rem = rem - v
    c5 = soft_inside(d_can5, 0.8) * rem
    add("csf", c5 * 0.85)
    add("nerve", c5 * 0.15)
    rem = rem - c5

    # joint space
    j = gap * rem
    add("cartilage", j * cart_share * (1.0 - pel.fluid))
    add("csf", j * cart_share * pel.fluid)  # joint fluid: the same water signal
    add("ligament", j * (1.0 - cart_share) * 0.6)
    add("fat", j * (1.0 - cart_share) * 0.4)
    out["_jl"] = j * cart_share * left
    out["_jr"] = j * cart_share * (~left)
    rem = rem - j

    # subcutaneous fat
    sc = subcut * rem
    add("fat", sc)
    rem = rem - sc

    # iliac vessels in front of the joint (artery and vein per side)
    lo = np.min([np.min(path, axis=0) for path in pel.vessels], axis=0) - 8.0
    hi = np.max([np.max(path, axis=0) for path in pel.vessels], axis=0) + 8.0
    near = (u > lo[0]) & (u < hi[0]) & (Yc > lo[1]) & (Yc < hi[1]) & (Z > lo[2]) & (Z < hi[2])
    art = np.full(X.shape, 50.0, f4)
    vein = np.full(X.shape, 50.0, f4)
    if near.any():
        p3 = (u[near], Yc[near], Z[near])
        for target, path, radius in ((art, pel.vessels[0], 3.2), (vein, pel.vessels[1], 4.2)):
            pts = [np.asarray(v, float) for v in path]
            d = None
            for a, b in zip(pts[:-1], pts[1:]):
                c = _capsule(p3, a, b, radius)
                d = c if d is None else _smin(d, c, 1.0)
            target[near] = d
    va = soft_inside(art, 0.6) * rem
    add("artery", va)
    rem = rem - va
    vv = soft_inside(vein, 0.6) * rem
    add("vein", vv)
    rem = rem - vv

    # muscles inside the pelvis: psoas, iliacus, piriformis
    zz = (pel.z_lo - 25.0, pel.z_top, pel.z_top + 60.0)
    up = np.interp(Z, zz, (64.0, 48.0, 36.0)).astype(f4)
    yp = np.interp(Z, zz, (-44.0, -h_top - pel.psoas[1] + 2.0, -5.0)).astype(f4)
    d_ps = (np.sqrt(((u - up) / pel.psoas[0]) ** 2 + ((Yc - yp) / pel.psoas[1]) ** 2) - 1.0) * pel.psoas[1]
    d_ps = _smax(d_ps, pel.z_lo - 30.0 - Z, 8.0)
    d_ili = _smax(np.abs(delta + tw / 2 + pel.iliacus / 2) - pel.iliacus / 2, _smax(-along - 5.0, along - pel.wing_len, 6.0), 3.0)
    d_ili = _smax(d_ili, _smax(vz - z_crest + 3.0, vz_lo - 12.0 - vz, 6.0), 3.0)
    pa = np.array([24.0, -pel.h_lat[1] - 6.0, pel.z_lo - 6.0])
    pb = np.array([120.0, 6.0, pel.z_lo - 55.0])
    d_pi = _capsule((u, Yc, Z), pa, pb, pel.piri_r)
    mus = soft_inside(np.minimum(np.minimum(d_ps, d_ili), d_pi), 1.0) * rem
    add("muscle", mus * (1.0 - pel.muscle_fat))
    add("fat", mus * pel.muscle_fat)
    rem = rem - mus

    # pelvic cavity: fat with bowel loops and the rectum
    d_cav = _smax(Yc - (A - 2.0), delta + tw / 2 + pel.iliacus + 1.0, 4.0)
    d_notch = _smax(_smax(Z - (pel.z_lo - 5.0), B_eff + 3.0 - u, 4.0), _smax(Yc - (p_z - 4.0), delta + tw / 2 + 2.0, 4.0), 4.0)
    cav = soft_inside(np.minimum(d_cav, d_notch), 2.0)
    bowel = np.zeros_like(X)
    gas = np.zeros_like(X)
    wall = np.zeros_like(X)
    for lx, ly, lz, rx, rz, level in pel.loops:
        k = np.sqrt(((X - lx) / rx) ** 2 + ((Y - ly) / rz) ** 2 + ((Z - lz) / rz) ** 2)
        d = (k - 1.0) * rz
        lumen = soft_inside(d + 2.5, 0.6)
        wall = np.maximum(wall, soft_inside(d, 0.6) - lumen)
        g = lumen * soft_inside(((Y - ly) / rz - level) * rz, 1.0)
        gas = np.maximum(gas, g)
        bowel = np.maximum(bowel, lumen - g)
    rx, rr = pel.rectum
    y_rec = -pel.h_b(Z) - rr - 4.0
    d_rec = _smax(np.sqrt((X - rx) ** 2 + (Yc - y_rec) ** 2) - rr, Z - (pel.z_lo + 5.0), 6.0)
    lumen = soft_inside(d_rec + 3.0, 0.6)
    wall = np.maximum(wall, soft_inside(d_rec, 0.6) - lumen)
    bowel = np.maximum(bowel, lumen * 0.85)
    gas = np.maximum(gas, lumen * 0.15 * soft_inside(Yc - (y_rec - rr * 0.5), 1.0))
    inside = cav * rem
    bw = np.clip(bowel + gas + wall, 0.0, 1.0)
    add("bowel", inside * bowel)
    add("gas", inside * gas)
    add("muscle", inside * wall)
    add("fat", inside * (1.0 - bw))
    rem = rem - inside

    # fat plane between gluteus medius and maximus, then muscle everywhere else
    plane = soft_inside(np.abs(delta - tw / 2 - pel.gmed) - 1.5, 0.7) * _step(along / 5.0) * soft_inside(vz - z_crest, 3.0)
    pl = plane * rem
    add("fat", pl)
    rem = rem - pl
    mf = np.clip(pel.muscle_fat + 0.03 * t_mf, 0.0, 0.6)
    add("muscle", rem * (1.0 - mf))
    add("fat", rem * mf)
    return out


def _body(X, vy, vz, pel: Pelvis) -> dict[str, np.ndarray]:
    """Body outline and subcutaneous fat, in axes aligned with the scanner (untilted)."""
    # A rounded trunk, then the back: buttocks bulging below the sacrum on either side of
    # the gluteal cleft.
    y_max = pel.skin_post + pel.buttock + 10.0
    y_ant = -170.0
    cy = (y_max + y_ant) / 2
    ay = (y_max - y_ant) / 2
    ax = pel.skin_hw + 0.12 * np.clip(-vz, 0.0, 80.0)
    m = 2.6
    k = ((np.abs(X) / ax) ** m + (np.abs(vy - cy) / ay) ** m) ** (1.0 / m)
    rho = np.sqrt(X * X + (vy - cy) ** 2)
    d_skin = (k - 1.0) * rho / np.maximum(k, 1e-3)
    low = _step((-30.0 - vz) / 30.0)
    bulge = low * pel.buttock * (0.5 + 0.5 * np.exp(-(((np.abs(X) - 65.0) / 55.0) ** 2)))
    width = 3.0 + 5.0 * low
    cleft = _step((-55.0 - vz) / 30.0) * (0.6 * pel.subcut_post + pel.buttock) * np.exp(-((X / width) ** 2))
    y_post = pel.skin_post + bulge - cleft
    d_back = (vy - y_post) / np.sqrt(1.0 + (cleft * 2.0 * np.abs(X) / width ** 2) ** 2)
    d_body = _smax(d_skin, d_back, 6.0)
    post = np.clip((vy - cy) / np.maximum(rho, 1.0), 0.0, 1.0) ** 2
    t_sc = pel.subcut_lat + (pel.subcut_post - pel.subcut_lat) * post
    body = soft_inside(d_body, 0.7)
    return {"body": body, "subcut": 1.0 - soft_inside(d_body + t_sc, 3.0)}
