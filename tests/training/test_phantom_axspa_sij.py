"""axspa-sij phantom: the sacroiliac anatomy, the two grids on one frame, the joint ROIs, and
where each class puts its lesions."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from neuroread.training.phantoms import axspa_sij as ax
from neuroread.training.phantoms.baseline import load_truth, read_mask, read_series
from neuroread.training.phantoms.writer import write_study

CASES = [("axspa", "axspa"), ("non_axspa", "normal"), ("non_axspa", "degenerative"), ("non_axspa", "oci")]


@pytest.fixture(scope="module")
def studies():
    """Two small studies of each subtype (about 10 s)."""
    out = {}
    for label, subtype in CASES:
        out[subtype] = [ax.generate(np.random.default_rng([seed, 2024]), f"t-{subtype}-{seed}", label, "small",
                                    subtype=subtype) for seed in (1, 2)]
    return out


def _all(studies):
    return [s for group in studies.values() for s in group]


def _in_box(grid, box: dict, lps, tol: float = 0.5) -> bool:
    """Whether LPS point ``lps`` falls inside an index box of ``grid`` (± ``tol`` voxels)."""
    idx = grid.lps_to_index(np.asarray(lps, float))
    return bool(np.all(idx >= np.array(box["index_min"]) - tol) and np.all(idx <= np.array(box["index_max"]) + tol))


def test_two_series_share_a_coronal_oblique_orientation_but_not_a_grid(studies):
    for study in _all(studies):
        t1, fs = study.series_by_key("t1"), study.series_by_key("fs")
        assert np.allclose(t1.grid.orientation, fs.grid.orientation)
        row, col = t1.grid.row_dir, t1.grid.col_dir
        assert row[0] > 0.99, "columns run to the patient's left"
        tilt = np.degrees(np.arctan2(col[1], -col[2]))  # rows run down the sacrum, tilted back
        assert 12.0 < tilt < 42.0, tilt
        assert abs(tilt - study.truth["sacral_tilt_deg"]) <= 5.0
        differs = [t1.grid.shape != fs.grid.shape, t1.grid.pixel_spacing != fs.grid.pixel_spacing,
                   not np.allclose(t1.grid.origin, fs.grid.origin)]
        assert sum(differs) >= 2, "the two series must sit on different grids"


def test_headers_tell_the_sequences_apart(studies):
    kinds = set()
    for study in _all(studies):
        t1, fs = study.series_by_key("t1"), study.series_by_key("fs")
        assert t1.attributes["ScanningSequence"] == ["SE"] and "InversionTime" not in t1.attributes
        if fs.kind == "STIR":
            assert "IR" in fs.attributes["ScanningSequence"]
            assert 100 <= fs.attributes["InversionTime"] <= 250
            assert study.truth["fat_suppression"] == "STIR"
        else:
            assert fs.kind == "T2FS" and "FS" in fs.attributes["ScanOptions"] and "InversionTime" not in fs.attributes
            assert study.truth["fat_suppression"] == "T2_SPAIR"
        assert "TriggerTime" not in fs.attributes
        assert t1.body_part == fs.body_part and t1.body_part in ("PELVIS", "SSPINE")
        kinds.add(fs.kind)
    assert kinds, "no fat-suppressed series"


def _ray(pel, lesions, y, z, side):
    """Dominant tissue every 0.25 mm along x from the midline outwards on one side."""
    tex = ax._Texture(np.random.default_rng(0))
    tex.fields[:] = 0.0  # no texture: the plain anatomy
    x = np.arange(0.0, 110.0, 0.25, dtype=np.float32) * side
    q = np.stack([x, np.full_like(x, y + pel.bend(z)), np.full_like(x, z)], -1)[None]
    fr = ax._anatomy(q, pel, lesions, tex)
    names = [k for k in fr if not k.startswith("_")]
    stack = np.stack([np.broadcast_to(fr[k], q.shape[:-1])[0] for k in names])
    return x, [names[i] for i in stack.argmax(axis=0)]


def _runs(labels):
    out = []
    for name in labels:
        if not out or out[-1][0] != name:
            out.append([name, 0])
        out[-1][1] += 1
    return out


def test_anatomy_sacrum_joint_ilium_in_order():
    """Along a line from the midline out through the cartilaginous joint: sacral marrow,
    subchondral bone, 1.5-4 mm of cartilage, subchondral bone, iliac marrow, then soft tissue."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        pel = ax.random_pelvis(rng, "F", 35, degenerative=False)
        z = 0.5 * (pel.z_hi + pel.z_lo)
        y = -pel.h_l(z) + 4.0
        for side in (1, -1):
            x, labels = _ray(pel, [], y, z, side)
            runs = _runs(labels)
            names = [r[0] for r in runs]
            i = names.index("cartilage")
            assert names[i - 1] == "cortex" and names[i + 1] == "cortex", names
            assert names[i - 2] in ("mfat", "mwater") and names[i + 2] in ("mfat", "mwater"), names
            width = runs[i][1] * 0.25
            assert 1.0 <= width <= 4.5, width
            # the ilium is a thick bone (posterior block) before the soft tissue starts
            bone = sum(r[1] for r in runs[i + 1:] if r[0] in ("mfat", "mwater", "cortex")) * 0.25
            assert bone >= 25.0, bone
            assert names[-1] in ("muscle", "fat"), names


