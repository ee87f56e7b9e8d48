"""MSFANet's and the joint localiser's inputs from study records of two series (T1, fat-suppressed).

:func:`load_study` reads a record once into a :class:`SIJStudy`: the T1 on the localiser's
overview grid, the joints' truth there (where the record has it), and both series on a crop
around the joints with a margin, so that training can shift the crop (:func:`random_crops`)
without reading the series again. The crop goes through
:func:`neuroread.models.axspa_sij.preprocess.prepare`, the node's own steps.

**Where the joints are** (the paper's region of interest, drawn by a radiologist): a phantom's
``truth.json`` (``joint_roi``: each side's centre and box in LPS mm), or for a manifest study a
``joints.json`` beside its series (in the series' folder or up to three folders above it)::

    {"left": [x, y, z], "right": [x, y, z]}

with each joint's centre in LPS mm (DICOM patient coordinates: 3D Slicer shows RAS, negate x
and y). A record without either trains MSFANet on a crop centred by the localiser and does not
train the localiser.

:func:`read_records`: the dataset formats ``neuroread train axspa-sij`` reads (phantoms, manifest).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neuroread.models.axspa_sij.config import MSFAConfig
from neuroread.models.axspa_sij.localiser import SIDES, JointLocaliser, Joints, locate, overview
from neuroread.models.axspa_sij.model import CLASSES, LESION_KINDS, SPEC
from neuroread.models.axspa_sij.preprocess import prepare
from neuroread.models.result import SeriesVolume
from neuroread.models.transforms.grid import resample_onto
from neuroread.training.datasets import StudyRecord, read_manifest, read_phantoms

FORMATS = ("phantoms", "manifest")
JOINTS_FILE = "joints.json"
PHANTOM_SERIES = {"t1": "t1", "fs": "fs"}  # slot → the phantoms' series key


@dataclass(frozen=True)
class Box:
    """A joint's truth box: its 8 corners in LPS mm."""

    corners: np.ndarray


@dataclass(frozen=True)
class SIJStudy:
    """One record: ``overview [1, 16, 64, 64]`` float16 (the localiser's input), ``joints
    [2, 3]`` the left and right joints' overview indices (``None`` without truth), ``crop
    [2, D + 2m_d, H + 2m, W + 2m]`` float16 both series on the crop with its margin, and
    ``label`` the class index (0 axspa, 1 non_axspa), ``lesion`` (where the record has a lesion
    mask) ``[D + 2m_d, H + 2m, W + 2m]`` uint8: the kind of the lesion in the voxel, 1 + its
    index in :data:`~neuroread.models.axspa_sij.model.LESION_KINDS` (0: none, or a lesion whose
    kind the mask does not say)."""

    overview: torch.Tensor
    joints: torch.Tensor | None
    crop: torch.Tensor
    label: int
    lesion: torch.Tensor | None = None


def margins(config: MSFAConfig, shift_mm: float) -> tuple[int, int, int]:
    """Voxels of margin around the crop (slices, rows, columns) for shifts up to ``shift_mm``;
    rows and columns a multiple of 4 (the crop's sides stay multiples of 8)."""
    d_mm, h_mm, w_mm = config.voxel_mm
    rows = 4 * int(np.ceil(shift_mm / h_mm / 4.0))
    cols = 4 * int(np.ceil(shift_mm / w_mm / 4.0))
    return int(np.ceil(shift_mm / d_mm)) if shift_mm > 0 else 0, rows, cols


