"""Infer: phantom series into volumes (checked against SimpleITK), each failure, ModelRunner."""
from __future__ import annotations

import dataclasses
import math
import random
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.encaps import encapsulate
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from neuroread.models import Heatmap, ModelEntry, ModelRegistry
from neuroread.models.weights import MissingWeights
from neuroread.node.infer import ModelRunner, SeriesError, load_series
from neuroread.training.phantoms.baseline import load_truth, read_series
from support.tiny_model import ENTRY, SPEC, TinyModel

SERIES = [("ct-hemorrhage", "ct"), ("axspa-sij", "t1"), ("axspa-sij", "fs"), ("ad-lrp", "t1")]


def _study(phantom_sets, task: str) -> Path:
    return sorted(p.parent for p in phantom_sets[task].glob("*/truth.json"))[0]


def _files(study: Path, key: str) -> list[Path]:
    return sorted((study / load_truth(study)["series"][key]["folder"]).glob("*.dcm"))


def _copy(study: Path, key: str, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, dest / f.name)) for f in _files(study, key)]


@pytest.fixture
def ct(phantom_sets, tmp_path) -> list[Path]:
    """A writable copy of a CT phantom series (files in slice order IM0001...)."""
    return _copy(_study(phantom_sets, "ct-hemorrhage"), "ct", tmp_path / "ct")


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


@pytest.mark.parametrize("task,key", SERIES)
def test_volume_equals_simpleitk(phantom_sets, task, key):
    study = _study(phantom_sets, task)
    vol = load_series(_files(study, key))
    img = read_series(study, key)
    assert vol.array.shape == sitk.GetArrayFromImage(img).shape
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))
    np.testing.assert_allclose(vol.spacing, img.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction.ravel(), img.GetDirection(), atol=1e-5)
    truth = load_truth(study)["series"][key]
    assert vol.series_instance_uid == truth["series_instance_uid"]
    assert list(vol.sop_instance_uids) in (truth["sop_instance_uids"], truth["sop_instance_uids"][::-1])
    # slice k was made by the instance whose position is k steps along the normal
    normal = vol.direction[:, 2]
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in _files(study, key)}
    depth = [np.asarray(pydicom.dcmread(by_uid[u]).ImagePositionPatient, float) @ normal for u in vol.sop_instance_uids]
    assert np.all(np.diff(depth) > 0)


def test_rescale_gives_hounsfield_units(ct):
    original = load_series(ct)
    assert original.array.min() < -500  # air in HU

    def unsigned(ds):  # stored = (HU + 1024) * 2 as unsigned, undone by slope 0.5 and intercept -1024
        hu = ds.pixel_array.astype(np.int32)
        ds.PixelData = ((hu + 1024) * 2).astype(np.uint16).tobytes()
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024"
        for kw in ("SmallestImagePixelValue", "LargestImagePixelValue", "WindowCenter"):
            if kw in ds:
                delattr(ds, kw)
    for f in ct:
        _edit(f, unsigned)
    rescaled = load_series(ct)
    assert rescaled.array.dtype == np.int16
    np.testing.assert_array_equal(rescaled.array, original.array)


def test_shuffled_files_same_volume(phantom_sets):
    files = _files(_study(phantom_sets, "ad-lrp"), "t1")
    a = load_series(files)
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    b = load_series(shuffled)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.sop_instance_uids == b.sop_instance_uids and a.origin == b.origin


def _compress(files: list[Path], how: str) -> None:
    if how == "dcmcjpls":
        for f in files:
            subprocess.run(["dcmcjpls", str(f), str(f)], check=True, capture_output=True)
        return
    for f in files:
        ds = pydicom.dcmread(f)
        if how == "deflated":
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        else:
            ds.compress({"rle": RLELossless, "j2k": JPEG2000Lossless, "jpegls": JPEGLSLossless}[how],
                        generate_instance_uid=False)
        ds.save_as(f)


@pytest.mark.parametrize("how", ["rle", "j2k", "jpegls", "dcmcjpls", "deflated"])
def test_compressed_copies_load_identically(phantom_sets, tmp_path, how):
    if how == "dcmcjpls" and shutil.which("dcmcjpls") is None:
        pytest.skip("dcmtk's dcmcjpls is not installed")
    study = _study(phantom_sets, "ct-hemorrhage")
    files = _copy(study, "ct", tmp_path / how)
    _compress(files, how)
    syntax = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert syntax.is_compressed or syntax.is_deflated
    packed, plain = load_series(files), load_series(_files(study, "ct"))
    np.testing.assert_array_equal(packed.array, plain.array)
    assert packed.sop_instance_uids == plain.sop_instance_uids


