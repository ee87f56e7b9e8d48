"""One subject's sacroiliac anatomy as parameters, and the smooth shapes it is built from.

No pelvis template ships, so the anatomy is parametric, built from smooth signed distances
in a *sacral frame* (x left-right, y anterior→posterior perpendicular to the sacral plane,
z along the sacrum, upwards; mm): a curved sacrum (five segments with remnant discs, four
pairs of foramina, the canal, alae), the lumbar spine above it (L5 and L4 with their discs,
canal and arch), both ilia (a thick posterior block carrying the auricular surface and the
posterior superior iliac spine, and a wing standing in the scanner's frame that runs
anterolaterally to the crest and down towards the acetabulum), the auricular joint
(cartilage anteroinferiorly, sometimes a little fluid, interosseous ligament
posterosuperiorly, dark subchondral plates, undulating surfaces), marrow with a textured fat
fraction, psoas, iliacus, piriformis through the greater sciatic notch, gluteal muscles with
fat planes, multifidus, pelvic fat with bowel loops, rectum and internal iliac vessels,
subcutaneous fat with the gluteal cleft. Each subject has its own shape parameters
(:class:`Pelvis`, drawn by :func:`random_pelvis`) and a random smooth warp
(:class:`~neuroread.training.phantoms.geometry.SubjectWarp`, scale and tilt included);
:mod:`.tissues` turns them into tissue fractions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _smax(a, b, k: float):
    """Smooth maximum (intersection of signed distances), rounding corners within ``k`` mm;
    exact where the two distances differ by more than ``k``."""
    h = np.maximum(np.float32(k) - np.abs(a - b), 0.0) * np.float32(1.0 / k)
    return np.maximum(a, b) + h * h * np.float32(k * 0.25)


def _smin(a, b, k: float):
    """Smooth minimum (union of signed distances)."""
    h = np.maximum(np.float32(k) - np.abs(a - b), 0.0) * np.float32(1.0 / k)
    return np.minimum(a, b) - h * h * np.float32(k * 0.25)


def _step(t):
    """Smooth 0→1 step over t in [-1, 1]."""
    s = np.clip((t + 1.0) * 0.5, 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _capsule(p: tuple, a: np.ndarray, b: np.ndarray, r: float):
    """Signed distance to a capsule from ``a`` to ``b`` of radius ``r`` (p: three arrays)."""
    ab = b - a
    t = ((p[0] - a[0]) * ab[0] + (p[1] - a[1]) * ab[1] + (p[2] - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((p[0] - a[0] - t * ab[0]) ** 2 + (p[1] - a[1] - t * ab[1]) ** 2 + (p[2] - a[2] - t * ab[2]) ** 2) - r


def _profile(z, knots, vals):
    """Piecewise-linear profile: float32 for an array ``z``, a float for a scalar."""
    out = np.interp(z, knots, vals)
    return out.astype(np.float32) if np.ndim(z) else float(out)


@dataclass(frozen=True)
class Pelvis:
    """One subject's sacroiliac anatomy in the sacral frame (mm); see the module docstring."""

    tilt: float  # sacral tilt from the scanner's vertical, degrees
    z_top: float  # S1 upper endplate
    z_bot: float  # sacral tip
    z_hi: float  # upper end of the cartilaginous joint
    z_lo: float  # lower end
    b_hi: float  # half-width of the sacrum at the joint's upper end (articular surface, y=0)
    b_lo: float
    taper: float  # articular surface moves medially per mm posterior (axial obliquity)
    asym: float  # left/right width difference (fraction, + = left wider)
    ripple: tuple[float, float, float, float, float]  # amplitude, ky, kz, phase left, phase right
    joint: float  # joint space (cartilage) width
    sub_il: float  # subchondral plate, iliac side
    sub_sac: float
    cortex: float
    curve: float  # anterior concavity of the sacrum (1/mm)
    h_body: tuple[float, float]  # anterior extent of the body at top/bottom
    h_lat: tuple[float, float]  # anterior extent of the lateral masses
    p_post: tuple[float, float]  # posterior extent
    hw_body: tuple[float, float]  # half-width of the bodies
    foramina: tuple[tuple[float, float, float], ...]  # (z, lateral x, radius)
    segments: tuple[tuple[float, float], ...]  # remnant discs (z, thickness)
    cart_post: tuple[float, float]  # posterior limit of the cartilaginous part at z_lo, z_hi
    lig_gap: float
    il_thick: float
    il_top: float
    psis: float
    psis_z: float
    wing_angle: float  # degrees from the coronal plane
    wing_len: float
    wing_t: float
    wing_bulge: float
    crest: float
    body_drop: float
    disc_h: float
    psoas: tuple[float, float]
    iliacus: float
    gmed: float
    piri_r: float
    skin_post: float
    skin_hw: float
    subcut_post: float
    subcut_lat: float
    buttock: float
    rectum: tuple[float, float]  # x, radius
    loops: tuple[tuple[float, float, float, float, float, float], ...]  # x, y, z, rx, ry/rz, gas level
    ff: float  # marrow fat fraction
    muscle_fat: float
    vessels: tuple[tuple[tuple[float, float, float], ...], ...]  # internal iliac artery and vein paths (u, y, z)
    fluid: float  # share of the cartilaginous joint space holding fluid (physiological, any class)

    # Profiles along the sacrum (work on scalars and arrays).
    def _lin(self, z, pair):
        """Linear profile from ``pair[1]`` at the sacral tip to ``pair[0]`` at S1."""
        return _profile(z, (self.z_bot, self.z_top), (pair[1], pair[0]))

    def h_b(self, z):
        return self._lin(z, self.h_body)

    def h_l(self, z):
        return self._lin(z, self.h_lat)

    def p(self, z):
        return self._lin(z, self.p_post)

    def hw(self, z):
        return self._lin(z, self.hw_body)

    def b0(self, z):
        knots = (self.z_bot, self.z_lo - 24.0, self.z_lo, self.z_hi, self.z_top, self.z_top + 60.0)
        vals = (11.0, self.b_lo - 12.0, self.b_lo, self.b_hi, self.b_hi + 2.0, self.b_hi + 20.0)
        return _profile(z, knots, vals)

    def y_cart(self, z):
        return _profile(z, (self.z_lo, self.z_hi), self.cart_post)

    def bend(self, z):
        """Anterior displacement of the sacral centre line (the sacrum is concave in front)."""
        zn = np.minimum(z, 0.0)
        zp = np.maximum(z - 20.0, 0.0)
        return -self.curve * zn * zn - 0.5 * self.curve * zp * zp


