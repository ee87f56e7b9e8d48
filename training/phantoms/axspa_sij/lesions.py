"""Where each class puts its lesions on a subject's sacroiliac joints.

``axspa``: subchondral bone-marrow oedema on the iliac and/or sacral side, often "kissing"
and bilateral, erosions, subchondral sclerosis, fat metaplasia; some structural only.
``non_axspa``: normal (a minority with a small oedema focus, as in healthy people and
runners), degenerative change (anterior osteophytes, narrowing, small anterior sclerosis,
sometimes small oedema beside them) or osteitis condensans ilii (triangular iliac sclerosis
anteroinferiorly, mostly bilateral, in women, sometimes mild oedema). Oedema size and
contrast overlap between the classes; its place and the company it keeps tell them apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pelvis import Pelvis, _smax

KINDS = ("bme", "erosion", "sclerosis", "fat", "osteophyte")
SUBTYPES = {"axspa": ("axspa",), "non_axspa": ("normal", "degenerative", "oci")}
# The tissue a marrow lesion puts in place of the marrow it takes.
_LESION_TISSUE = {"bme": "edema", "sclerosis": "sclerosis", "fat": "mfat"}


@dataclass(frozen=True)
class Lesion:
    """One lesion in joint coordinates: (n, y, z) with n the lateral distance from the sacral
    articular surface (so n < 0 is sacral bone, n > joint width is iliac bone)."""

    id: int
    kind: str  # bme | erosion | sclerosis | fat | osteophyte
    side: int  # +1 patient left, -1 right
    bone: str  # iliac | sacral | bridging
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    strength: float = 1.0  # share of marrow replaced at the core (contrast)
    edge: float = 0.8  # border softness, mm
    rough: float = 0.15  # border irregularity (share of the smallest radius)
    shape: str = "ellipsoid"  # or "triangle" (osteitis condensans: base on the joint, apex lateral)
    pattern: str = ""  # axspa | degenerative | oci | normal_variant

    def distance(self, n, y, z, rough_field):
        c, r = self.centre, self.radii
        if self.shape == "triangle":
            depth, half = r[0], r[2]
            a = n - c[0]
            b = np.abs(z - c[2] - 0.25 * a)
            slope = depth / np.hypot(depth, half)
            d = _smax(-a, (b - half * (1.0 - a / depth)) * slope, 1.5)
            d = _smax(d, np.abs(y - c[1]) - r[1], 2.0)
        else:
            k = np.sqrt(((n - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
            d = (k - 1.0) * min(r)
        return d + self.rough * min(r) * rough_field


class _Joint:
    """Where lesions may sit on a subject's joints (sacral-frame ranges)."""

    def __init__(self, pel: Pelvis) -> None:
        self.pel = pel

    def point(self, rng: np.random.Generator, z_range=(0.0, 1.0), y_range=(0.0, 1.0)) -> tuple[float, float]:
        """(y, z) inside the cartilaginous joint; ranges are fractions (0 = bottom/front)."""
        p = self.pel
        lo, hi = p.z_lo + 6.0, p.z_hi - 6.0
        z = lo + (hi - lo) * rng.uniform(*z_range)
        front, back = -p.h_l(z) + 3.0, p.y_cart(z) - 3.0
        y = front + (back - front) * rng.uniform(*y_range)
        return float(y), float(z)

    def n_centre(self, bone: str, depth: float) -> float:
        p = self.pel
        return p.joint + p.sub_il + 0.6 * depth if bone == "iliac" else -(p.sub_sac + 0.6 * depth)