def test_enhanced_multiframe_equals_simpleitk(phantom_sets, tmp_path):
    study = _study(phantom_sets, "ct-hemorrhage")
    legacy = [pydicom.dcmread(f) for f in _files(study, "ct")]
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(legacy, series_instance_uid=hd.UID(), series_number=90,
                                                  sop_instance_uid=hd.UID(), instance_number=1)
    path = tmp_path / "enhanced.dcm"
    mf.save_as(path)
    vol = load_series([path])
    img = read_series(study, "ct")
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))
    np.testing.assert_allclose(vol.spacing, img.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction.ravel(), img.GetDirection(), atol=1e-5)
    assert set(vol.sop_instance_uids) == {mf.SOPInstanceUID}
    assert sorted(vol.attributes["frame_numbers"]) == list(range(1, len(legacy) + 1))


def _step(ct: list[Path]) -> float:
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in ct[:2]]
    return abs(z[1] - z[0])


def test_missing_slice_names_the_gap(ct):
    gap = 2 * _step(ct)
    middle = ct[len(ct) // 2]
    below, above = (pydicom.dcmread(ct[len(ct) // 2 + d]).SOPInstanceUID for d in (-1, 1))
    middle.unlink()
    with pytest.raises(SeriesError, match=rf"missing slice\(s\): gap of {gap:.2f} mm.*about 1 slice\(s\) missing") as err:
        load_series([f for f in ct if f.exists()])
    assert below in str(err.value) and above in str(err.value)


def test_mixed_orientations(ct):
    odd = pydicom.dcmread(ct[5]).SOPInstanceUID
    _edit(ct[5], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.8660254, -0.5]))
    with pytest.raises(SeriesError, match="mixed orientations") as err:
        load_series(ct)
    assert odd in str(err.value)


def test_gantry_tilt_beyond_limit(ct):
    step = _step(ct)
    for k, f in enumerate(ct):  # shear: each slice moves 15 degrees off the normal
        def shear(ds, k=k):
            ipp = np.asarray(ds.ImagePositionPatient, float)
            ds.ImagePositionPatient = [f"{v:.5f}" for v in ipp + [0, k * step * math.tan(math.radians(15)), 0]]
        _edit(f, shear)
    with pytest.raises(SeriesError, match=r"gantry tilt or sheared slices.*15\.00 degrees.*at most 0\.5"):
        load_series(ct)
    vol = load_series(ct, max_tilt_deg=20)  # a model that accepts tilt gets the slices
    assert vol.array.shape[0] == len(ct)


def test_duplicate_position(ct):
    pos = pydicom.dcmread(ct[3]).ImagePositionPatient
    _edit(ct[4], lambda ds: setattr(ds, "ImagePositionPatient", pos))
    with pytest.raises(SeriesError, match="two slices at the same position"):
        load_series(ct)


def test_mixed_sizes(ct):
    def shrink(ds):
        ds.PixelData = ds.pixel_array[:64, :64].copy().tobytes()
        ds.Rows, ds.Columns = 64, 64
    _edit(ct[2], shrink)
    with pytest.raises(SeriesError, match=r"mixed sizes \(rows, columns\): \(128, 128\) in 23.*\(64, 64\) in 1"):
        load_series(ct)


def test_several_series(phantom_sets):
    study = _study(phantom_sets, "axspa-sij")
    truth = load_truth(study)["series"]
    with pytest.raises(SeriesError, match="several series") as err:
        load_series(_files(study, "t1") + _files(study, "fs"))
    assert truth["t1"]["series_instance_uid"] in str(err.value)
    assert truth["fs"]["series_instance_uid"] in str(err.value)


def test_no_pixel_data(ct):
    uid = pydicom.dcmread(ct[1]).SOPInstanceUID
    _edit(ct[1], lambda ds: ds.__delattr__("PixelData"))
    with pytest.raises(SeriesError, match=f"{uid}.*has no pixel data"):
        load_series(ct)


def test_single_slice_when_more_needed(ct):
    with pytest.raises(SeriesError, match="1 slice.*at least 3 needed"):
        load_series(ct[:1], min_slices=3)
    assert load_series(ct[:1]).array.shape == (1, 128, 128)


def test_transfer_syntax_without_decoder(ct):
    uid = pydicom.dcmread(ct[0]).SOPInstanceUID

    def mpeg(ds):
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: pydicom has no decoder
    _edit(ct[0], mpeg)
    with pytest.raises(SeriesError, match=f"cannot decode instance {uid}: transfer syntax MPEG2 Main Profile"
                                          r".*no decoder is installed"):
        load_series(ct)


def test_corrupt_compressed_payload(ct):
    def bogus(ds):
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"not a codestream" * 8])
    _edit(ct[7], bogus)
    with pytest.raises(SeriesError, match=r"JPEG 2000 Image Compression \(Lossless Only\).*not valid for it \(corrupt or truncated\)"):
        load_series(ct)


