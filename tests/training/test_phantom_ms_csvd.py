"""ms-csvd phantoms: where each disease puts its lesions, and what a lesion load cannot tell.

The common tests (determinism, dciodvfy, read-back, mask contrast, balance, baseline) run
over the registry; these check the task's own rules: Dawson's fingers point away from the
ventricles, juxtacortical MS lesions touch the cortex while confluent cSVD lesions spare the
U-fibres, caps sit symmetrically on the horns, lacunes are small cavities in the deep grey
matter, infratentorial lesions are below the tentorium in the scanner, and the classes
overlap in lesion count and volume.
"""
from __future__ import annotations

import numpy as np
import pytest

from neuroread.training.phantoms import ms_csvd
from neuroread.training.phantoms.baseline import best_threshold_accuracy
from neuroread.training.phantoms.geometry import SubjectWarp
from neuroread.training.phantoms.registry import make_study


@pytest.fixture(scope="module")
def sites():
    return ms_csvd._sites()


@pytest.fixture(scope="module")
def studies():
    """Small studies (seed 11): an MS one with infratentorial and periventricular lesions, a
    second MS one, and two cSVD ones with lacunes."""
    return {label: [make_study("ms-csvd", 11, i, label, "small") for i in range(2)] for label in ms_csvd.CLASSES}


def _occupied(s, les, level=0.5):
    """Lattice points (LPS mm) where a lesion holds at least ``level``, with their weights."""
    occ = les.bright if les.cavity is None else les.cavity
    idx = np.argwhere(occ >= level)
    return les.lo + idx.astype(float), occ[occ >= level]


