"""The report page's Figure-2 parts: the verdict line and the attention strip of every sampled slice."""
from __future__ import annotations

import numpy as np

from neuroread.node.encode import pictures as render


def _findings(*present: bool) -> list[render.FindingLine]:
    return [render.FindingLine(f"l{i}", f"Meaning {i}", 0.9 if p else 0.1, 0.5, p) for i, p in enumerate(present)]


def test_verdict_names_what_the_patient_may_have():
    assert render._verdict(_findings(True, False, True)) == "This patient may have: Meaning 0, Meaning 2"
    assert render._verdict(_findings(False, False)) == "No finding reaches its threshold"


def _bar_heights(page: np.ndarray, color: tuple[int, int, int], xs: list[int]) -> list[int]:
    mask = np.all(page == np.array(color, np.uint8), axis=-1)
    return [int(mask[:, x].sum()) for x in xs]


def test_attention_strip_draws_one_bar_per_sampled_slice_in_proportion():
    scores = [0.1, 0.4, 0.2, 0.3]
    keys = [False, True, False, True]
    sampled = [render.SampledSlice(np.zeros((16, 16), np.uint8), i * 3, s, k)
               for i, (s, k) in enumerate(zip(scores, keys))]
    page = render.report_page("t", "s", _findings(False), [], None, sampled=sampled)
    side = min(56, (1024 - 48) // len(sampled) - 2)
    centres = [24 + i * (side + 2) + side // 2 for i in range(len(sampled))]
    # the tallest bar is 56 px; the others in proportion (1 px rounding)
    blue = _bar_heights(page, render.BAR, centres)
    orange = _bar_heights(page, render.PRESENT, centres)
    # a key slice's column also crosses its 2-px outline above and below the thumbnail
    heights = [o - 4 if k else b for b, o, k in zip(blue, orange, keys)]
    expected = [int(56 * s / max(scores)) + 1 for s in scores]
    assert all(abs(h - e) <= 2 for h, e in zip(heights, expected)), (heights, expected)
    assert [o > 0 for o in orange] == keys  # key slices in the key colour (bar and outline)
    without = render.report_page("t", "s", _findings(False), [], None)
    assert not np.array_equal(page, without)
