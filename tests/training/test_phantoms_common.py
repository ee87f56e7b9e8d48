"""Tests every phantom task gets, parametrised over the registry."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from neuroread.training.phantoms.baseline import best_threshold_accuracy, load_truth, read_mask, read_series
from neuroread.training.phantoms.registry import generate_set, get_task, make_study, task_names
from neuroread.training.phantoms.writer import write_study

TASKS = task_names()


def _studies(set_dir: Path) -> list[Path]:
    return sorted(p.parent for p in set_dir.glob("*/truth.json"))


@pytest.mark.parametrize("task", TASKS)
def test_series_read_back_as_one_consistent_volume(phantom_sets, task):
    for study in _studies(phantom_sets[task]):
        truth = load_truth(study)
        uids = set()
        for key, info in truth["series"].items():
            files = sorted((study / info["folder"]).glob("*.dcm"))
            dss = [pydicom.dcmread(f) for f in files]
            assert len(dss) == info["shape"][0] == len(info["sop_instance_uids"])
            assert {d.SeriesInstanceUID for d in dss} == {info["series_instance_uid"]}
            assert {d.StudyInstanceUID for d in dss} == {truth["study_instance_uid"]}
            assert {d.FrameOfReferenceUID for d in dss} == {truth["frame_of_reference_uid"]}
            assert len({tuple(d.ImageOrientationPatient) for d in dss}) == 1
            iop = np.array(dss[0].ImageOrientationPatient, float)
            normal = np.cross(iop[:3], iop[3:])
            along = sorted(float(np.dot(d.ImagePositionPatient, normal)) for d in dss)
            steps = np.diff(along)
            assert np.allclose(steps, float(dss[0].SpacingBetweenSlices), atol=1e-3), (key, steps[:3])
            for d in dss:
                assert d.pixel_array.shape == tuple(info["shape"][1:])
            uids.add(info["series_instance_uid"])
            img = read_series(study, key)
            assert img.GetSize()[::-1] == tuple(info["shape"])
            assert np.allclose(img.GetSpacing()[2], float(dss[0].SpacingBetweenSlices), atol=1e-3)
            for name, m in truth["masks"].items():
                if m["series"] != key:
                    continue
                mask = read_mask(study, name)
                assert mask.GetSize() == img.GetSize(), name
                assert np.allclose(mask.GetOrigin(), img.GetOrigin(), atol=1e-2), name
                assert np.allclose(mask.GetDirection(), img.GetDirection(), atol=1e-4), name
                assert np.allclose(mask.GetSpacing(), img.GetSpacing(), atol=1e-3), name
        assert len(uids) == len(truth["series"])


def _lesion_contrast(img: np.ndarray, lesion: np.ndarray, others: np.ndarray, window: tuple[float, float]) -> float:
    """Mean inside the lesion minus median of a 2-voxel in-plane ring around it.

    Ring voxels outside the series' display window (bone on a brain-window CT) and voxels of
    other lesions are left out.
    """
    ring = ndimage.binary_dilation(lesion, structure=np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                                                               [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                               [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool),
                                   iterations=2) & ~lesion & ~others
    lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    vals = img[ring]
    vals = vals[(vals >= lo) & (vals <= hi)]
    if vals.size < 4:
        return float("nan")
    return float(img[lesion].mean() - np.median(vals))


@pytest.mark.parametrize("task", TASKS)
def test_truth_masks_line_up_with_lesions(phantom_sets, task):
    checked = passed = 0
    for study in _studies(phantom_sets[task]):
        truth = load_truth(study)
        for name, m in truth["masks"].items():
            if not m.get("contrast"):
                continue
            folder = study / truth["series"][m["series"]]["folder"]
            ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)
            window = (float(ds.WindowCenter), float(ds.WindowWidth))
            img = sitk.GetArrayFromImage(read_series(study, m["series"])).astype(np.float32)
            labels = sitk.GetArrayFromImage(read_mask(study, name))
            for lid in np.unique(labels[labels > 0]):
                lesion = labels == lid
                diff = _lesion_contrast(img, lesion, (labels > 0) & ~lesion, window)
                if np.isnan(diff):
                    continue
                checked += 1
                sign = 1 if m["contrast"] == "brighter" else -1
                passed += sign * diff > 0
    if checked == 0:
        pytest.skip(f"{task}: no mask with a declared contrast in this set (ad-lrp's truth is a shape change, checked in its own tests)")
    # Tiny partial-volume lesions may drown in noise; nearly all must stand out.
    assert passed / checked >= 0.9, f"{task}: {passed}/{checked} lesions differ from their surroundings as stated"


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_bytes_and_different_seeds_differ(tmp_path, task):
    spec = get_task(task)
    label = spec.classes[0]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_study(make_study(task, 5, 0, label, "small"), a)
    write_study(make_study(task, 5, 0, label, "small"), b)
    write_study(make_study(task, 6, 0, label, "small"), c)
    (case_a,) = list(a.iterdir())
    files_a = sorted(p.relative_to(case_a) for p in case_a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b / case_a.name) for p in (b / case_a.name).rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (case_a / rel).read_bytes() == (b / case_a.name / rel).read_bytes(), rel
    (case_c,) = list(c.iterdir())
    ta, tc = load_truth(case_a), load_truth(case_c)
    assert ta["study_instance_uid"] != tc["study_instance_uid"]
    key = next(iter(ta["series"]))
    va = sitk.GetArrayFromImage(read_series(case_a, key))
    vc = sitk.GetArrayFromImage(read_series(case_c, key))
    assert va.shape != vc.shape or not np.array_equal(va, vc)


@pytest.mark.parametrize("task", TASKS)
def test_variety_across_seeds(tmp_path, task):
    """Anatomy and headers vary between studies: positions, vendors, descriptions, people."""
    spec = get_task(task)
    headers, volumes = [], []
    for seed in range(6):
        study = make_study(task, seed, 0, spec.classes[seed % len(spec.classes)], "small")
        s = study.series[0]
        headers.append((study.identity.scanner.manufacturer, s.description, study.identity.patient_name,
                        tuple(np.round(s.grid.origin, 1))))
        volumes.append(s.pixels)
    assert len({h[3] for h in headers}) == 6, "slice positions should differ per subject"
    assert len({h[2] for h in headers}) >= 3
    assert len({h[0] for h in headers}) >= 2 or len({h[1] for h in headers}) >= 3


@pytest.mark.parametrize("task", TASKS)
def test_every_object_passes_dciodvfy(phantom_sets, dciodvfy, task):
    for study in _studies(phantom_sets[task])[:2]:
        truth = load_truth(study)
        for key, info in truth["series"].items():
            files = sorted((study / info["folder"]).glob("*.dcm"))
            for f in (files[0], files[len(files) // 2], files[-1]):
                res = subprocess.run([dciodvfy, str(f)], capture_output=True, text=True)
                errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
                assert not errors, f"{f}: {errors}"


@pytest.mark.parametrize("task", TASKS)
def test_manifest_lists_every_study_with_its_truth(phantom_sets, task):
    import csv

    rows = list(csv.DictReader(open(phantom_sets[task] / "manifest.csv")))
    assert len(rows) == 4
    for row in rows:
        truth = load_truth(phantom_sets[task] / row["study_dir"])
        assert row["label"] == truth["label"] and row["study_instance_uid"] == truth["study_instance_uid"]
        for k, v in truth["labels"].items():
            assert int(row[f"label_{k}"]) == v


@pytest.mark.parametrize("task", TASKS)
def test_balance_option_sets_the_class_mix(tmp_path, task):
    spec = get_task(task)
    only = spec.classes[-1]
    generate_set(task, 3, 2, tmp_path, balance=f"{only}=1", workers=1, progress=False)
    labels = [json.loads(p.read_text())["label"] for p in tmp_path.glob("*/truth.json")]
    assert labels == [only] * 3


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_simple_baseline_falls_clearly_short(tmp_path, task):
    """The task is not trivial: a naive detector with a hindsight threshold stays well below 1."""
    spec = get_task(task)
    generate_set(task, 20, 11, tmp_path, workers=2, progress=False)
    studies = _studies(tmp_path)
    feats = [spec.baseline(s) for s in studies]
    positive = [load_truth(s)["label"] == spec.baseline_positive for s in studies]
    acc = best_threshold_accuracy(feats, positive)
    print(f"{task}: baseline balanced accuracy {acc:.2f}")
    assert acc <= 0.85


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_full_size_reads_back(tmp_path, task):
    spec = get_task(task)
    write_study(make_study(task, 1, 0, spec.classes[0], "full"), tmp_path)
    (study,) = list(tmp_path.iterdir())
    truth = load_truth(study)
    for key, info in truth["series"].items():
        img = read_series(study, key)
        assert img.GetSize()[::-1] == tuple(info["shape"])
        assert max(info["shape"][1:]) >= 256, "full size means clinical matrices"