def _values(s, array, points):
    """A lattice map at lattice points (LPS mm)."""
    inv = np.linalg.inv(s.template.t1.affine)
    idx = np.rint(np.asarray(points) @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    return array[idx[:, 0], idx[:, 1], idx[:, 2]]


def _draw(label: str, seed: int, sites):
    rng = np.random.default_rng([seed, 5])
    age = 40 if label == "ms" else 70
    return ms_csvd._draw_disease(rng, sites, label, age)


def test_dawson_fingers_point_away_from_the_ventricles(sites):
    checked = 0
    for seed in range(6):
        for les in _draw("ms", seed, sites).lesions:
            if les.type != "periventricular_ovoid":
                continue
            pts, w = _occupied(sites, les)
            centroid = np.average(pts, axis=0, weights=w)
            cov = np.cov((pts - centroid).T, aweights=w)
            evals, evecs = np.linalg.eigh(cov)
            long_axis = evecs[:, -1]
            assert evals[-1] > 1.8 * evals[-2], "a periventricular MS lesion is ovoid"
            # The radial direction: from the nearest ventricle wall point out to the centroid.
            d = _values(sites, sites.dist_lv, pts)
            wall = pts[np.argmin(d)]
            radial = (centroid - wall) / np.linalg.norm(centroid - wall)
            assert abs(long_axis @ radial) > 0.7, f"long axis {long_axis} is not radial {radial}"
            assert d.min() <= 1.6, "it touches the ventricle"
            checked += 1
    assert checked >= 10


def test_juxtacortical_ms_touches_cortex_and_confluent_csvd_spares_u_fibres(sites):
    juxta, confluent = [], []
    for seed in range(8):
        for les in _draw("ms", seed, sites).lesions:
            if les.type == "juxtacortical":
                pts, _ = _occupied(sites, les)
                juxta.append(_values(sites, sites.dist_ctx, pts).min())
        for les in _draw("csvd", 100 + seed, sites).lesions:
            if les.type == "deep_wmh_confluent":
                pts, _ = _occupied(sites, les, 0.3)
                if len(pts):
                    confluent.append(_values(sites, sites.dist_ctx, pts).min())
    assert len(juxta) >= 5 and len(confluent) >= 5
    assert np.median(juxta) <= 1.5
    assert min(confluent) >= 2.0, "confluent WMH keep off the subcortical U-fibres"


def test_csvd_caps_are_symmetric_at_the_horn_tips(sites):
    seen = 0
    for seed in range(5):
        caps = {les.extra["site"]: les for les in _draw("csvd", seed, sites).lesions if les.type == "periventricular_cap"}
        assert {"frontal_left", "frontal_right"} <= set(caps)
        centroids = {}
        for key, les in caps.items():
            pts, w = _occupied(sites, les)
            centroids[key] = np.average(pts, axis=0, weights=w)
            assert np.linalg.norm(centroids[key] - sites.horn_tips[key]) < 10.0
            assert _values(sites, sites.dist_lv, pts).min() <= 1.6, "a cap hugs its horn"
        left, right = centroids["frontal_left"], centroids["frontal_right"]
        assert left[0] > 5 and right[0] < -5
        assert np.linalg.norm(left * [-1, 1, 1] - right) < 6.0, "caps mirror each other"
        vl, vr = caps["frontal_left"].bright.sum(), caps["frontal_right"].bright.sum()
        assert 0.4 < vl / vr < 2.5
        seen += 1
    assert seen == 5


def test_lacunes_are_small_cavities_in_deep_grey_or_white_matter(sites):
    t = sites.template
    allowed = set(t.ids(*ms_csvd.anatomy.DEEP_GREY, *ms_csvd.anatomy.CEREBRAL_WM))
    found = 0
    for seed in range(10):
        for les in _draw("csvd", 200 + seed, sites).lesions:
            if les.type != "lacune":
                continue
            pts, _ = _occupied(sites, les)
            extent = pts.max(axis=0) - pts.min(axis=0) + 1
            assert 2.0 <= extent.max() <= 16.0, f"lacune of {extent} mm"
            label = int(t.labels.sample(np.asarray(les.centre, np.float32)[None], order=0)[0])
            assert label in allowed, f"lacune in region {label}"
            assert les.bright.max() > 0.35, "with a gliotic rim"
            found += 1
    assert found >= 5
    for seed in range(10):
        assert not any(les.type == "lacune" for les in _draw("ms", seed, sites).lesions)


def test_ms_spreads_in_space_and_csvd_grades_are_graded(sites):
    typical = {"periventricular_ovoid", "juxtacortical", "infratentorial", "callosal"}
    for seed in range(10):
        kinds = {les.type for les in _draw("ms", seed, sites).lesions}
        assert len(kinds & typical) >= 2, "dissemination in space"
        assert kinds <= set(ms_csvd.MS_TYPES)
    volumes = {1: [], 2: [], 3: []}
    for seed in range(18):
        d = _draw("csvd", 300 + seed, sites)
        assert {les.type for les in d.lesions} <= set(ms_csvd.CSVD_TYPES)
        deep = sum(ms_csvd._volume(les, sites) for les in d.lesions if les.type.startswith("deep_wmh"))
        volumes[d.grade].append(deep)
        if d.grade == 1:
            assert not any(les.type == "deep_wmh_confluent" for les in d.lesions), "Fazekas 1 is punctate"
    assert np.median(volumes[1]) < np.median(volumes[2]) < np.median(volumes[3])


def test_lesion_load_overlaps_between_classes(sites):
    """Count and volume alone cannot separate the classes, as in the clinic."""
    volume, count, positive = [], [], []
    for seed in range(16):
        for label in ms_csvd.CLASSES:
            d = _draw(label, 400 + seed, sites)
            volume.append(sum(ms_csvd._volume(les, sites) for les in d.lesions if les.cavity is None))
            count.append(len(d.lesions))
            positive.append(label == "csvd")
    assert best_threshold_accuracy(volume, positive) <= 0.85
    assert best_threshold_accuracy(count, positive) <= 0.85
    ms_vol = [v for v, p in zip(volume, positive) if not p]
    csvd_vol = [v for v, p in zip(volume, positive) if p]
    assert max(ms_vol) > np.median(csvd_vol) and min(csvd_vol) < np.median(ms_vol)


def test_full_grid_is_a_clinical_flair(sites):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        warp = SubjectWarp(rng, np.zeros(3), scale=(1.0, 1.0, 1.0), template_centre=ms_csvd._BRAIN_CENTRE)
        grid = ms_csvd._grid(rng, warp, "full")
        nz, rows, cols = grid.shape
        assert rows == cols and rows in (256, 288, 320)
        assert 0.7 <= grid.pixel_spacing[0] <= 0.9
        assert 3.0 <= grid.thickness <= 5.0 and grid.slice_spacing >= grid.thickness
        assert 25 <= nz <= 40 and nz * grid.slice_spacing >= 120
        assert abs(grid.slice_dir[2]) > 0.9, "axial"


def test_studies_follow_the_class_rules(studies):
    for label, group in studies.items():
        for st in group:
            t = st.truth
            series = st.series[0]
            assert series.kind == "FLAIR" and "IR" in series.attributes["ScanningSequence"]
            assert series.attributes["InversionTime"] > 1500
            assert (20 <= t["age"] <= 60) if label == "ms" else (50 <= t["age"] <= 88)
            assert (t["fazekas"] is None) == (label == "ms")
            types = {r["type"] for r in t["lesions"]}
            assert types <= set(ms_csvd.MS_TYPES if label == "ms" else ms_csvd.CSVD_TYPES)
            lesions, lacunes = st.masks["lesions"][1], st.masks["lacunes"][1]
            ids = {r["id"]: r for r in t["lesions"]}
            assert sorted(ids) == list(range(1, len(ids) + 1))
            for name, arr in (("lesions", lesions), ("lacunes", lacunes)):
                for v in np.unique(arr[arr > 0]):
                    assert ids[int(v)]["mask"] == name
            assert t["lesion_count"] == len(ids) > 0
            assert lesions.any(), "every study shows bright lesions"
            if label == "ms":
                assert not lacunes.any()
                typical = ("periventricular_ovoid", "juxtacortical", "infratentorial", "callosal")
                assert sum(t["counts_by_type"][k] for k in typical) >= 2, "the MS pattern shows on the grid"
            else:
                assert t["counts_by_type"]["periventricular_cap"] >= 2, "cSVD shows its caps"
            assert t["per_slice_labels"][label] == [int((lesions[k] | lacunes[k]).any()) for k in range(lesions.shape[0])]


def test_infratentorial_lesions_lie_below_the_ventricles_in_the_scanner(studies):
    """The warp carries template-space sites into the scanner: the pons is below the ventricles."""
    st = studies["ms"][0]
    rows = st.truth["lesions"]
    below = [r for r in rows if r["type"] == "infratentorial"]
    above = [r for r in rows if r["type"] in ("periventricular_ovoid", "callosal")]
    assert below and above
    normal = st.series[0].grid.slice_dir
    assert max(np.dot(r["centroid_lps"], normal) for r in below) < min(np.dot(r["centroid_lps"], normal) for r in above) - 10.0
    for r in below:
        assert r["region"] in ("Brain_Stem", "Left_Cerebellum_White_Matter", "Right_Cerebellum_White_Matter",
                               "Left_Cerebellum_Exterior", "Right_Cerebellum_Exterior", "4th_Ventricle")


def test_lacunes_are_dark_fluid_on_flair(studies):
    seen = 0
    for st in studies["csvd"]:
        img = st.series[0].pixels.astype(float)
        lesions, lacunes = st.masks["lesions"][1], st.masks["lacunes"][1]
        parenchyma = np.median(img[(img > 0.4 * np.percentile(img, 99)) & (lesions == 0)])
        assert img[lesions > 0].mean() > 1.1 * parenchyma, "WMH are bright"
        for v in np.unique(lacunes[lacunes > 0]):
            assert img[lacunes == v].min() < 0.75 * parenchyma, "a lacune holds fluid"
            seen += 1
    assert seen >= 1