def test_not_dicom(ct):
    ct[0].write_bytes(b"hello")
    with pytest.raises(SeriesError, match="IM0001.dcm: not a readable DICOM file"):
        load_series(ct)


# ---- ModelRunner -------------------------------------------------------------------------


class _CountingModel(TinyModel):
    loads = 0

    def load(self, weights, device="cpu"):
        type(self).loads += 1
        super().load(weights, device)


def test_runner_loads_once_runs_and_checks(phantom_sets):
    _CountingModel.loads = 0
    before = torch.get_num_threads()
    runner = ModelRunner(ModelRegistry([ModelEntry(SPEC, _CountingModel, ENTRY.demo_weights)]), {"tiny-test": None},
                         "cpu", torch_threads=1)
    assert _CountingModel.loads == 0  # lazy
    vol = load_series(_files(_study(phantom_sets, "ct-hemorrhage"), "ct"), min_slices=3)
    first = runner.run("tiny-test", {"ct": vol})
    second = runner.run("tiny-test", {"ct": vol})
    assert torch.get_num_threads() == before  # the runner's thread count is scoped to its own calls
    assert _CountingModel.loads == 1 and runner.loads == 1
    assert first.findings == second.findings
    assert {ks.sop_instance_uid for ks in first.key_slices} <= set(vol.sop_instance_uids)
    assert runner.identity("tiny-test") == f"{first.card.weights_sha256}|finding=0.5"
    other = ModelRunner(ModelRegistry([ModelEntry(SPEC, _CountingModel, ENTRY.demo_weights)]))
    other.run("tiny-test", {"ct": vol})
    assert _CountingModel.loads == 2  # cached per runner (worker), not globally


class _BrokenModel(TinyModel):
    def predict(self, inputs):
        result = super().predict(inputs)
        uid = inputs["ct"].series_instance_uid
        return dataclasses.replace(result, heatmaps=(Heatmap(uid, "attention", np.zeros((1, 2, 2), np.float32),
                                                             explains="finding", value_range=(0.0, 1.0)),))


def test_threads_are_set_per_thread_not_for_the_process(phantom_sets):
    """torch's thread count belongs to the calling thread (OpenMP): a worker thread running with
    one thread leaves the main thread's count alone, while it works and after."""
    import threading

    from neuroread.models.runtime import torch_threads

    main = torch.get_num_threads()
    vol = load_series(_files(_study(phantom_sets, "ct-hemorrhage"), "ct"), min_slices=3)
    inside, checked, seen = threading.Event(), threading.Event(), {}

    def work():
        with torch_threads(1):
            seen["worker"] = torch.get_num_threads()
            inside.set()
            checked.wait(10)
        ModelRunner(ModelRegistry([ENTRY]), torch_threads=1).run("tiny-test", {"ct": vol})
        seen["worker after"] = torch.get_num_threads()

    t = threading.Thread(target=work)
    t.start()
    assert inside.wait(10)
    seen["main during"] = torch.get_num_threads()
    checked.set()
    t.join()
    assert seen == {"worker": 1, "main during": main, "worker after": main}
    assert torch.get_num_threads() == main


def test_runner_refuses_a_result_that_breaks_the_contract(phantom_sets):
    runner = ModelRunner(ModelRegistry([ModelEntry(SPEC, _BrokenModel, ENTRY.demo_weights)]))
    vol = load_series(_files(_study(phantom_sets, "ct-hemorrhage"), "ct"))
    with pytest.raises(ValueError, match="is not its series' grid"):
        runner.run("tiny-test", {"ct": vol})


def test_runner_input_and_name_errors(phantom_sets, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'tiny-tset'.*Did you mean tiny-test"):
        ModelRunner(ModelRegistry([ENTRY]), {"tiny-tset": None})
    with pytest.raises(ValueError, match="torch_threads must be an integer >= 1"):
        ModelRunner(ModelRegistry([ENTRY]), torch_threads=0)
    runner = ModelRunner(ModelRegistry([ENTRY]), {"tiny-test": tmp_path / "absent.pt"})
    vol = load_series(_files(_study(phantom_sets, "ct-hemorrhage"), "ct")[:2])
    with pytest.raises(ValueError, match="slot 'ct' needs at least 3 slices"):
        runner.run("tiny-test", {"ct": vol})
    with pytest.raises(ValueError, match=r"inputs \['flair'\] do not fill its slots \['ct'\]"):
        runner.run("tiny-test", {"flair": vol})
    full = load_series(_files(_study(phantom_sets, "ct-hemorrhage"), "ct"))
    with pytest.raises(MissingWeights, match="absent.pt does not exist"):
        runner.run("tiny-test", {"ct": full})