def test_anatomy_landmarks():
    tex = ax._Texture(np.random.default_rng(0))
    tex.fields[:] = 0.0
    for seed in range(3):
        pel = ax.random_pelvis(np.random.default_rng(seed), "M", 50, degenerative=False)

        def dominant(x, y, z):
            fr = ax._anatomy(np.array([[[x, y + pel.bend(z), z]]], np.float32), pel, [], tex)
            return max((float(np.ravel(v)[0]), k) for k, v in fr.items() if not k.startswith("_"))[1]

        zs = pel.z_top - 15.0
        assert dominant(0.0, -pel.h_b(zs) + 8.0, zs) in ("mfat", "mwater"), "S1 body"
        assert dominant(0.0, pel.p(zs) - 2.5 - 5.0, zs) == "csf", "dural sac in the sacral canal"
        zf, xf, _ = pel.foramina[1]
        assert dominant(xf, -2.0, zf) in ("fat", "nerve"), "sacral foramen"
        assert dominant(0.0, -pel.h_b(pel.z_top) + 10.0, pel.z_top + pel.disc_h / 2) == "disc", "L5/S1 disc"
        assert dominant(0.0, -pel.h_b(0.0) - 60.0, 0.0) in ("fat", "bowel", "gas", "muscle"), "pelvis in front"


def test_lesions_are_the_same_on_both_grids(studies):
    for study in _all(studies):
        t1, fs = study.series_by_key("t1"), study.series_by_key("fs")
        for les in study.truth["lesions"]:
            a, b = les["series"]["t1"], les["series"]["fs"]
            assert a["voxels"] > 0 and b["voxels"] > 0, (study.case_id, les)
            tol = 1.5 * max(t1.grid.slice_spacing, fs.grid.slice_spacing)
            assert np.linalg.norm(np.subtract(a["centroid_lps"], b["centroid_lps"])) < tol, (study.case_id, les)
            for key in ("t1", "fs"):
                mask = study.masks[f"{les['type']}_{key}"][1]
                assert (mask == les["id"]).any()
        for key in ("t1", "fs"):
            ids = set()
            for kind in ax.KINDS:
                ids |= set(np.unique(study.masks[f"{kind}_{key}"][1])) - {0}
            assert ids == {les["id"] for les in study.truth["lesions"]}


def test_joint_rois_cover_both_joints_on_both_series(studies):
    for study in _all(studies):
        rois = study.truth["joint_roi"]
        assert rois["left"]["lps_centre"][0] > rois["right"]["lps_centre"][0], "patient left is +x"
        for side in ("left", "right"):
            roi = rois[side]
            for key in ("t1", "fs"):
                g = study.series_by_key(key).grid
                box = roi["series"][key]
                assert all(0 <= v < n for v, n in zip(box["index_min"], g.shape))
                assert all(lo <= hi < n for lo, hi, n in zip(box["index_min"], box["index_max"], g.shape))
                assert _in_box(g, box, roi["lps_centre"])
                # a box a few centimetres wide, not the whole image
                width = (box["index_max"][2] - box["index_min"][2]) * g.pixel_spacing[1]
                assert 20.0 <= width <= 80.0, width
        for les in study.truth["lesions"]:
            if les["type"] == "osteophyte":
                continue
            for key in ("t1", "fs"):
                g = study.series_by_key(key).grid
                box = rois[les["side"]]["series"][key]
                assert _in_box(g, box, les["series"][key]["centroid_lps"], tol=1.0), (study.case_id, les["id"])


