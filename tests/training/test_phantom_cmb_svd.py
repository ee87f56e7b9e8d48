"""cmb-svd phantoms: where the microbleeds go, what the mimics are, and what tells the subtypes apart.

The common phantom tests (determinism, dciodvfy, read-back, mask contrast, balance, baseline)
run over the registry; these check the rules of this task's own table row.
"""
from __future__ import annotations

import numpy as np
import pytest

from neuroread.training.phantoms import cmb_svd
from neuroread.training.phantoms.anatomy import BRAINSTEM, CEREBELLUM, DEEP_GREY, load_template

SEEDS = range(6)


@pytest.fixture(scope="module")
def plans() -> dict[str, list[cmb_svd.Subject]]:
    """Subjects without pixels (cheap): six per subtype."""
    return {
        label: [cmb_svd.plan_subject(np.random.default_rng([7, i, k]), label, "small") for k in SEEDS]
        for i, label in enumerate(cmb_svd.CLASSES)
    }


@pytest.fixture(scope="module")
def studies():
    """One rendered small study per subtype."""
    return {label: cmb_svd.generate(np.random.default_rng([11, i]), f"t-{label}", label, "small")
            for i, label in enumerate(cmb_svd.CLASSES)}


def _atlas_name(q: np.ndarray) -> str:
    t = load_template()
    lid = int(t.labels.sample(np.asarray(q, np.float32)[None], order=0)[0])
    return {v: k for k, v in t.label_ids.items()}.get(lid, "background")


def test_caa_is_strictly_lobar_and_the_others_have_deep_or_infratentorial_bleeds(plans):
    for s in plans["caa"]:
        assert s.microbleeds, "every study has at least one microbleed"
        assert {b.location_class for b in s.microbleeds} == {"lobar"}
        assert all(cmb_svd.lobe_of(b.region) for b in s.microbleeds)
    for label in ("arteriolosclerosis", "cadasil"):
        for s in plans[label]:
            assert any(b.location_class in ("deep", "infratentorial") for b in s.microbleeds), label
    # The non-CAA subtypes do show lobar microbleeds too (mixed patterns), somewhere in the sample.
    others = plans["arteriolosclerosis"] + plans["cadasil"]
    assert any(b.location_class == "lobar" for s in others for b in s.microbleeds)


def test_microbleed_regions_agree_with_the_atlas(plans):
    sites = cmb_svd._sites()
    for subjects in plans.values():
        for s in subjects:
            for b in s.microbleeds:
                name = _atlas_name(b.centre)
                if b.location_class == "deep":
                    assert b.region in DEEP_GREY and name == b.region
                elif b.location_class == "infratentorial":
                    assert b.region.split(" ")[0] in BRAINSTEM + CEREBELLUM
                    assert name in BRAINSTEM + CEREBELLUM
                else:
                    nearest = int(sites.cortical_nearest.sample(b.centre.astype(np.float32)[None], order=0)[0])
                    assert sites.names[nearest] == b.region
                    assert name not in DEEP_GREY + BRAINSTEM + CEREBELLUM


def test_counts_overlap_across_subtypes_and_sizes_bloom(plans):
    counts = {label: [len(s.microbleeds) for s in subjects] for label, subjects in plans.items()}
    for label, c in counts.items():
        assert 1 <= min(c) and max(c) <= 25, (label, c)
    lo = max(min(c) for c in counts.values())
    hi = min(max(c) for c in counts.values())
    assert lo <= hi, f"microbleed counts must overlap between subtypes: {counts}"
    for subjects in plans.values():
        for s in subjects:
            assert 1.3 <= s.bloom <= 2.0
            for b in s.microbleeds:
                assert b.r_app > b.r_true and b.r_app == pytest.approx(b.r_true * s.bloom)
                assert 2.0 <= 2 * b.r_app <= 10.0


def test_white_matter_disease_pattern_tells_cadasil(plans):
    sites = cmb_svd._sites()
    temporal = sites.wmh_maps["anterior_temporal"] > 0.2
    capsule = sites.wmh_maps["external_capsule"] > 0.2
    iron_free = sites.iron < 0.02
    for label, subjects in plans.items():
        for s in subjects:
            gain = s.modulation.array
            at = float(np.mean(gain[temporal & iron_free] > 1.04))
            ec = float(np.mean(gain[capsule & iron_free] > 1.04))
            if label == "cadasil":
                assert at > 0.25 and ec > 0.1, (at, ec)
                assert {"anterior_temporal", "external_capsule"} <= set(s.wmh_patterns)
            else:
                assert at < 0.02, (label, at)


