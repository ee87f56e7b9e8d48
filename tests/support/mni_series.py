"""A real brain the project never made: the MNI152 2009 template itself as a sagittal 3D T1
DICOM series (MPRAGE headers), with the head pitched by a known angle.

The template (nilearn's package data, brain-extracted) is sampled on an axis-aligned sagittal
grid at 1.2 mm through a rigid turn about the left-right axis through the template's centre:
the patient's point ``p`` shows the template at ``q = R⁻¹ (p − c) + c``, so the true
template → patient transform is ``p = R (q − c) + c`` (:func:`true_transform`). Written by the
phantom writer (one study, one series, a truth.json saying so), so the headers are those of a
scanner's MPRAGE and the node classifies it as any T1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from neuroread.training.phantoms.acquisition import mr_attributes, mr_window, to_stored
from neuroread.training.phantoms.anatomy import load_template
from neuroread.training.phantoms.geometry import Grid
from neuroread.training.phantoms.identity import make_identity
from neuroread.training.phantoms.study import Series, Study
from neuroread.training.phantoms.writer import write_study

CENTRE = np.array([0.0, 17.0, 8.0])  # LPS mm: about the middle of the template's brain (MNI y -104..70 RAS)
SHAPE = (128, 192, 160)  # sagittal slices right to left, rows head to foot, columns front to back
PIXEL_MM = 1.2


def true_transform(pitch_deg: float) -> sitk.AffineTransform:
    """Template LPS → patient LPS for a head pitched by ``pitch_deg`` (nose down for positive)."""
    rot = Rotation.from_euler("x", pitch_deg, degrees=True).as_matrix()
    t = sitk.AffineTransform(3)
    t.SetCenter(CENTRE.tolist())
    t.SetMatrix(rot.ravel().tolist())
    return t


def write_mni_series(out: Path, pitch_deg: float = 12.0, case_id: str = "mni152-pitched") -> Path:
    """Write the study under ``out / case_id``; returns the study folder."""
    template = load_template()
    grid = Grid.centred(CENTRE, SHAPE, (PIXEL_MM, PIXEL_MM), PIXEL_MM, PIXEL_MM, np.eye(3), base="sagittal")
    inverse = Rotation.from_euler("x", pitch_deg, degrees=True).as_matrix().T
    image = np.zeros(SHAPE, np.float32)
    for k in range(SHAPE[0]):
        p = grid.slice_points(k).reshape(-1, 3).astype(np.float64)
        image[k] = template.t1.sample((p - CENTRE) @ inverse.T + CENTRE).reshape(SHAPE[1:])
    pixels = to_stored(image / max(float(image.max()), 1e-6))
    rng = np.random.default_rng(152)
    identity = make_identity(rng, "MR", (60, 80))
    attributes, image_type = mr_attributes(rng, "T1_MPRAGE", identity.scanner, grid)
    series = Series(key="t1", kind="T1", modality="MR", grid=grid, pixels=pixels, description="t1_mprage_sag_p2",
                    image_type=image_type, window=mr_window(pixels), attributes=attributes, body_part="HEAD",
                    protocol="t1_mprage_sag_p2")
    study = Study(task="ad-lrp", case_id=case_id, label="cn", labels={"ad": 0, "cn": 1}, identity=identity,
                  study_description="MRI brain", series=[series],
                  truth={"source": "MNI152 2009c symmetric template (nilearn package data), brain-extracted",
                         "pitch_deg": pitch_deg, "centre_lps": CENTRE.tolist()})
    write_study(study, out)
    return Path(out) / case_id
