"""The report page: a verdict line and sections drawn from a result's typed parts, any model's."""
from __future__ import annotations

import numpy as np

from neuroread.node.encode import pictures as render


def _findings(*present: bool) -> list[render.FindingLine]:
    return [render.FindingLine(f"l{i}", f"Meaning {i}", 0.9 if p else 0.1, 0.5, p) for i, p in enumerate(present)]


def _page(sections, **kwargs) -> np.ndarray:
    return render.report_page("t", "s", sections, None, headline="h", headline_positive=False, **kwargs)


def test_verdict_names_what_the_patient_may_have():
    assert render.verdict(_findings(True, False, True), []) == "This patient may have: Meaning 0, Meaning 2"
    assert render.verdict(_findings(False, False), []) == "No finding reaches its threshold"
    assert render.verdict([], ["Cerebral amyloid angiopathy"]) == "This patient may have: Cerebral amyloid angiopathy"


def _bar_heights(page: np.ndarray, color: tuple[int, int, int], xs: list[int]) -> list[int]:
    mask = np.all(page == np.array(color, np.uint8), axis=-1)
    return [int(mask[:, x].sum()) for x in xs]


def test_slice_scores_draw_one_bar_per_slice_in_proportion():
    scores = [0.1, 0.4, 0.2, 0.3]
    keys = [False, True, False, True]
    slices = tuple(render.SampledSlice(np.zeros((16, 16), np.uint8), i * 3, s, k)
                   for i, (s, k) in enumerate(zip(scores, keys)))
    page = _page([render.SliceScoresSection("Slice attention", slices)])
    side = min(56, (1024 - 48) // len(slices) - 2)
    centres = [24 + i * (side + 2) + side // 2 for i in range(len(slices))]
    blue = _bar_heights(page, render.BAR, centres)
    orange = _bar_heights(page, render.PRESENT, centres)
    # a key slice's column also crosses its 2-px outline above and below the thumbnail
    heights = [o - 4 if k else b for b, o, k in zip(blue, orange, keys)]
    expected = [int(56 * s / max(scores)) + 1 for s in scores]
    assert all(abs(h - e) <= 2 for h, e in zip(heights, expected)), (heights, expected)
    assert [o > 0 for o in orange] == keys  # key slices in the key colour (bar and outline)
    assert not np.array_equal(page, _page([]))


def test_sections_that_do_not_fit_are_named_not_drawn_over_each_other():
    many = render.FindingsSection(tuple(_findings(*([True] * 8))))
    table = render.TableSection("Relevance by region", "density", "/mm3",
                                tuple((f"region {i}", 0.1 * i) for i in range(12)))
    page = _page([many, table], height=400)
    alone = _page([many], height=400)
    assert not np.array_equal(page, alone)  # the bottom line names the table that was left out
    assert np.array_equal(page[:370], alone[:370])


def test_a_classification_marks_the_decided_class_and_a_signed_table_draws_both_colours():
    cls = render.ClassificationSection("Diagnosis", (render.ClassLine("A", 0.2, False), render.ClassLine("B", 0.8, True)))
    table = render.TableSection("Relevance by region", "relevance", "1", (("a", 0.5), ("b", -0.25)))
    page = _page([cls, table])
    assert np.all(page == np.array(render.NEGATIVE, np.uint8), axis=-1).any()  # negative relevance in blue
    assert np.all(page == np.array(render.PRESENT, np.uint8), axis=-1).any()


def test_a_table_title_leaves_out_unit_annotations_and_long_row_names_their_explanation():
    counts = render.TableSection("Number of cerebral microbleeds", "Microbleeds", "{count}", (("Deep", 3.0),))
    assert counts.title == "Number of cerebral microbleeds: Microbleeds"
    assert render.TableSection("Relevance", "density", "/mm3", ()).title == "Relevance: density (/mm3)"
    assert render.TableSection.row_name("Lobar (cortex and juxtacortical white matter)") == "Lobar"
    assert render.TableSection.row_name("Deep (basal ganglia, thalamus)") == "Deep (basal ganglia, thalamus)"  # fits


def test_a_long_lesion_list_shows_its_largest_lesions_in_the_room_left():
    lesions = tuple(render.LesionLine("microbleed", "deep", float(v), 0.9) for v in range(1, 20))
    section = render.LesionSection(lesions)
    findings = render.FindingsSection(tuple(_findings(*([True] * 8))))
    page = _page([findings, section], height=480)
    alone = _page([findings], height=480)
    assert not np.array_equal(page[:450], alone[:450])  # drawn, not only named at the bottom
    fitted = section.fit(120)
    assert fitted.shown == 4 and fitted.height(1024) <= 120
    assert fitted.title == "Lesions: 19 (the 4 largest here, all in the SR)"
    assert section.fit(40) is None and render.LesionSection(lesions[:3]).title == "Lesions: 3"