class _Placer:
    """Builds a study's lesion list; marrow lesions of one bone do not pile onto each other."""

    def __init__(self, rng: np.random.Generator, joint: _Joint) -> None:
        self.rng = rng
        self.joint = joint
        self.items: list[Lesion] = []

    def _free(self, side: int, bone: str, y: float, z: float, ry: float, rz: float) -> bool:
        for les in self.items:
            if les.side != side or les.bone != bone or les.kind not in _LESION_TISSUE or les.shape != "ellipsoid":
                continue
            dy = (y - les.centre[1]) / (ry + les.radii[1])
            dz = (z - les.centre[2]) / (rz + les.radii[2])
            if dy * dy + dz * dz < 1.0:
                return False
        return True

    def marrow(self, kind: str, side: int, bone: str, radii, strength: float, pattern: str, z_range=(0.0, 1.0),
               y_range=(0.0, 1.0), near: tuple[float, float] | None = None, edge: float | None = None,
               rough: float = 0.2) -> Lesion | None:
        """A subchondral marrow lesion (bme, sclerosis, fat) at a free place of the joint."""
        rng = self.rng
        for _ in range(12):
            if near is None:
                y, z = self.joint.point(rng, z_range, y_range)
            else:
                y, z = near[0] + rng.normal(0, 2.0), near[1] + rng.normal(0, 3.0)
            if self._free(side, bone, y, z, radii[1], radii[2]):
                break
        else:
            return None
        return self.add(kind, side, bone, (self.joint.n_centre(bone, radii[0]), y, z), radii, strength,
                        edge if edge is not None else rng.uniform(0.8, 1.8), rough, pattern)

    def bme(self, side: int, bone: str, pattern: str, big: float = 1.0, strength=(0.55, 1.0), **kw) -> Lesion | None:
        rng = self.rng
        radii = (rng.uniform(3.0, 7.0) * big, rng.uniform(3.5, 8.0) * big, rng.uniform(5.0, 11.0) * big)
        return self.marrow("bme", side, bone, radii, rng.uniform(*strength), pattern, rough=0.3,
                           edge=rng.uniform(0.8, 1.5), **kw)

    def add(self, kind: str, side: int, bone: str, centre, radii, strength: float, edge: float, rough: float,
            pattern: str, shape: str = "ellipsoid") -> Lesion:
        """The next lesion, as given."""
        les = Lesion(len(self.items) + 1, kind, side, bone, tuple(float(v) for v in centre),
                     tuple(float(r) for r in radii), float(strength), float(edge), rough, shape, pattern)
        self.items.append(les)
        return les

    def erosion(self, side: int, bone: str) -> Lesion:
        """An axSpA erosion of the joint surface, in the lower three quarters of the joint."""
        rng = self.rng
        y, z = self.joint.point(rng, z_range=(0.0, 0.75))
        r = (rng.uniform(1.8, 3.2), rng.uniform(2.0, 4.0), rng.uniform(2.0, 4.5))
        nc = self.joint.pel.joint + 0.3 if bone == "iliac" else -0.3
        return self.add("erosion", side, bone, (nc, y, z), r, 1.0, 0.5, 0.2, "axspa")


