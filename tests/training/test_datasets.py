"""Training datasets: phantom, manifest, RSNA and CQ500 readers on small real-DICOM fakes, the
phantoms' lesion masks, and the head-CT recipe's torch Dataset and slice stacks that sample them."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from torch.utils.data import DataLoader

from neuroread.models.ct_hemorrhage.preprocess import augmentation_sets, prepare, sample_indices
from neuroread.training.datasets import (
    CQ500_LABELS,
    RSNA_LABELS,
    UNTYPED_LESION,
    StudyRecord,
    read_cq500,
    read_manifest,
    read_phantoms,
    read_rsna,
)
from neuroread.training.phantoms.ct_hemorrhage import LABELS as PHANTOM_LABELS
from neuroread.training.recipes.ct_hemorrhage.data import SeriesDataset, collate, load_slices, stack

# The datasets' own names, written out here so the readers' mappings are checked, not reused.
RSNA_SUBTYPES = {"epidural": "edh", "intraparenchymal": "iph", "intraventricular": "ivh",
                 "subarachnoid": "sah", "subdural": "sdh", "any": "any"}
CQ500_FINDINGS = ["ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right",
                  "ChronicBleed", "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift"]
CQ500_HEADER = ["name", "Category"] + [f"R{r}:{f}" for r in (1, 2, 3) for f in CQ500_FINDINGS]


def _studies(phantom_sets) -> list[Path]:
    return sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))


def _truth(study: Path) -> dict:
    return json.loads((study / "truth.json").read_text())


def _per_slice(truth: dict, names) -> dict[str, list[int]]:
    """SOP Instance UID → that slice's labels (in ``names`` order) from the phantom's truth."""
    uids = truth["series"]["ct"]["sop_instance_uids"]
    return {uid: [truth["per_slice_labels"][n][k] for n in names] for k, uid in enumerate(uids)}


def _ct_files(study: Path) -> list[Path]:
    return sorted((study / "S01").glob("*.dcm"))


def _hex_id(*parts: object) -> str:
    return "ID_" + hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:9]


def test_label_sets():
    assert RSNA_LABELS == ("any", "iph", "ivh", "sdh", "edh", "sah")
    assert CQ500_LABELS == RSNA_LABELS + ("fracture", "mass_effect", "midline_shift") == PHANTOM_LABELS


# --- phantoms ---------------------------------------------------------------------------------

def test_phantom_reader_matches_truth(phantom_sets):
    records = read_phantoms(phantom_sets["ct-hemorrhage"])
    studies = _studies(phantom_sets)
    assert [r.study_id for r in records] == [s.name for s in studies]
    for record, study in zip(records, studies):
        truth = _truth(study)
        assert record.label_names == CQ500_LABELS
        assert record.labels.tolist() == [truth["labels"][n] for n in CQ500_LABELS]
        assert record.n_slices == 24 and record.files == tuple(_ct_files(study))
        volume, slice_labels = record.load()
        expected = _per_slice(truth, CQ500_LABELS)
        assert slice_labels.tolist() == [expected[uid] for uid in volume.sop_instance_uids]
    assert sum(r.labels[0] for r in records) == 2  # two hemorrhages in the set, with positive slices
    assert all(r.slice_labels[:, 0].sum() > 0 for r in records if r.labels[0])


def test_phantom_reader_label_subset_and_errors(phantom_sets, tmp_path):
    records = read_phantoms(phantom_sets["ct-hemorrhage"], labels=("sdh", "any"))
    truth = _truth(_studies(phantom_sets)[1])
    assert records[1].labels.tolist() == [truth["labels"]["sdh"], truth["labels"]["any"]]
    assert records[1].slice_labels.shape == (24, 2)
    with pytest.raises(ValueError, match="unknown label.*'tumour'"):
        read_phantoms(phantom_sets["ct-hemorrhage"], labels=("any", "tumour"))
    with pytest.raises(FileNotFoundError, match="no phantom studies"):
        read_phantoms(tmp_path)


def test_phantom_reader_lesion_masks_match_truth(phantom_sets):
    records = read_phantoms(phantom_sets["ct-hemorrhage"])
    for record, study in zip(records, _studies(phantom_sets)):
        truth = _truth(study)
        # the default mask is the first that is not the mimics': here the hemorrhage mask
        assert record.mask == study / truth["masks"]["hemorrhage"]["file"]
        assert record.mask_types == tuple((les["id"], les["type"]) for les in truth["lesions"])
        volume, slice_labels = record.load()
        ids = record.load_mask(volume)
        assert ids.shape == volume.array.shape
        assert sorted(np.unique(ids)) == [0] + [les["id"] for les in truth["lesions"]]
        for les in truth["lesions"]:  # the slices of each lesion, and its label on exactly those slices
            on = np.flatnonzero((ids == les["id"]).any(axis=(1, 2)))
            assert on.tolist() == les["slices"]
            assert np.flatnonzero(slice_labels[:, CQ500_LABELS.index(les["type"])]).tolist() == les["slices"]
    assert sum(len(r.mask_types) for r in records) == 2  # the two hemorrhages, one lesion each
    mimics = read_phantoms(phantom_sets["ct-hemorrhage"], mask="mimics")
    assert mimics[1].mask.name == "mimics.nii.gz"
    with pytest.raises(ValueError, match="no mask 'blood' on series 'ct'; it has hemorrhage, mimics"):
        read_phantoms(phantom_sets["ct-hemorrhage"], mask="blood")
    assert StudyRecord("s", (Path("a.dcm"),), 1, ("any",), np.array([0.0], np.float32)).load_mask(volume) is None


def test_lesion_mask_is_read_through_physical_space(phantom_sets, tmp_path):
    """A mask file stored head-to-feet (slices reversed, same physical place) gives the same map."""
    record = read_phantoms(phantom_sets["ct-hemorrhage"])[1]
    image = sitk.ReadImage(str(record.mask))
    flipped = sitk.Flip(image, [False, False, True])  # keeps every voxel where it is in space
    assert not np.array_equal(sitk.GetArrayFromImage(flipped), sitk.GetArrayFromImage(image))
    sitk.WriteImage(flipped, str(tmp_path / "flipped.nii.gz"))
    volume, _ = record.load()
    again = dataclasses.replace(record, mask=tmp_path / "flipped.nii.gz").load_mask(volume)
    np.testing.assert_array_equal(again, record.load_mask(volume))


def _with_second_lesion(record: StudyRecord, folder: Path) -> StudyRecord:
    """``record`` (the EDH phantom) with its mask plus a block of an SDH (id 2) on slices 5 and 6."""
    image = sitk.ReadImage(str(record.mask))
    ids = sitk.GetArrayFromImage(image)
    ids[5:7, 40:60, 50:70] = 2
    out = sitk.GetImageFromArray(ids)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(folder / "two-lesions.nii.gz"))
    return dataclasses.replace(record, mask=folder / "two-lesions.nii.gz", mask_types=((1, "edh"), (2, "sdh")))


def test_slice_stacks_give_lesion_pixels_per_label(phantom_sets, tmp_path):
    records = read_phantoms(phantom_sets["ct-hemorrhage"], labels=RSNA_LABELS)
    record = _with_second_lesion(records[1], tmp_path)
    volume, slice_labels = record.load()
    ids = record.load_mask(volume)
    assert np.flatnonzero((ids == 2).any(axis=(1, 2))).tolist() == [5, 6]

    (small,) = load_slices([record], 32, progress=False)  # 128 px -> 32: nearest, every 4th row and column
    assert small.images.shape == (24, 3, 32, 32) and small.slice_labels.tolist() == slice_labels.tolist()
    assert small.masks.shape == (24, 6, 32, 32) and small.masks.dtype == torch.bool
    channel = {name: small.masks[:, i].numpy() for i, name in enumerate(RSNA_LABELS)}
    np.testing.assert_array_equal(channel["edh"], (ids == 1)[:, ::4, ::4])
    np.testing.assert_array_equal(channel["sdh"], (ids == 2)[:, ::4, ::4])
    np.testing.assert_array_equal(channel["any"], channel["edh"] | channel["sdh"])  # any: the union
    assert channel["any"].any() and not any(channel[n].any() for n in ("iph", "ivh", "sah"))
    assert np.flatnonzero(channel["any"].any(axis=(1, 2))).tolist() == [5, 6, 16, 17, 18, 19, 20]

    full = stack(record, 128)  # at the volume's own size nothing is resampled
    np.testing.assert_array_equal(full.masks[:, RSNA_LABELS.index("any")].numpy(), ids > 0)
    # a lesion type the label list lacks still counts for 'any'
    subset = _with_second_lesion(read_phantoms(phantom_sets["ct-hemorrhage"], labels=("edh", "any"))[1], tmp_path)
    masks = stack(subset, 32).masks.numpy()
    np.testing.assert_array_equal(masks[:, 0], (ids == 1)[:, ::4, ::4])
    np.testing.assert_array_equal(masks[:, 1], (ids > 0)[:, ::4, ::4])

    assert stack(record, 32, masks=False).masks is None
    assert stack(dataclasses.replace(record, mask=None, mask_types=()), 32).masks is None  # no mask file
    normal = load_slices(records[:1], 32, progress=False)[0]  # a mask without lesions: all empty
    assert normal.masks is not None and not normal.masks.any()


# --- manifest ---------------------------------------------------------------------------------

def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_manifest_reader(phantom_sets, tmp_path):
    studies = _studies(phantom_sets)
    bleed, other = studies[1], studies[3]
    shutil.copytree(other, tmp_path / "studies" / "b")  # with its truth.json and masks: not DICOM, ignored
    truth = _truth(bleed)
    per_slice = list(_per_slice(truth, RSNA_LABELS).items())
    random.Random(0).shuffle(per_slice)
    _write_csv(tmp_path / "slices" / "a.csv", ["sop_instance_uid", *RSNA_LABELS], [[u, *v] for u, v in per_slice])
    manifest = _write_csv(tmp_path / "manifest.csv", ["study", *RSNA_LABELS, "slice_labels", "group", "notes"], [
        [str(bleed), 1, 0, 0, 0, 1, 0, "slices/a.csv", "patient-a", "absolute path"],
        ["studies/b", 1, 0, 1, 0, 0, 0, "", "", "relative path, no per-slice labels"],
    ])
    a, b = sorted(read_manifest(manifest, RSNA_LABELS), key=lambda r: r.study_id != str(bleed))
    assert a.study_id == str(bleed) and a.group == "patient-a" and a.n_slices == 24
    assert a.labels.tolist() == [1, 0, 0, 0, 1, 0]
    volume, slice_labels = a.load()
    expected = dict(per_slice)
    assert slice_labels.tolist() == [expected[u] for u in volume.sop_instance_uids]
    assert b.study_id == "studies/b" and b.group == "studies/b" and b.slice_labels is None
    assert b.labels.tolist() == [1, 0, 1, 0, 0, 0]
    assert sorted(p.name for p in b.files) == [f"IM{k:04d}.dcm" for k in range(1, 25)]


def test_manifest_errors(phantom_sets, tmp_path):
    bleed = _studies(phantom_sets)[1]
    bad = _write_csv(tmp_path / "m1.csv", ["study", "any"], [[str(bleed), 1]])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['iph'\]"):
        read_manifest(bad, ("any", "iph"))
    bad = _write_csv(tmp_path / "m2.csv", ["study", "any"], [[str(bleed), "yes"]])
    with pytest.raises(ValueError, match="line 2 column any: expected 0 or 1, got 'yes'"):
        read_manifest(bad, ("any",))
    uids = _truth(bleed)["series"]["ct"]["sop_instance_uids"]
    _write_csv(tmp_path / "short.csv", ["sop_instance_uid", "any"], [[u, 0] for u in uids[:-1]])
    bad = _write_csv(tmp_path / "m3.csv", ["study", "any", "slice_labels"], [[str(bleed), 1, "short.csv"]])
    with pytest.raises(ValueError, match=r"1 slice\(s\) without a row"):
        read_manifest(bad, ("any",))
    # two series in one folder: the manifest must name one
    two = tmp_path / "two"
    _copy_series(_ct_files(bleed), two / "a", "CT{:06d}.dcm")
    second = _copy_series(_ct_files(bleed), two / "b", "CT{:06d}.dcm", new_uids="copy")
    bad = _write_csv(tmp_path / "m4.csv", ["study", "any"], [["two", 1]])
    with pytest.raises(ValueError, match="holds 2 series"):
        read_manifest(bad, ("any",))
    good = _write_csv(tmp_path / "m5.csv", ["study", "any", "series_instance_uid"], [["two", 1, second]])
    (record,) = read_manifest(good, ("any",))
    assert record.files == tuple(sorted((two / "b").glob("*.dcm")))


def _half_resolution(reference: sitk.Image, lesions: dict[tuple[int, int, int], int], path: Path,
                     dtype=np.uint16) -> Path:
    """A label map written with SimpleITK at half ``reference``'s resolution over the same physical
    extent (its voxel (k, r, c) covers the reference's voxels 2k..2k+1, 2r..2r+1, 2c..2c+1):
    ``lesions`` maps (slice, row, column) to an id."""
    ids = np.zeros([n // 2 for n in reference.GetSize()[::-1]], dtype)
    for at, lesion in lesions.items():
        ids[at] = lesion
    image = sitk.GetImageFromArray(ids)
    spacing = np.asarray(reference.GetSpacing())
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    image.SetSpacing(tuple(2 * spacing))
    image.SetDirection(reference.GetDirection())
    image.SetOrigin(tuple(np.asarray(reference.GetOrigin()) + direction @ (spacing / 2)))  # between voxels 0 and 1
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def test_manifest_lesion_masks(phantom_sets, tmp_path):
    studies = _studies(phantom_sets)
    bleed, other, normal = studies[1], studies[3], studies[0]
    def grid(study: Path) -> sitk.Image:  # the phantom's own mask file is on its series' grid
        return sitk.ReadImage(str(study / _truth(study)["masks"]["hemorrhage"]["file"]))

    reference = grid(bleed)
    # instance ids 7 and 2, as NIfTI in a sub-folder
    _half_resolution(reference, {(3, 10, 20): 7, (8, 30, 31): 2}, tmp_path / "masks" / "a.nii.gz")
    # every lesion 1 (NRRD): two blocks touching at a corner are one lesion, a third apart another
    _half_resolution(grid(other), {(2, 5, 5): 1, (2, 5, 6): 1, (3, 6, 7): 1, (9, 40, 40): 1}, tmp_path / "b.nrrd",
                     np.uint8)
    manifest = _write_csv(tmp_path / "manifest.csv", ["study", "any", "mask"], [
        [str(bleed), 1, "masks/a.nii.gz"],
        [str(other), 1, " b.nrrd "],
        [str(normal), 0, ""],
    ])
    records = {r.study_id: r for r in read_manifest(manifest, ("any",))}
    a, b, c = records[str(bleed)], records[str(other)], records[str(normal)]

    assert a.mask == tmp_path / "masks" / "a.nii.gz" and not a.mask_components
    assert a.mask_types == ((2, UNTYPED_LESION), (7, UNTYPED_LESION))
    volume, _ = a.load()
    np.testing.assert_allclose(volume.origin, reference.GetOrigin(), atol=1e-4)  # the reference is the series' grid
    ids = a.load_mask(volume)
    assert ids.shape == volume.array.shape == (24, 128, 128)
    assert np.unique(ids).tolist() == [0, 2, 7]
    assert (ids[6:8, 20:22, 40:42] == 7).all() and (ids == 7).sum() == 8  # 2x2x2 series voxels per mask voxel
    assert (ids[16:18, 60:62, 62:64] == 2).all() and (ids == 2).sum() == 8
    # lesions of no stated type are blood of no subtype for the head-CT recipe: 'any' only
    np.testing.assert_array_equal(stack(a, 128).masks[:, 0].numpy(), ids > 0)

    assert b.mask == tmp_path / "b.nrrd" and b.mask_components
    assert b.mask_types == ((1, UNTYPED_LESION), (2, UNTYPED_LESION))
    ids = b.load_mask(b.load()[0])
    assert np.unique(ids).tolist() == [0, 1, 2]
    assert (ids[4:6, 10:12, 10:14] == 1).all() and (ids[6:8, 12:14, 14:16] == 1).all() and (ids == 1).sum() == 24
    assert (ids[18:20, 80:82, 80:82] == 2).all() and (ids == 2).sum() == 8

    assert c.mask is None and c.mask_types == () and c.load_mask(c.load()[0]) is None


@pytest.mark.parametrize("name, array, problem", [
    ("absent.nii.gz", None, "does not exist"),
    ("notes.nii.gz", "not an image", "is not an image SimpleITK can read"),
    ("float.nii.gz", np.ones((4, 5, 6), np.float32), "has pixel type 32-bit float"),
    ("flat.nrrd", np.ones((5, 6), np.uint8), r"is 2-D \(size \(6, 5\)\); a lesion mask must be 3-D"),
    ("signed.mha", np.full((4, 5, 6), -1, np.int16), r"has negative ids \[-1\]"),
])
def test_manifest_mask_errors(phantom_sets, tmp_path, name, array, problem):
    bleed = _studies(phantom_sets)[1]
    if isinstance(array, str):
        (tmp_path / name).write_text(array)
    elif array is not None:
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
    manifest = _write_csv(tmp_path / "manifest.csv", ["study", "any", "mask"], [[str(bleed), 1, ""],
                                                                                [str(bleed), 1, name]])
    where = rf"manifest manifest\.csv line 3: mask file {re.escape(str(tmp_path / name))} "
    with pytest.raises(ValueError, match=where + problem):
        read_manifest(manifest, ("any",))


# --- RSNA -------------------------------------------------------------------------------------

def _copy_series(files: list[Path], dest: Path, pattern: str, new_uids: str | None = None) -> str:
    """Copy a series (files in slice order) to ``dest`` named by ``pattern`` (slice number);
    with ``new_uids`` it becomes another series (new Series/SOP Instance UIDs). Returns its UID."""
    dest.mkdir(parents=True, exist_ok=True)
    series_uid = ""
    for k, src in enumerate(files):
        ds = pydicom.dcmread(src)
        if new_uids:
            ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[ds.SeriesInstanceUID, new_uids])
            ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[ds.SOPInstanceUID, new_uids])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dest / pattern.format(k), enforce_file_format=True)
        series_uid = str(ds.SeriesInstanceUID)
    return series_uid


def _write_rsna_image(src: Path, dest_dir: Path, sop: str, series: str, study: str, patient: str) -> None:
    """One RSNA-style file: the challenge's de-identified ``ID_<hex>`` UIDs, named ``<SOP>.dcm``."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID = sop, series, study, patient
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    for keyword in ("PatientName", "PatientBirthDate", "AccessionNumber", "FrameOfReferenceUID", "SliceThickness",
                    "SpacingBetweenSlices", "InstanceNumber"):
        delattr(ds, keyword)
    ds.save_as(dest_dir / f"{sop}.dcm", enforce_file_format=True)


@pytest.fixture
def rsna_fake(phantom_sets, tmp_path):
    """stage_2_train.csv + stage_2_train/ from 8 slices of 2 phantom studies, plus 4 unlabelled
    images of a third series; returns (csv, folder, {series: {sop: label row in RSNA_LABELS order}})."""
    studies = _studies(phantom_sets)
    folder = tmp_path / "stage_2_train"
    folder.mkdir()
    expected: dict[str, dict[str, list[int]]] = {}
    rows: list[list[str]] = []
    for s, study in enumerate([studies[1], studies[0], studies[2]]):
        truth = _truth(study)
        uids = truth["series"]["ct"]["sop_instance_uids"]
        positive = [k for k, v in enumerate(truth["per_slice_labels"]["any"]) if v]
        start = max(0, min(positive[0] - 3, 16)) if positive else 8
        series, labelled = _hex_id(study.name, "series"), s < 2
        by_sop = {}
        for k in range(start, start + (8 if labelled else 4)):
            sop = _hex_id(uids[k])
            _write_rsna_image(_ct_files(study)[k], folder, sop, series, _hex_id(study.name, "study"),
                              _hex_id(study.name, "patient"))
            by_sop[sop] = [truth["per_slice_labels"][key][k] for key in RSNA_LABELS]
            if labelled:
                rows.extend([f"{sop}_{name}", str(truth["per_slice_labels"][key][k])] for name, key in RSNA_SUBTYPES.items())
        if labelled:
            expected[series] = by_sop
    rows.extend([f"ID_0000dead0_{name}", "0"] for name in RSNA_SUBTYPES)  # an image not downloaded
    rows.append(list(rows[7]))  # the real file has exact duplicates
    random.Random(1).shuffle(rows)
    return _write_csv(tmp_path / "stage_2_train.csv", ["ID", "Label"], rows), folder, expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_rsna_reader(rsna_fake, phantom_sets):
    labels_csv, folder, expected = rsna_fake
    records = read_rsna(labels_csv, folder)
    assert sorted(r.study_id for r in records) == sorted(expected)
    for record in records:
        truth_rows = expected[record.study_id]
        assert record.label_names == RSNA_LABELS and record.n_slices == 8
        assert record.labels.tolist() == np.max(list(truth_rows.values()), axis=0).tolist()
        assert record.group.startswith("ID_") and record.group != record.study_id
        volume, slice_labels = record.load()
        # files ordered along the slice normal, as the node's reader orders the volume
        assert record.slice_uids == volume.sop_instance_uids
        assert [p.stem for p in record.files] == list(volume.sop_instance_uids)
        assert slice_labels.tolist() == [truth_rows[u] for u in volume.sop_instance_uids]
    bleed = next(r for r in records if r.labels[0])
    assert bleed.slice_labels[:, 0].sum() >= 1 and bleed.slice_labels[:, 0].sum() < 8


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_rsna_reader_errors(rsna_fake, tmp_path):
    labels_csv, folder, _ = rsna_fake
    with pytest.raises(ValueError, match="unknown label.*'fracture'"):
        read_rsna(labels_csv, folder, labels=("any", "fracture"))
    text = labels_csv.read_text().splitlines()
    sop_any = next(line for line in text if line.endswith("_any,0") and "dead" not in line)
    contradiction = tmp_path / "contradiction.csv"
    contradiction.write_text("\n".join([*text, sop_any[:-1] + "1"]) + "\n")
    with pytest.raises(ValueError, match=sop_any.split(",")[0] + " is 1 here and 0 on an earlier line"):
        read_rsna(contradiction, folder)
    bad = _write_csv(tmp_path / "bad.csv", ["ID", "Label"], [["ID_12cadc6af_chronic", "0"]])
    with pytest.raises(ValueError, match="'ID_12cadc6af_chronic' is not <image id>_<subtype>"):
        read_rsna(bad, folder)


# --- CQ500 ------------------------------------------------------------------------------------

def _reads_row(name: str, category: str, votes: dict[str, tuple[int, int, int]]) -> list[object]:
    return [name, category] + [votes.get(f, (0, 0, 0))[r] for r in range(3) for f in CQ500_FINDINGS]


@pytest.fixture
def cq500_fake(phantom_sets, tmp_path):
    studies = _studies(phantom_sets)
    root = tmp_path / "cq500"
    one = root / "CQ500CT1 CQ500CT1" / "Unknown Study"
    _copy_series(_ct_files(studies[1]), one / "CT PLAIN THIN", "CT{:06d}.dcm")
    _copy_series(_ct_files(studies[1]), one / "CT 5mm", "CT{:06d}.dcm", new_uids="5mm")
    _copy_series(_ct_files(studies[3]), root / "CQ500CT3 CQ500CT3" / "Unknown Study" / "CT Plain", "CT{:06d}.dcm")
    (root / "CQ500CT3 CQ500CT3" / "Unknown Study" / "notes.txt").write_text("not DICOM")
    reads = _write_csv(tmp_path / "reads.csv", CQ500_HEADER, [
        _reads_row("CQ500-CT-1", "B1", {"ICH": (1, 1, 0), "IPH": (0, 0, 1), "EDH": (1, 0, 1), "Fracture": (1, 1, 1),
                                        "CalvarialFracture": (0, 1, 0), "MassEffect": (1, 1, 1), "MidlineShift": (0, 1, 1)}),
        _reads_row("CQ500-CT-3", "B2", {"ICH": (1, 1, 1), "IVH": (1, 1, 0), "SAH": (1, 0, 0), "BleedLocation-Left": (1, 1, 1)}),
        _reads_row("CQ500-CT-99", "B2", {"ICH": (1, 1, 1)}),  # not downloaded
    ])
    return reads, root


def test_cq500_reader_majority_of_three(cq500_fake):
    reads, root = cq500_fake
    records = read_cq500(reads, root)
    assert [r.group for r in records] == ["CQ500-CT-1", "CQ500-CT-1", "CQ500-CT-3"]
    by_group = {}
    for r in records:
        by_group.setdefault(r.group, []).append(r)
        assert r.study_id.startswith(r.group + "/") and r.n_slices == 24 and r.slice_labels is None
    #                    any iph ivh sdh edh sah fracture mass_effect midline_shift
    one = [1, 0, 0, 0, 1, 0, 0, 1, 1]
    three = [1, 0, 1, 0, 0, 0, 0, 0, 0]
    assert [r.labels.tolist() for r in by_group["CQ500-CT-1"]] == [one, one]
    assert [r.labels.tolist() for r in by_group["CQ500-CT-3"]] == [three]
    assert len({r.study_id for r in by_group["CQ500-CT-1"]}) == 2  # two series of one study
    volume, slice_labels = by_group["CQ500-CT-3"][0].load()
    assert volume.array.shape == (24, 128, 128) and slice_labels is None
    rsna_view = read_cq500(reads, root, labels=RSNA_LABELS)
    assert rsna_view[2].labels.tolist() == three[:6]


def test_cq500_reader_errors(cq500_fake, tmp_path):
    reads, root = cq500_fake
    header = [c for c in CQ500_HEADER if c != "R2:MassEffect"]
    bad = _write_csv(tmp_path / "bad.csv", header, [])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['R2:MassEffect'\]"):
        read_cq500(bad, root)
    none = _write_csv(tmp_path / "none.csv", CQ500_HEADER, [_reads_row("CQ500-CT-99", "B1", {})])
    with pytest.raises(ValueError, match="no CT series"):
        read_cq500(none, root)


# --- torch Dataset ----------------------------------------------------------------------------

def test_series_dataset_items(phantom_sets):
    records = read_phantoms(phantom_sets["ct-hemorrhage"])
    base = SeriesDataset(records, m=8, size=32)
    assert len(base) == 4
    x, y, s = base[1]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.dtype == torch.float32 and y.tolist() == records[1].labels.tolist()
    assert s.shape == (8, 9) and s.dtype == torch.float32
    volume, slice_labels = records[1].load()
    expected_x, idx = prepare(volume.array, 8, 32)  # training input == the node's inference input
    torch.testing.assert_close(x, expected_x, rtol=0, atol=0)
    assert idx.tolist() == sample_indices(24, 8).tolist() == [1, 4, 7, 10, 13, 16, 19, 22]
    assert s.tolist() == slice_labels[idx].tolist()

    augmented = SeriesDataset(records, m=8, size=32, augment=True, seed=5)
    assert len(augmented) == 4 * 3  # runs of 3 slices: the base and two sets of unsampled slices
    sets = augmentation_sets(24, 8, np.random.default_rng([5, 1]))
    assert [i.tolist() for _, i in augmented.items[3:6]] == [idx.tolist()] + [a.tolist() for a in sets]
    x_aug, y_aug, s_aug = augmented[4]
    assert y_aug.tolist() == y.tolist() and not torch.equal(x_aug, x)
    assert s_aug.tolist() == slice_labels[sets[0]].tolist()
    again = SeriesDataset(records, m=8, size=32, augment=True, seed=5)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(augmented.items, again.items))

    xb, yb, sb = next(iter(DataLoader(augmented, batch_size=3, collate_fn=collate)))
    assert xb.shape == (3, 8, 3, 32, 32) and yb.shape == (3, 9) and sb.shape == (3, 8, 9)