def test_each_class_keeps_its_pattern(studies):
    for s in studies["axspa"]:
        kinds = [les["type"] for les in s.truth["lesions"]]
        assert "osteophyte" not in kinds
        assert "bme" in kinds or ("erosion" in kinds and "fat" in kinds)
        assert all(les["pattern"] == "axspa" for les in s.truth["lesions"])
        assert s.labels == {"axspa": 1, "non_axspa": 0} and 18 <= s.truth["age"] <= 48
    for s in studies["normal"]:
        assert len(s.truth["lesions"]) <= 1
        assert all(les["type"] == "bme" and les["pattern"] == "normal_variant" for les in s.truth["lesions"])
        assert s.labels == {"axspa": 0, "non_axspa": 1}
    for s in studies["degenerative"]:
        kinds = [les["type"] for les in s.truth["lesions"]]
        assert "osteophyte" in kinds and "erosion" not in kinds and "fat" not in kinds
        assert s.truth["age"] >= 45
        g = s.series_by_key("t1").grid
        for les in s.truth["lesions"]:
            if les["type"] == "osteophyte":  # ventral: in front of the joint's middle
                roi = s.truth["joint_roi"][les["side"]]
                ahead = np.subtract(les["series"]["t1"]["centroid_lps"], roi["lps_centre"]) @ g.slice_dir
                assert ahead < 0, (s.case_id, les["id"], ahead)
    for s in studies["oci"]:
        scl = [les for les in s.truth["lesions"] if les["type"] == "sclerosis"]
        assert scl and all(les["bone"] == "iliac" for les in scl)
        assert {les["type"] for les in s.truth["lesions"]} <= {"sclerosis", "bme"}
        assert 22 <= s.truth["age"] <= 45


def test_oedema_overlaps_between_classes_but_its_company_differs():
    """Mimics have oedema of overlapping size and contrast, yet fewer foci and, unlike axSpA,
    never with erosions or fat metaplasia; degenerative oedema sits at the anterior margin."""
    stats = {sub: {"strength": [], "size": [], "count": []} for sub in ("axspa", "normal", "degenerative", "oci")}
    for seed in range(150):
        for sub in stats:
            rng = np.random.default_rng([seed, 7])
            pel = ax.random_pelvis(rng, "F", 40, sub == "degenerative")
            lesions = ax.make_lesions(rng, pel, sub)
            bme = [les for les in lesions if les.kind == "bme"]
            stats[sub]["count"].append(len(bme))
            stats[sub]["strength"] += [les.strength for les in bme]
            stats[sub]["size"] += [float(np.prod(les.radii)) for les in bme]
            if sub != "axspa":
                assert not [les for les in lesions if les.kind in ("erosion", "fat")]
            if sub == "degenerative":
                for les in bme:
                    front = -pel.h_l(les.centre[2])
                    assert les.centre[1] - front < 0.5 * (pel.y_cart(les.centre[2]) - front) + 6.0
    mimic_strength = stats["degenerative"]["strength"] + stats["oci"]["strength"] + stats["normal"]["strength"]
    mimic_size = stats["degenerative"]["size"] + stats["oci"]["size"] + stats["normal"]["size"]
    assert min(stats["axspa"]["strength"]) < np.median(mimic_strength)
    assert np.percentile(stats["axspa"]["size"], 25) < np.percentile(mimic_size, 75)
    assert np.mean(stats["axspa"]["count"]) > 2 * max(np.mean(stats[s]["count"]) for s in ("normal", "degenerative", "oci"))


def test_written_study_reads_back_with_rois_and_baseline(tmp_path):
    study = ax.generate(np.random.default_rng(5), "t-write", "axspa", "small")
    write_study(study, tmp_path)
    folder = tmp_path / "t-write"
    truth = load_truth(folder)
    for key in ("t1", "fs"):
        img = read_series(folder, key)
        assert img.GetSize()[::-1] == tuple(truth["series"][key]["shape"])
        lps = truth["joint_roi"]["left"]["lps_centre"]
        idx = img.TransformPhysicalPointToContinuousIndex(lps)[::-1]
        box = truth["joint_roi"]["left"]["series"][key]
        assert all(lo - 0.5 <= v <= hi + 0.5 for v, lo, hi in zip(idx, box["index_min"], box["index_max"]))
        mask = read_mask(folder, f"bme_{key}")
        assert np.allclose(mask.GetOrigin(), img.GetOrigin(), atol=1e-2)
        assert sitk.GetArrayFromImage(mask).shape == sitk.GetArrayFromImage(img).shape
    value = ax.baseline(folder)
    assert 0.0 <= value <= 1.0


def test_refuses_unknown_subtype():
    with pytest.raises(ValueError, match="subtype 'oci' is not one of axspa"):
        ax.generate(np.random.default_rng(0), "x", "axspa", "small", subtype="oci")
