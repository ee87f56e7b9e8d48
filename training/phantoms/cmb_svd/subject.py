"""The cmb-svd subject: warp, grid, anatomy variation and the lesions (no pixels yet)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from ..acquisition import mr_attributes, tissue_signal
from ..anatomy import Volume, load_template
from ..geometry import Grid, SubjectWarp
from ..head import HeadParams, random_head
from ..identity import make_identity
from ..study import Identity
from .lesions import Microbleed, _modulation, _place_microbleeds, _siderosis
from .mimics import _mimics, _Raster
from .sites import _sites

CLASSES = ("arteriolosclerosis", "caa", "cadasil")
_AGES = {"arteriolosclerosis": (50, 88), "caa": (60, 92), "cadasil": (35, 70)}
_TEMPLATE_CENTRE = np.array([0.0, 18.0, 10.0])  # LPS; MNI (0, -18, 10), mid-brain


@dataclass
class Subject:
    """Everything about one study but its pixels (the tests inspect this directly).

    ``modulation`` multiplies the tissue signal (deep-nuclei iron, skull-base drop-out,
    white-matter hyperintensity; for ``small`` also the mimics); ``mimics`` is the mimics'
    darkening alone (sampled separately for ``full``, whose veins need a finer raster).
    """

    label: str
    size: str
    identity: Identity
    warp: SubjectWarp
    grid: Grid
    head: HeadParams
    signal: dict[str, float]
    wmh_patterns: dict[str, float]
    modulation: Volume
    mimics: Volume
    mimics_in_modulation: bool
    mimic_list: list[dict]
    siderosis: dict | None
    attributes: dict
    image_type: list[str]
    bloom: float
    noise: float
    microbleeds: list[Microbleed] = field(default_factory=list)

    def to_patient(self, q: np.ndarray) -> np.ndarray:
        """Patient (LPS) position of template points: the warp inverted by fixed-point steps."""
        q = np.atleast_2d(np.asarray(q, float))
        target = self.warp.to_patient(q)
        p = target.copy()
        for _ in range(8):
            p = p + target - self.warp.to_patient(self.warp(p.astype(np.float32)).astype(float))
        return p

    def grid_index(self, p: np.ndarray) -> np.ndarray:
        """(slice, row, column) float indices of patient points on the series grid."""
        return self.grid.lps_to_index(np.atleast_2d(p))

    def voxel_centres(self, idx: np.ndarray) -> np.ndarray:
        """Patient (LPS) centres of (slice, row, column) indices, shape (N, 3)."""
        return self.grid.index_to_lps(np.atleast_2d(np.asarray(idx, float)))

    def covers(self, q: np.ndarray, margin_mm: float) -> bool:
        """Whether template point ``q`` lies in the series with ``margin_mm`` to spare."""
        g = self.grid
        idx = self.grid_index(self.to_patient(q))[0]
        margin = np.array([(margin_mm + g.thickness / 2) / g.slice_spacing, margin_mm / g.pixel_spacing[0],
                           margin_mm / g.pixel_spacing[1]])
        return bool(np.all(idx >= margin) and np.all(idx <= np.array(g.shape) - 1 - margin))


def _grid(rng: np.random.Generator, size: str, warp: SubjectWarp) -> Grid:
    if size == "full":
        rows = int(rng.choice([256, 272, 288]))
        px = float(rng.uniform(0.8, 0.9))
        thickness = float(rng.choice([1.5, 1.6, 1.8, 2.0, 2.2, 2.5]))
        n = int(np.clip(round(rng.uniform(125, 150) / thickness), 60, 90))
        step = 16
    else:
        rows = int(rng.choice([96, 112, 128]))
        px = float(rng.uniform(210, 240) / rows)
        n = int(rng.integers(20, 33))
        thickness = float(np.round(rng.uniform(120, 150) / n, 1))
        step = 8
    cols = int(np.clip(round(rows * rng.uniform(0.78, 1.0) / step) * step, np.ceil(178 / px / step) * step, rows))
    residual = Rotation.from_euler("xyz", rng.normal(0, 2.5, 3), degrees=True).as_matrix()
    rotation = warp.rotation @ residual
    centre = warp.centre + rotation @ np.array([rng.normal(0, 3), rng.normal(0, 4), rng.uniform(-2, 8)])
    return Grid.centred(centre, (n, rows, cols), (px, px), thickness, thickness, rotation, base="axial")


def plan_subject(rng: np.random.Generator, label: str, size: str) -> Subject:
    """Draw one subject of ``label``: anatomy, acquisition, mimics and microbleeds (no pixels)."""
    if label not in CLASSES:
        raise ValueError(f"cmb-svd label must be one of {CLASSES}, got {label!r}")
    if size not in ("small", "full"):
        raise ValueError(f"size must be small or full, got {size!r}")
    t = load_template()
    sites = _sites()
    identity = make_identity(rng, "MR", _AGES[label])
    age = identity.age_years
    head = random_head(rng, age, atrophy=float(rng.uniform(0, 0.35 if label == "caa" else 0.2)))
    s0 = rng.uniform(0.88, 1.0) - (0.03 if identity.sex == "F" else 0.0)
    warp = SubjectWarp(
        rng,
        centre=np.array([rng.normal(0, 3), rng.normal(0, 6), rng.normal(0, 5)]),
        angles_deg=(rng.normal(0, 6), rng.normal(0, 3), rng.normal(0, 3)),
        scale=tuple(s0 * (1 + rng.normal(0, 0.025, 3))),
        warp_mm=float(rng.uniform(2.0, 3.5)),
        template_centre=_TEMPLATE_CENTRE,
    )
    grid = _grid(rng, size, warp)
    attrs, image_type = mr_attributes(rng, "SWI", identity.scanner, grid)
    attrs["PercentPhaseFieldOfView"] = round(100.0 * grid.shape[2] / grid.shape[1], 4)
    signal = tissue_signal(rng, "SWI")
    mult, wmh_weights = _modulation(rng, label, sites, age)
    small = size == "small"  # small: the mimics on the atlas grid, inside the modulation; full: a finer raster
    raster = _Raster(sites.affine, sites.iron.shape) if small else _Raster.head_box(0.75)
    mimic_list = _mimics(rng, t, sites, raster)
    modulation = Volume(mult * (1.0 - raster.array) if small else mult, sites.affine)
    # Blooming grows with field strength and echo time (susceptibility dephasing).
    b0, te = float(attrs["MagneticFieldStrength"]), float(attrs["EchoTime"])
    bloom = float(np.clip(1.25 + 0.35 * (b0 * te / 75.0) + rng.normal(0, 0.05), 1.3, 2.0))
    siderosis = _siderosis(rng, t, sites) if label == "caa" else None
    subject = Subject(label, size, identity, warp, grid, head, signal, wmh_weights, modulation, raster.volume(),
                      small, mimic_list, siderosis, attrs, image_type, bloom,
                      float(rng.uniform(0.025, 0.04) if small else rng.uniform(0.035, 0.055)))
    _place_microbleeds(rng, subject, sites, t)
    return subject