def test_series_dataset_without_slice_labels_and_mixed(cq500_fake, phantom_sets):
    reads, root = cq500_fake
    cq = SeriesDataset(read_cq500(reads, root), m=28, size=16)  # 24 slices < 28: repeats
    x, y, s = cq[0]
    assert x.shape == (28, 3, 16, 16) and y.shape == (9,) and s is None
    xb, yb, sb = collate([cq[0], cq[2]])
    assert xb.shape == (2, 28, 3, 16, 16) and yb.shape == (2, 9) and sb is None
    ph = SeriesDataset(read_phantoms(phantom_sets["ct-hemorrhage"]), m=28, size=16)
    with pytest.raises(ValueError, match="mixes items with and without per-slice labels"):
        collate([cq[0], ph[0]])
    with pytest.raises(ValueError, match="different label lists"):
        SeriesDataset(read_phantoms(phantom_sets["ct-hemorrhage"], labels=RSNA_LABELS) + read_cq500(reads, root), 8, 16)


def test_record_validation():
    with pytest.raises(ValueError, match="labels must be 0/1"):
        StudyRecord("s", (Path("a.dcm"),), 1, ("any",), np.array([2.0], np.float32))
    with pytest.raises(ValueError, match=r"slice_labels shape \(2, 1\) != \(1, 1\)"):
        StudyRecord("s", (Path("a.dcm"),), 1, ("any",), np.array([1.0], np.float32),
                    slice_uids=("1.2",), slice_labels=np.zeros((2, 1), np.float32))
