"""CT windows, resizing (and its record, which maps explanations back) and the paper's fixed-length
sampling with its unsampled-slice sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroread.models.ct_hemorrhage.preprocess import (
    WINDOWS,
    Window,
    apply_windows,
    augmentation_sets,
    prepare,
    resize_square,
    sample_indices,
    square_record,
    to_input,
)


def test_windows_are_brain_subdural_bone():
    assert [(w.name, w.centre, w.width) for w in WINDOWS] == [
        ("brain", 40.0, 80.0), ("subdural", 80.0, 200.0), ("bone", 600.0, 2800.0)]


def test_window_values_on_known_hu():
    # air, water, grey matter, acute blood, cortical bone, metal
    hu = np.array([[[-1000, 0, 40], [60, 1000, 3000]]], np.int16)
    x = apply_windows(hu)
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    brain, subdural, bone = x[0].numpy()
    np.testing.assert_allclose(brain, [[0.0, 0.0, 0.5], [0.75, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(subdural, [[0.0, 0.1, 0.3], [0.4, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(bone, [[0.0, 800 / 2800, 840 / 2800], [860 / 2800, 1800 / 2800, 1.0]], atol=1e-6)


def test_window_rejects_bad_input():
    with pytest.raises(ValueError, match="width must be > 0"):
        Window("flat", 40.0, 0.0)
    with pytest.raises(ValueError, match=r"\[n, rows, cols\]"):
        apply_windows(np.zeros((4, 4), np.float32))


def test_resize_keeps_range_and_pads_to_square():
    img = torch.ones(2, 3, 4, 8)  # wide: padded with 2 rows of 0 above and below
    out = resize_square(img, 8)
    assert out.shape == (2, 3, 8, 8)
    assert out[:, :, 2:6].eq(1).all() and out[:, :, :2].eq(0).all() and out[:, :, 6:].eq(0).all()
    rng = np.random.default_rng(0)
    x = apply_windows(rng.uniform(-1100, 3100, (3, 50, 50)).astype(np.float32))
    for size in (16, 50, 112):
        y = resize_square(x, size)
        assert y.shape == (3, 3, size, size)
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    torch.testing.assert_close(resize_square(x, 16), resize_square(x, 16), rtol=0, atol=0)


@pytest.mark.parametrize(("rows", "cols", "top", "left"), [(60, 90, 15, 0), (90, 60, 0, 15), (64, 64, 0, 0)])
def test_square_record_says_how_resize_square_padded_and_resized(rows, cols, top, left):
    record = square_record(rows, cols, 32)
    assert (record.rows, record.cols, record.side, record.top, record.left, record.size) == (
        rows, cols, max(rows, cols), top, left, 32)
    image = torch.rand(2, 3, rows, cols, generator=torch.Generator().manual_seed(rows))
    padded = torch.zeros(2, 3, record.side, record.side)
    padded[..., top:top + rows, left:left + cols] = image
    torch.testing.assert_close(resize_square(image, 32), resize_square(padded, 32), rtol=0, atol=0)


def test_square_record_inverse_puts_a_map_back_where_the_image_was():
    """What the model does with its heatmaps: a spot on a wide slice, through the padding and the
    resize and back, lands where it was, on the slice's own grid, in [0, 1]."""
    rows, cols, size = 60, 90, 32  # wide: padded with 15 rows above and below, then 90 -> 32
    image = np.zeros((1, 1, rows, cols), np.float32)
    image[0, 0, 40:50, 10:22] = 1.0
    square = resize_square(torch.from_numpy(image), size)[:, 0]
    back = square_record(rows, cols, size).inverse(square.numpy(), clip=(0.0, 1.0))[0]
    assert back.shape == (rows, cols) and back.min() >= 0.0 and back.max() <= 1.0
    centre = np.argwhere(back >= 0.5 * back.max()).mean(axis=0)
    assert centre == pytest.approx([44.5, 15.5], abs=1.0)


