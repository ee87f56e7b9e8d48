"""axspa-sij preprocessing on sacroiliac phantoms: the crop around the joints in the T1's
orientation, both series on it in [0, 1], a fat-suppressed series from another frame of
reference registered rigidly, and maps back onto each series' own grid."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from neuroread.models.axspa_sij.config import MSFAConfig
from neuroread.models.axspa_sij.preprocess import crop_grid, prepare, unit_scale
from neuroread.models.transforms.grid import VoxelGrid, resample_onto
from neuroread.models.volume import load_series

CONFIG = MSFAConfig.demo()


@pytest.fixture(scope="module")
def study(phantom_sets):
    """The first axSpA phantom of the session set with bone-marrow oedema on its STIR."""
    for case in sorted(p.parent for p in phantom_sets["axspa-sij"].glob("*/truth.json")):
        truth = json.loads((case / "truth.json").read_text())
        kinds = {lesion["type"] for lesion in truth["lesions"]}
        if truth["label"] == "axspa" and "bme" in kinds:
            series = {key: load_series(sorted(p for p in (case / s["folder"]).iterdir() if p.is_file()))
                      for key, s in truth["series"].items()}
            centre = np.mean([side["lps_centre"] for side in truth["joint_roi"].values()], axis=0)
            return case, truth, series["t1"], series["fs"], centre
    pytest.skip("no axSpA phantom with bone-marrow oedema in the session set")


def test_the_crop_is_centred_on_the_joints_in_the_t1_orientation(study):
    _, _, t1, _, centre = study
    grid = crop_grid(t1, centre, CONFIG)
    assert grid.shape == CONFIG.input_shape and grid.spacing == (1.75, 1.75, 6.0)
    middle = (np.array(CONFIG.input_shape, float) - 1) / 2
    assert np.allclose(grid.index_to_lps(middle), centre, atol=1e-6)
    assert np.allclose(grid.matrix, np.asarray(t1.direction, float).reshape(3, 3))


def test_both_series_reach_the_crop_in_unit_range_with_the_oedema_bright_on_the_stir(study):
    case, truth, t1, fs, centre = study
    prep = prepare(t1, fs, centre, CONFIG)
    assert prep.inputs.shape == (2, *CONFIG.input_shape) and prep.inputs.dtype == np.float32
    assert prep.inputs.min() >= 0 and prep.inputs.max() <= 1 and prep.fs_transform is None  # one frame
    import SimpleITK as sitk

    mask = sitk.ReadImage(str(case / truth["masks"]["bme_fs"]["file"]))
    oedema = resample_onto(mask, prep.grid, interpolator="nearest") > 0
    assert oedema.any()
    stir, t1w = prep.inputs[1], prep.inputs[0]
    inside = stir > 0
    assert stir[oedema].mean() > 1.5 * np.median(stir[inside & ~oedema])  # bright on STIR ...
    assert t1w[oedema].mean() < np.percentile(t1w[inside], 75)  # ... not on T1
    low, high = unit_scale(fs)
    assert 0 <= low < high


def test_a_stir_from_another_frame_of_reference_is_registered_rigidly(study):
    _, _, t1, fs, centre = study
    # a finer crop than the demo's 6 mm slices, where 1 mm of registration error costs little correlation
    fine = dataclasses.replace(CONFIG, input_shape=(16, 160, 112), voxel_mm=(4.5, 1.4, 1.4))
    same = prepare(t1, fs, centre, fine)
    shift = np.array([3.0, -4.0, 2.5])
    moved = dataclasses.replace(fs, origin=tuple(np.asarray(fs.origin) + shift),
                                attributes={**fs.attributes, "FrameOfReferenceUID": "2.25.1"})
    assert moved.frame_of_reference_uid != t1.frame_of_reference_uid
    other = prepare(t1, moved, centre, fine)
    assert other.fs_transform is not None
    found = np.asarray(other.fs_transform.TransformPoint(tuple(float(v) for v in centre))) - centre
    assert np.linalg.norm(found - shift) < 1.5, found  # the registration finds the table shift
    a, b = same.inputs[1].ravel(), other.inputs[1].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.9


def test_maps_on_the_crop_go_back_onto_each_series_grid(study):
    _, _, t1, fs, centre = study
    prep = prepare(t1, fs, centre, CONFIG)
    ones = np.ones(CONFIG.input_shape, np.float32)
    on_t1, on_fs = prep.to_series(ones, t1), prep.to_series(ones, fs, fs=True)
    assert on_t1.shape == t1.array.shape and on_fs.shape == fs.array.shape
    covered = np.argwhere(on_t1 > 0.5)
    assert len(covered)
    lps = t1.index_to_lps(covered.astype(float))
    inside = prep.grid.lps_to_index(lps)
    assert (inside > -1).all() and (inside < np.array(CONFIG.input_shape) + 1).all()  # only where the crop is
    k = tuple(np.round(VoxelGrid.of(t1).lps_to_index(centre)).astype(int))
    assert on_t1[k] == pytest.approx(1.0)  # the joints' centre is inside the crop on the T1 too