def random_pelvis(rng: np.random.Generator, sex: str, age: int, degenerative: bool) -> Pelvis:
    """A subject's anatomy: sizes, shapes, tissue make-up (older marrow holds more fat)."""
    u = rng.uniform
    z_top = u(40, 48)
    z_bot = u(-68, -56)
    z_hi = z_top - u(3, 7)
    z_lo = u(-22, -10)
    b_hi = u(44, 52) * (1.04 if sex == "F" else 1.0)
    foramina = []
    levels = np.linspace(z_top - 24, z_bot + 14, 4) + rng.normal(0, 1.5, 4)
    for i, z in enumerate(levels):
        foramina.append((float(z), float(u(25, 30) - 2.2 * i), float(u(4.8, 6.0) - 0.7 * i)))
    bounds = np.linspace(z_top, z_bot, 6)[1:-1] + rng.normal(0, 1.5, 4)
    segments = tuple((float(z), float(u(2.0, 3.5) if i == 0 else u(0.8, 1.6))) for i, z in enumerate(bounds))
    fat_layer = u(10, 45) * (1.3 if sex == "F" else 1.0)
    ff = float(np.clip(0.42 + 0.006 * (age - 20) + rng.normal(0, 0.05), 0.35, 0.85))
    loops = []
    for _ in range(int(rng.integers(3, 8))):
        loops.append((float(u(-50, 50)), float(u(-80, -40)), float(u(-30, 90)), float(u(12, 24)), float(u(10, 18)),
                      float(u(-0.6, 0.3))))
    h_top, hl_top, hl_bot = u(23, 28), u(16, 20), u(5, 7)
    vessels = []
    for shift in ((0.0, 0.0), (-4.0, 6.0)):
        path = [(16.0, -h_top - 15.0, z_top + 40.0), (b_hi - 18.0, -hl_top - 16.0, z_top - 2.0),
                (b_hi - 12.0, -hl_top - 18.0, z_hi - 30.0), (b_hi - 20.0, -hl_bot - 20.0, z_lo - 25.0),
                (b_hi, -hl_bot - 40.0, z_lo - 45.0)]
        jit = rng.normal(0.0, 3.0, (len(path), 3))
        vessels.append(tuple((float(x + shift[0] + j[0]), float(y + shift[1] + j[1]), float(z + 2.0 * j[2]))
                             for (x, y, z), j in zip(path, jit)))
    return Pelvis(
        tilt=float(u(20, 35)), z_top=float(z_top), z_bot=float(z_bot), z_hi=float(z_hi), z_lo=float(z_lo),
        b_hi=float(b_hi), b_lo=float(b_hi - u(8, 14)), taper=float(u(0.25, 0.5)), asym=float(rng.normal(0, 0.025)),
        ripple=(float(u(0.6, 1.8)), float(u(0.08, 0.16)), float(u(0.08, 0.16)), float(u(0, 6.28)), float(u(0, 6.28))),
        joint=float(u(1.2, 2.0) if degenerative else u(2.0, 3.3)), sub_il=float(u(1.3, 2.0)), sub_sac=float(u(0.9, 1.4)),
        cortex=float(u(0.9, 1.4)), curve=float(u(0.0025, 0.0055)),
        h_body=(float(h_top), float(u(7, 9))), h_lat=(float(hl_top), float(hl_bot)),
        p_post=(float(u(19, 24)), float(u(6, 8))), hw_body=(float(u(20, 25)), float(u(10, 13))),
        foramina=tuple(foramina), segments=segments,
        cart_post=(float(u(-2, 4)), float(u(7, 12))), lig_gap=float(u(4, 8)),
        il_thick=float(u(32, 46)), il_top=float(u(10, 22)), psis=float(u(10, 17)), psis_z=float(u(0, 15)),
        wing_angle=float(u(25, 38)), wing_len=float(u(95, 125)), wing_t=float(u(6, 9)), wing_bulge=float(u(4, 10)),
        crest=float(u(18, 32)), body_drop=float(u(50, 80)), disc_h=float(u(5, 8) if degenerative else u(9, 12)),
        psoas=(float(u(17, 24)), float(u(13, 18))), iliacus=float(u(10, 18)), gmed=float(u(18, 30)),
        piri_r=float(u(10, 14)), skin_post=float(u(35, 55) + fat_layer), skin_hw=float(u(150, 185)),
        subcut_post=float(fat_layer), subcut_lat=float(fat_layer * u(0.8, 1.4)), buttock=float(u(15, 35)),
        rectum=(float(u(-10, 10)), float(u(11, 18))), loops=tuple(loops), ff=ff,
        muscle_fat=float(np.clip(0.03 + 0.003 * (age - 20) + rng.normal(0, 0.03), 0.0, 0.35)),
        vessels=tuple(vessels),
        fluid=float(u(0.2, 0.8) if rng.random() < 0.45 else 0.0),
    )