def make_lesions(rng: np.random.Generator, pel: Pelvis, subtype: str) -> list[Lesion]:
    """Lesions of one study: axspa, normal, degenerative or oci (osteitis condensans ilii).

    axSpA: subchondral oedema along the cartilaginous joint, iliac and/or sacral, often on
    both sides of the joint ("kissing") and bilateral; erosions (mostly iliac, lower joint);
    fat metaplasia; subchondral sclerosis; 20 % structural only (erosions + fat). Mimics keep
    their oedema smaller and where their own process is: at the anterior margin beside
    osteophytes (degenerative), beside the triangular iliac sclerosis (osteitis condensans),
    or a single small focus (normal).
    """
    place = _Placer(rng, _Joint(pel))
    sides = [1, -1] if rng.random() < 0.5 else [-1, 1]
    if subtype == "axspa":
        structural_only = rng.random() < 0.2
        used = sides if rng.random() < 0.55 else sides[:1]
        mild = rng.random() < 0.35  # early or partly treated: fewer, smaller, fainter foci
        if not structural_only:
            for side in used:
                for _ in range(int(rng.integers(1, 3 if mild else 4))):
                    bone = "iliac" if rng.random() < 0.6 else "sacral"
                    les = place.bme(side, bone, "axspa", big=rng.uniform(0.7, 0.9) if mild else rng.uniform(0.85, 1.15),
                                    strength=(0.5, 0.8) if mild else (0.55, 1.0))
                    if les is not None and rng.random() < 0.4:  # kissing lesion across the joint
                        other = "sacral" if bone == "iliac" else "iliac"
                        place.bme(side, other, "axspa", big=rng.uniform(0.7, 1.0), near=les.centre[1:],
                                  strength=(0.5, max(les.strength, 0.51)))
        n_ero = int(rng.integers(2, 5)) if structural_only else int(rng.choice([0, 0, 1, 2, 3]))
        for _ in range(n_ero):
            side = int(rng.choice(sides if structural_only else used))
            place.erosion(side, "iliac" if rng.random() < 0.8 else "sacral")
        n_fat = int(rng.integers(1, 3)) if structural_only else int(rng.choice([0, 0, 1, 1, 2]))
        for _ in range(n_fat):
            radii = (rng.uniform(2.0, 4.5), rng.uniform(3.0, 7.0), rng.uniform(5.0, 12.0))
            place.marrow("fat", int(rng.choice(sides)), "iliac" if rng.random() < 0.55 else "sacral", radii,
                         rng.uniform(0.75, 1.0), "axspa", edge=0.6)
        if rng.random() < 0.35:
            radii = (rng.uniform(3.0, 6.0), rng.uniform(3.0, 7.0), rng.uniform(5.0, 10.0))
            place.marrow("sclerosis", sides[0], "iliac", radii, rng.uniform(0.7, 1.0), "axspa",
                         z_range=(0.0, 0.7), edge=0.7)
        if len(place.items) < 2:  # one focus alone is not enough to call axSpA: add an erosion
            place.erosion(place.items[0].side if place.items else sides[0], "iliac")
    elif subtype == "degenerative":
        for side in (sides if rng.random() < 0.6 else sides[:1]):
            z_rng = (0.8, 1.0) if rng.random() < 0.5 else (0.0, 0.25)
            y, z = place.joint.point(rng, z_range=z_rng, y_range=(0.0, 0.0))
            r = (rng.uniform(4.0, 7.0), rng.uniform(4.0, 8.0), rng.uniform(6.0, 12.0))
            centre = (pel.joint / 2 + rng.uniform(-1.0, 2.0), y - 4.0 - 0.5 * r[1], z)
            place.add("osteophyte", side, "bridging", centre, r, 1.0, 0.6, 0.15, "degenerative")
            if rng.random() < 0.6:
                radii = (rng.uniform(2.0, 4.0), rng.uniform(2.5, 5.0), rng.uniform(3.5, 7.0))
                place.marrow("sclerosis", side, "iliac" if rng.random() < 0.7 else "sacral", radii,
                             rng.uniform(0.6, 0.9), "degenerative", near=(y + radii[1] * 0.6, z), edge=0.7)
            if rng.random() < 0.6:
                place.bme(side, "iliac" if rng.random() < 0.6 else "sacral", "degenerative",
                          big=rng.uniform(0.75, 1.05), strength=(0.45, 0.9), near=(y + 3.0, z))
    elif subtype == "oci":
        for side in (sides if rng.random() < 0.7 else sides[:1]):
            y, z = place.joint.point(rng, z_range=(0.05, 0.45), y_range=(0.0, 0.25))
            depth, half, thick = rng.uniform(10.0, 24.0), rng.uniform(8.0, 15.0), rng.uniform(6.0, 11.0)
            centre = (pel.joint + pel.sub_il, y + thick * 0.6, z)
            place.add("sclerosis", side, "iliac", centre, (depth, thick, half), rng.uniform(0.75, 1.0), 0.9, 0.12,
                      "oci", shape="triangle")
            if rng.random() < 0.55:
                place.bme(side, "iliac", "oci", big=rng.uniform(0.7, 1.0), strength=(0.45, 0.85),
                          near=(y + thick * 0.6, z + half + 5.0))
    elif subtype == "normal":
        if rng.random() < 0.3:  # a small oedema focus, as in healthy people, runners, after birth
            place.bme(sides[0], "iliac" if rng.random() < 0.7 else "sacral", "normal_variant",
                      big=rng.uniform(0.6, 0.9), strength=(0.45, 0.85))
    else:
        raise ValueError(f"unknown subtype {subtype!r}")
    return place.items