def test_superficial_siderosis_only_in_caa(plans):
    assert all(s.siderosis is None for label in ("arteriolosclerosis", "cadasil") for s in plans[label])
    for s in plans["caa"]:
        if s.siderosis is not None:
            assert cmb_svd.lobe_of(s.siderosis["region"])
            assert all(np.linalg.norm(b.centre - s.siderosis["centre"]) > s.siderosis["radius"] for b in s.microbleeds)


def test_every_study_has_vein_flow_void_mimics_and_some_calcifications(plans):
    kinds = []
    for subjects in plans.values():
        for s in subjects:
            types = {m["type"] for m in s.mimic_list}
            assert {"vein", "flow_void"} <= types
            locations = " ".join(m["location"] for m in s.mimic_list)
            assert "medullary" in locations and "basilar" in locations and "MCA" in locations
            kinds += [m["location"] for m in s.mimic_list if m["type"] == "calcification"]
    assert any("Pallidum" in k for k in kinds), "globus pallidus calcification must occur in the sample"
    pallidum = [k for k in kinds if "Pallidum" in k]
    left, right = sum("Left" in k for k in pallidum), sum("Right" in k for k in pallidum)
    assert left == right, "pallidal calcification is symmetric"


def test_mask_has_one_id_per_microbleed_and_no_mimic(studies):
    for label, st in studies.items():
        key, mask = st.masks[cmb_svd.MASK]
        assert key == "swi" and st.mask_contrast[cmb_svd.MASK] == "darker"
        lesions = st.truth["lesions"]
        assert [les["id"] for les in lesions] == list(range(1, len(lesions) + 1))
        assert set(np.unique(mask)) - {0} == {les["id"] for les in lesions}
        assert st.truth["subtype"] == label
        assert all(m["in_mask"] is False for m in st.truth["mimics"])
        assert sum(st.truth["microbleed_counts"][c] for c in ("lobar", "deep", "infratentorial")) == len(lesions)
    # No mimic darkening where the mask is (sampled at the template position of each mask voxel);
    # generate() plans its subject first, so re-planning with the same seed gives the same one.
    subject = cmb_svd.plan_subject(np.random.default_rng([11, 1]), "caa", "small")
    mask = studies["caa"].masks[cmb_svd.MASK][1]
    q = subject.warp(subject.voxel_centres(np.argwhere(mask > 0)).astype(np.float32))
    assert float(subject.mimics.sample(q).max()) < 0.05


def test_lesion_centroids_match_their_template_sites(studies):
    subject = cmb_svd.plan_subject(np.random.default_rng([11, 0]), "arteriolosclerosis", "small")
    lesions = studies["arteriolosclerosis"].truth["lesions"]
    assert len(lesions) == len(subject.microbleeds)
    for lesion, bleed in zip(lesions, subject.microbleeds):
        expected = subject.to_patient(bleed.centre)[0]
        slack = bleed.r_app + subject.grid.thickness / 2 + 1.0
        assert np.linalg.norm(np.array(lesion["centroid_lps"]) - expected) < slack
        assert lesion["region"] == bleed.region and lesion["location_class"] == bleed.location_class


def test_swi_headers_and_grid_sizes(studies):
    for st in studies.values():
        s = st.series[0]
        assert s.kind == "SWI" and s.modality == "MR"
        assert s.attributes["ScanningSequence"] == ["GR"] and s.attributes["MRAcquisitionType"] == "3D"
        nz, ny, nx = s.grid.shape
        assert 20 <= nz <= 32 and 96 <= ny <= 128 and 80 <= nx <= ny
    full = cmb_svd.plan_subject(np.random.default_rng(3), "cadasil", "full").grid
    nz, ny, nx = full.shape
    assert 60 <= nz <= 90 and 256 <= ny <= 384 and 0.8 <= full.pixel_spacing[0] <= 0.9
    assert 1.5 <= full.thickness <= 2.5


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="label must be one of"):
        cmb_svd.plan_subject(np.random.default_rng(0), "ms", "small")