def truth_joints(record: StudyRecord) -> tuple[Joints, dict[str, Box]] | None:
    """The record's joints in LPS mm (and, from phantoms, their boxes), or ``None`` (module docstring)."""
    folder = record.files[0].parent
    for _ in range(4):
        truth, joints = folder / "truth.json", folder / JOINTS_FILE
        if truth.is_file():
            roi = json.loads(truth.read_text()).get("joint_roi")
            if roi:
                return (Joints(*(np.asarray(roi[s]["lps_centre"], float) for s in SIDES)),
                        {s: Box(np.asarray(roi[s]["lps_corners"], float)) for s in SIDES})
        if joints.is_file():
            data = json.loads(joints.read_text())
            try:
                points = [np.asarray(data[s], float) for s in SIDES]
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{joints}: expected {{\"left\": [x, y, z], \"right\": [x, y, z]}} in LPS mm "
                                 f"({err})") from err
            if any(p.shape != (3,) or not np.isfinite(p).all() for p in points):
                raise ValueError(f"{joints}: each joint must be three finite numbers (LPS mm), got {data}")
            return Joints(*points), {}
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def load_series_pair(record: StudyRecord) -> tuple[SeriesVolume, SeriesVolume]:
    t1, _ = record.load()
    others = record.load_others()
    if "fs" not in others:
        raise ValueError(f"record {record.study_id}: no fat-suppressed series (slot fs); axspa-sij trains on "
                         "studies of two series (read them with the recipe's read_records)")
    return t1, others["fs"]


def load_study(record: StudyRecord, config: MSFAConfig, shift_mm: float,
               localiser: JointLocaliser | None = None) -> SIJStudy:
    """Read ``record`` once (module docstring); the crop is centred on the truth joints, or on
    ``localiser``'s answer for a record without them (ValueError when there is neither)."""
    if record.label_names != CLASSES or record.labels.sum() != 1:
        raise ValueError(f"record {record.study_id}: labels {record.label_names} = {record.labels}; axspa-sij "
                         f"trains on exactly one of {CLASSES}")
    t1, fs = load_series_pair(record)
    image, grid = overview(t1)
    truth = truth_joints(record)
    if truth is not None:
        joints = truth[0]
        index = torch.from_numpy(grid.lps_to_index(np.stack([joints.left, joints.right])).astype(np.float32))
    elif localiser is not None:
        joints, index = locate(localiser, t1), None
    else:
        raise ValueError(f"record {record.study_id}: no joint positions (truth.json or {JOINTS_FILE}) and no "
                         "trained localiser to find them")
    md, mh, mw = margins(config, shift_mm)
    d, h, w = config.input_shape
    wide = replace(config, input_shape=(d + 2 * md, h + 2 * mh, w + 2 * mw))
    prep = prepare(t1, fs, joints.centre, wide)
    ids = record.load_mask(t1)
    lesion = None
    if ids is not None:
        code = {i: LESION_KINDS.index(kind) + 1 for i, kind in record.mask_types if kind in LESION_KINDS}
        lookup = np.zeros(int(ids.max()) + 1, np.uint8)
        for i, c in code.items():
            if i < len(lookup):
                lookup[i] = c
        kinds = lookup[ids.astype(np.int64)]
        lesion = torch.from_numpy(resample_onto((kinds, t1), prep.grid, interpolator="nearest").astype(np.uint8))
    return SIJStudy(torch.from_numpy(image).to(torch.float16), index, torch.from_numpy(prep.inputs).to(torch.float16),
                    int(np.argmax(record.labels)), lesion)


def load_all(records: Sequence[StudyRecord], config: MSFAConfig, shift_mm: float, *,
             localiser: JointLocaliser | None = None, progress: bool = True,
             desc: str = "load studies") -> list[SIJStudy]:
    return [load_study(r, config, shift_mm, localiser) for r in tqdm(
        records, desc=desc, unit="study", leave=False, disable=None if progress else True)]


def random_crops(crops: torch.Tensor, shape: tuple[int, int, int], generator: torch.Generator,
                 flip: bool = True, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One random ``shape`` window of each margin crop ``[B, 2, D', H', W']`` (the network's
    input), flipped left-right (columns) at random when ``flip``; and the same windows of
    ``masks [B, D', H', W']`` (or None)."""
    b = crops.shape[0]
    out = torch.empty((b, crops.shape[1], *shape), dtype=torch.float32)
    out_masks = None if masks is None else torch.empty((b, *shape), dtype=masks.dtype)
    for i in range(b):
        o = [int(torch.randint(0, n - s + 1, (1,), generator=generator)) for n, s in zip(crops.shape[2:], shape)]
        box = (slice(o[0], o[0] + shape[0]), slice(o[1], o[1] + shape[1]), slice(o[2], o[2] + shape[2]))
        window = crops[i][(slice(None), *box)].float()
        mirror = flip and bool(torch.rand(1, generator=generator) < 0.5)
        out[i] = window.flip(-1) if mirror else window
        if out_masks is not None:
            out_masks[i] = masks[i][box].flip(-1) if mirror else masks[i][box]
    return out, out_masks


def centre_crops(crops: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """The middle ``shape`` window of each margin crop: the crop :func:`prepare` gives at the centre."""
    starts = [(n - s) // 2 for n, s in zip(crops.shape[2:], shape)]
    return crops[:, :, starts[0]:starts[0] + shape[0], starts[1]:starts[1] + shape[1],
                 starts[2]:starts[2] + shape[2]].float()


def read_records(data: Path, fmt: str, *, progress: bool = True) -> tuple[list[StudyRecord], str]:
    """The records of ``data`` laid out as ``fmt`` (:data:`FORMATS`), one-hot over axspa and
    non_axspa, each with its T1 and its fat-suppressed series, and a line saying where they come
    from. Phantoms bring every lesion's mask on the T1; a manifest names each study's series in
    ``series_t1`` / ``series_fs`` columns (:func:`~neuroread.training.datasets.read_manifest`)."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r} for axspa-sij; formats: {', '.join(FORMATS)}")
    if fmt == "phantoms":
        return (read_phantoms(data, CLASSES, series=PHANTOM_SERIES, mask="lesions_t1"),
                f"neuroread phantoms under {data}")
    return read_manifest(data, CLASSES, spec=SPEC), f"manifest {data}"
