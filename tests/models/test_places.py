"""Where findings are: places derived from a result's maps and masks (neuroread.models.places)."""
from __future__ import annotations

import numpy as np
import pytest

from neuroread.models import (
    Classification,
    ClassLabel,
    Code,
    Finding,
    Heatmap,
    KeySlice,
    Lesion,
    ModelCard,
    ModelResult,
    MultiClass,
)
from neuroread.models.places import MAX_VERTICES, outline_of, places

SERIES = "1.2.3"
UIDS = [f"1.2.3.{k}" for k in range(6)]
CARD = ModelCard({}, "0" * 64, "unit test", demo=True)
BLEED = Code("1386000", "SCT", "Intracranial hemorrhage")
KIND = MultiClass("kind", Code("KIND", "99T", "Kind"), (ClassLabel("a", Code("A", "99T", "A")),
                                                       ClassLabel("b", Code("B", "99T", "B"))))


def _result(heat: np.ndarray, *, present: bool = True, keys=(1, 4), classes=None, lesions=(), maps=()) -> ModelResult:
    return ModelResult(
        model="t", version="1", card=CARD,
        findings=(Finding("bleed", BLEED, 0.9 if present else 0.1, 0.5),),
        classifications=(classes,) if classes else (),
        key_slices=tuple(KeySlice(SERIES, k, UIDS[k], 1.0 / r, r) for r, k in enumerate(keys, start=1)),
        heatmaps=(Heatmap(SERIES, "attention", heat, explains="bleed", value_range=(0.0, 1.0)), *maps),
        lesions=lesions,
    )


def test_an_outline_goes_round_the_pixels_edges_in_dicom_image_coordinates():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:8] = True  # rows 2-4, columns 3-7
    xy = outline_of(mask)
    assert np.array_equal(xy[0], xy[-1])  # closed
    # pixel centres at +0.5: the square's edges run half a pixel outside the outer centres
    assert xy[:, 0].min() == pytest.approx(3.0, abs=0.51) and xy[:, 0].max() == pytest.approx(8.0, abs=0.51)
    assert xy[:, 1].min() == pytest.approx(2.0, abs=0.51) and xy[:, 1].max() == pytest.approx(5.0, abs=0.51)
    big = np.zeros((200, 200), bool)
    yy, xx = np.mgrid[:200, :200]
    big[(yy - 100) ** 2 + (xx - 90) ** 2 < 70 ** 2] = True
    assert len(outline_of(big)) <= MAX_VERTICES + 1
    with pytest.raises(ValueError, match="empty"):
        outline_of(np.zeros((4, 4), bool))


def test_a_present_finding_is_placed_round_its_maps_peak_on_the_best_key_slice():
    heat = np.zeros((6, 20, 20), np.float32)
    heat[1, 2:4, 2:4] = 0.3
    heat[4, 10:14, 5:9] = 0.8   # the highest peak on a key slice
    heat[4, 10, 5] = 0.9
    heat[2, 0:5, 0:5] = 1.0     # higher, but not a key slice
    (place,) = places(_result(heat), {SERIES: UIDS})
    assert (place.target, place.slice_index, place.sop_instance_uid, place.source) == ("bleed", 4, UIDS[4], "attention")
    assert place.area_px == 16 and place.probability == 0.9
    assert 5 <= place.peak[0] <= 9 and 10 <= place.peak[1] <= 14


def test_absent_findings_and_maps_that_show_nothing_have_no_place():
    heat = np.zeros((6, 20, 20), np.float32)
    heat[4, 3:6, 3:6] = 0.7
    assert places(_result(heat, present=False), {SERIES: UIDS}) == []
    assert places(_result(np.zeros((6, 20, 20), np.float32)), {SERIES: UIDS}) == []


def test_a_map_zero_on_every_key_slice_is_placed_where_it_peaks():
    heat = np.zeros((6, 20, 20), np.float32)
    heat[3, 8:10, 8:10] = 0.5
    (place,) = places(_result(heat), {SERIES: UIDS})
    assert place.slice_index == 3
    assert places(_result(heat), {}) == []  # without the instances, slice 3 cannot be named


def test_a_decided_class_and_a_lesion_have_places():
    heat = np.zeros((6, 20, 20), np.float32)
    heat[1, 5:8, 5:8] = 0.6
    relevance = np.zeros((6, 20, 20), np.float32)
    relevance[4, 10:12, 10:12], relevance[4, 1, 1] = 2.0, -2.0
    classes = Classification.of(KIND, [0.2, 0.8])
    mask = np.zeros((6, 20, 20), bool)
    mask[2, 1:3, 1:3] = True
    mask[3, 1:5, 1:5] = True  # largest on slice 3
    lesion = Lesion(SERIES, "bleed", BLEED, mask, 10.0, (0.0, 0.0, 0.0), tracking_id="microbleed 1")
    maps = (Heatmap(SERIES, "lrp", relevance, explains="a", value_range=(-3.0, 3.0), signed=True),)
    result = _result(heat, present=False, classes=classes, lesions=(lesion,), maps=maps)
    # "b" is decided but no map explains it; "a" has a map but is not decided: neither is placed
    assert [(p.target, p.source, p.slice_index, p.tracking_id) for p in places(result, {SERIES: UIDS})] == \
        [("bleed", "lesion", 3, "microbleed 1")]
    maps = (Heatmap(SERIES, "lrp", relevance, explains="b", value_range=(-3.0, 3.0), signed=True),)
    result = _result(heat, present=False, classes=classes, lesions=(lesion,), maps=maps)
    found = places(result, {SERIES: UIDS})
    assert [(p.target, p.source, p.slice_index, p.area_px) for p in found] == [("b", "lrp", 4, 4), ("bleed", "lesion", 3, 16)]
    assert found[0].code == Code("B", "99T", "B") and found[0].probability == pytest.approx(0.8)
