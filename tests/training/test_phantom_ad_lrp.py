"""ad-lrp phantoms: atrophy is a change of shape, placed where Alzheimer's puts it."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neuroread.training.phantoms import ad_lrp
from neuroread.training.phantoms.anatomy import load_template
from neuroread.training.phantoms.geometry import SubjectWarp
from neuroread.training.phantoms.registry import make_study


def _regions(study) -> dict[str, dict]:
    return {r["name"]: r for r in study.truth["regions"]}


@pytest.fixture(scope="module")
def pair():
    """One AD study and one control (small), the same seed."""
    return make_study("ad-lrp", 3, 0, "ad", "small"), make_study("ad-lrp", 3, 1, "cn", "small")


def test_displacement_shrinks_and_enlarges_what_it_names_without_folding():
    field = ad_lrp.RegionalDisplacement({"Left_Hippocampus": 2.0, "Left_Inf_Lat_Vent": -2.0, "Right_Lateral_Ventricle": -2.5})
    change = field.volume_change()
    assert change["Left_Hippocampus"] < -0.2
    assert change["Left_Inf_Lat_Vent"] > 0.3
    assert change["Right_Lateral_Ventricle"] > 0.3
    assert abs(change["Right_Hippocampus"]) < 0.02, "the other side is left alone"
    assert field.min_jacobian() > 0.1
    # Far from every changed region the brain does not move.
    far = np.array([[0.0, -60.0, 60.0], [40.0, 80.0, 40.0]], np.float32)  # frontal pole, parietal
    assert np.abs(field(far)).max() < 1e-3
    # Extreme depths everywhere still give a diffeomorphism (scaling and squaring).
    extreme = ad_lrp.RegionalDisplacement({name: (4.0 if name in ad_lrp.region_names() and "Vent" not in name else -4.0)
                                           for name in ad_lrp.field_names()})
    assert extreme.min_jacobian() > 0.0
    with pytest.raises(ValueError, match="no displacement field"):
        ad_lrp.RegionalDisplacement({"Left_Putamen": 1.0})


def test_ad_pattern_is_medial_temporal_and_grows_with_severity_and_age():
    rng = np.random.default_rng(0)
    ad = [ad_lrp._subject(rng, "ad", int(rng.integers(60, 91))) for _ in range(300)]
    cn = [ad_lrp._subject(rng, "cn", int(rng.integers(60, 91))) for _ in range(300)]
    hip = lambda s: s["depth_ageing"]["Left_Hippocampus"] + s["depth_ad"].get("Left_Hippocampus", 0.0)  # noqa: E731
    assert np.median([hip(s) for s in ad]) > 2.0 * np.median([hip(s) for s in cn])
    # AD depth is largest in the medial temporal lobe, smaller in the lateral temporal cortex.
    for s in ad:
        d = s["depth_ad"]
        assert d["Left_Hippocampus"] > d["Left_MTG_middle_temporal_gyrus"] > 0
        assert d["Right_Inf_Lat_Vent"] < 0
    sev = np.array([s["severity"] for s in ad])
    ad_hip = np.array([s["depth_ad"]["Left_Hippocampus"] + s["depth_ad"]["Right_Hippocampus"] for s in ad])
    assert np.corrcoef(sev, ad_hip)[0, 1] > 0.5
    assert np.corrcoef(sev, [s["mmse"] for s in ad])[0, 1] < -0.8
    # Normal ageing: ventricles enlarge with age, with a wide personal spread; MMSE stays normal.
    ages = np.array([s["ageing"] for s in cn])
    vent = np.array([-s["depth_ageing"]["Left_Lateral_Ventricle"] for s in cn])
    assert 0.3 < np.corrcoef(ages, vent)[0, 1] < 0.9
    assert min(s["mmse"] for s in cn) >= 26
    assert all(not s["depth_ad"] for s in cn)


def test_truth_counts_match_the_regions_mask(pair):
    for study in pair:
        key, mask = study.masks["regions"]
        assert key == "t1" and mask.shape == study.series[0].grid.shape
        template = load_template()
        ids = set(template.ids(*ad_lrp.region_names()))
        present = set(np.unique(mask[mask > 0]).tolist())
        assert present <= ids and len(present) >= 16
        for r in study.truth["regions"]:
            assert int((mask == r["id"]).sum()) == r["voxels"], r["name"]
        reg = _regions(study)
        # LPS: the patient's left is +x; the hippocampi lie below the lateral ventricles.
        assert reg["Left_Hippocampus"]["centroid_lps"][0] > reg["Right_Hippocampus"]["centroid_lps"][0] + 30
        assert reg["Left_Hippocampus"]["centroid_lps"][2] < reg["Left_Lateral_Ventricle"]["centroid_lps"][2] - 10


def test_ad_shrinks_hippocampus_and_balloons_temporal_horns_on_the_series_grid(pair):
    ad, cn = pair
    reg = _regions(ad)
    for side in ("Left", "Right"):
        hip = reg[f"{side}_Hippocampus"]
        assert hip["measured_change"] < -0.08, hip
        # What was applied in template space is what the voxels show (within sampling error).
        assert abs(hip["measured_change"] - hip["applied_change"]) < 0.12, hip
        assert reg[f"{side}_Amygdala"]["measured_change"] < 0
        assert reg[f"{side}_Inf_Lat_Vent"]["applied_change"] > 0.15
    mt = sum(reg[n]["voxels"] for n in reg if reg[n]["group"] == "medial_temporal")
    mt0 = sum(reg[n]["voxels_without_ad"] for n in reg if reg[n]["group"] == "medial_temporal")
    assert mt < 0.9 * mt0
    # A control has no disease field: its counts without AD are its counts.
    for r in cn.truth["regions"]:
        assert r["voxels"] == r["voxels_without_ad"] and r["depth_ad_mm"] == 0.0 and r["applied_change"] == 0.0
    assert ad.truth["mmse"] < cn.truth["mmse"]
    assert ad.labels == {"ad": 1, "cn": 0} and cn.labels == {"ad": 0, "cn": 1}


def test_atrophy_is_shape_change_filled_by_csf_not_painted(monkeypatch, pair):
    """The same AD subject rendered without its disease field: only the temporal lobes differ,
    and there dark CSF takes the place of tissue."""
    ad, _ = pair
    monkeypatch.setattr(ad_lrp, "_AD_DEPTH", {k: 0.0 for k in ad_lrp._AD_DEPTH})
    plain = make_study("ad-lrp", 3, 0, "ad", "small")
    with_ad = ad.series[0].pixels.astype(np.float32)
    without = plain.series[0].pixels.astype(np.float32)
    assert with_ad.shape == without.shape
    template = load_template()
    mask = plain.masks["regions"][1]
    parts = ("Hippocampus", "Amygdala", "Inf_Lat_Vent")
    medial = np.isin(mask, template.ids(*[f"{side}_{part}" for side in ("Left", "Right") for part in parts]))
    near = ndimage.binary_dilation(medial, iterations=2)
    lobes = np.isin(mask, template.ids(*[n for n in ad_lrp.region_names() if n.startswith(("Left", "Right"))]))
    far = ~ndimage.binary_dilation(lobes, iterations=6)
    scale = float(np.percentile(without, 99))
    assert np.percentile(np.abs(with_ad - without)[far], 99) / scale < 0.02, "away from the disease nothing moves"
    csf_level = 0.35 * float(np.median(without[mask > 0]))
    dark_with, dark_without = (with_ad[near] < csf_level).sum(), (without[near] < csf_level).sum()
    assert dark_with > 1.25 * dark_without, (dark_with, dark_without)
    assert with_ad[near].mean() < without[near].mean(), "CSF, not white matter, fills the space"
    # The hippocampus left behind is still grey matter, not a painted darker patch.
    hip_ids = load_template().ids("Left_Hippocampus", "Right_Hippocampus")
    inner = ndimage.binary_erosion(np.isin(ad.masks["regions"][1], hip_ids))
    if inner.sum() >= 5:
        assert np.median(with_ad[inner]) > 2 * csf_level


def test_slab_is_sagittal_or_axial_and_covers_the_brain():
    template = load_template()
    env = template.envelope
    idx = np.argwhere(env.array < -2.0)[::11]
    brain = idx @ env.affine[:3, :3].T + env.affine[:3, 3]
    temporal = template.region_points(*[n for n in ad_lrp.region_names()])
    seen = set()
    for i in range(8):
        rng = np.random.default_rng(i)
        angles = np.array([rng.uniform(-15, 10), rng.uniform(-6, 6), rng.uniform(-6, 6)])
        warp = SubjectWarp(rng, centre=rng.normal(0, [3, 8, 10]), angles_deg=tuple(angles), warp_mm=0.0,
                           template_centre=ad_lrp._TEMPLATE_CENTRE, scale=tuple(rng.uniform(0.93, 1.07, 3)))
        for size in ("small", "full"):
            grid, orientation, _ = ad_lrp._grid(rng, size, warp, angles)
            seen.add(orientation)
            axis = {"sagittal": 0, "axial": 2}[orientation]
            assert abs(grid.slice_dir[axis]) > 0.95
            extent = np.array([grid.pixel_spacing[1] * (grid.shape[2] - 1), grid.pixel_spacing[0] * (grid.shape[1] - 1),
                               grid.slice_spacing * (grid.shape[0] - 1)])
            frame = np.stack([grid.row_dir, grid.col_dir, grid.slice_dir])
            for pts, slack in ((brain, 8.0), (temporal, 0.0)):
                c = (warp.to_patient(pts) - grid.origin) @ frame.T
                assert c.min() >= -slack and np.all(c.max(axis=0) <= extent + slack), (size, orientation)
            if size == "full":
                assert max(grid.shape[1:]) >= 256 and grid.slice_spacing <= 1.2
            else:
                assert max(grid.shape[1:]) <= 96 and 48 <= grid.shape[0] <= 64
    assert seen == {"sagittal", "axial"}


def test_brain_fraction_falls_with_atrophy(monkeypatch):
    """The baseline measures something real (global atrophy), it is just not specific."""
    original = ad_lrp.random_head
    fractions = {}
    for atrophy in (0.0, 0.8):
        monkeypatch.setattr(ad_lrp, "random_head", lambda rng, age, _a, a=atrophy: original(rng, age, a))
        fractions[atrophy] = ad_lrp.brain_fraction(make_study("ad-lrp", 8, 0, "cn", "small").series[0].pixels)
    assert fractions[0.8] < fractions[0.0] - 0.01
    assert 0.6 < fractions[0.0] < 1.0