@pytest.mark.parametrize("n,m,expected", [
    (3, 7, [0, 0, 1, 1, 1, 2, 2]),    # n < m: each slice repeated, extras spread
    (1, 4, [0, 0, 0, 0]),
    (2, 4, [0, 0, 1, 1]),
    (5, 5, [0, 1, 2, 3, 4]),          # n == m: every slice once
    (10, 4, [1, 3, 6, 8]),            # runs [0-2] [3-4] [5-7] [8-9], middle of each
    (5, 4, [0, 2, 3, 4]),             # runs [0-1] [2] [3] [4]
    (30, 28, [0, *range(2, 16), *range(17, 30)]),
])
def test_sample_indices_exact(n, m, expected):
    idx = sample_indices(n, m)
    assert idx.dtype == np.int64
    assert idx.tolist() == expected


def test_sample_indices_thin_series_is_evenly_spaced():
    idx = sample_indices(256, 32)  # 0.625 mm CQ500 series: runs of 8
    assert idx.tolist() == [3 + 8 * i for i in range(32)]


def test_sample_indices_rejects_empty():
    with pytest.raises(ValueError, match="at least one slice"):
        sample_indices(0, 4)
    with pytest.raises(ValueError, match="m must be >= 1"):
        sample_indices(4, 0)


def test_augmentation_sets_in_order():
    # runs [0 1 2] [3 4] [5 6 7] [8 9]; base 1 3 6 8; unsampled 0,2 | 4 | 5,7 | 9
    assert [s.tolist() for s in augmentation_sets(10, 4)] == [[0, 4, 5, 9], [2, 4, 7, 9]]
    # runs [0 1] [2] [3 4] [5]: single-slice runs keep their base slice
    assert [s.tolist() for s in augmentation_sets(6, 4)] == [[1, 2, 4, 5]]
    assert augmentation_sets(5, 5) == [] and augmentation_sets(3, 7) == []


def test_augmentation_sets_use_only_unsampled_slices_when_n_at_least_2m():
    n, m = 64, 28
    base = set(sample_indices(n, m).tolist())
    sets = augmentation_sets(n, m, np.random.default_rng(3))
    assert len(sets) == 2  # runs of 2 or 3 slices
    for s in sets:
        assert len(s) == m and np.all(np.diff(s) > 0)
        assert base.isdisjoint(s.tolist())
    assert set().union(*(s.tolist() for s in sets)) == set(range(n)) - base  # every unsampled slice used


def test_augmentation_sets_cover_unsampled_when_n_below_2m():
    n, m = 40, 28  # 12 runs of 2: one set, 12 new slices, 16 base slices kept
    base = sample_indices(n, m)
    (s,) = augmentation_sets(n, m, np.random.default_rng(0))
    assert int((s != base).sum()) == 12
    assert set(s.tolist()) - set(base.tolist()) == set(range(n)) - set(base.tolist())


def test_augmentation_sets_deterministic_given_seed():
    a = augmentation_sets(256, 32, np.random.default_rng(11))
    b = augmentation_sets(256, 32, np.random.default_rng(11))
    c = augmentation_sets(256, 32, np.random.default_rng(12))
    assert len(a) == 7
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # the 7 sets of a thin series are mutually disjoint and disjoint from the base
    used = np.concatenate([sample_indices(256, 32), *a])
    assert np.unique(used).size == 256


def test_prepare_shapes_range_and_indices():
    rng = np.random.default_rng(1)
    volume = rng.integers(-1024, 3071, (30, 40, 48)).astype(np.int16)
    x, idx = prepare(volume, 8, 32)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert idx.tolist() == sample_indices(30, 8).tolist()
    torch.testing.assert_close(x, to_input(volume, idx, 32), rtol=0, atol=0)
    # slice k of the input is slice idx[k] of the volume, windowed and resized alone
    torch.testing.assert_close(x[3], resize_square(apply_windows(volume[idx[3]][None]), 32)[0], rtol=0, atol=0)
    x_short, idx_short = prepare(volume[:3], 5, 32)  # fewer slices than m: repeats
    assert x_short.shape == (5, 3, 32, 32) and idx_short.tolist() == [0, 0, 1, 2, 2]
    torch.testing.assert_close(x_short[0], x_short[1], rtol=0, atol=0)


def test_prepare_rejects_bad_volume_and_indices():
    with pytest.raises(ValueError, match=r"\[slices, rows, cols\]"):
        prepare(np.zeros((4, 4), np.float32), 4, 16)
    with pytest.raises(ValueError, match="outside a volume of 3 slices"):
        to_input(np.zeros((3, 4, 4), np.float32), [0, 3], 8)
