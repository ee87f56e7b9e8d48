"""Invertible transforms: the square resize against copies of the hemorrhage model's own code,
crops, intensity records, and SimpleITK resampling between grids with anisotropic spacing, a
rotated direction and a non-zero origin."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from neuroread.models import SeriesVolume
from neuroread.models.transforms import (
    CropBox,
    PercentileScale,
    ResampleToSpacing,
    SquareResize,
    VoxelGrid,
    Window,
    Windows,
    ZScore,
    check_same_frame,
    from_sitk,
    resample_onto,
    to_sitk,
)

FRAME = "1.2.826.0.1.3680043.10.511.1"
SPACING = (0.8, 0.6, 2.5)  # column, row, slice mm
ORIGIN = (-31.5, 12.25, 40.0)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation by ax, ay, az degrees about x, then y, then z."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTION = _rotation(12.0, -7.0, 25.0)


def _volume(array: np.ndarray, *, spacing=SPACING, origin=ORIGIN, direction=DIRECTION, uid="1.2.3.1",
            frame: str | None = FRAME) -> SeriesVolume:
    return SeriesVolume(uid, array, tuple(spacing), tuple(origin), np.asarray(direction, float),
                        tuple(f"{uid}.{k}" for k in range(array.shape[0])), "MR",
                        {"FrameOfReferenceUID": frame} if frame else {})


# --- copies of neuroread.models.ct_hemorrhage's hand-written code, as it was when this module
# --- was written: SquareResize and Windows must reproduce them bit for bit.

def _copied_resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    rows, cols = images.shape[-2:]
    side = max(rows, cols)
    if rows != cols:
        top, left = (side - rows) // 2, (side - cols) // 2
        images = F.pad(images, (left, side - cols - left, top, side - rows - top))
    if side == size:
        return images.contiguous()
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _copied_to_series_grid(maps: torch.Tensor, rows: int, cols: int) -> np.ndarray:
    side = max(rows, cols)
    if maps.shape[-1] != side:
        maps = F.interpolate(maps[:, None], size=(side, side), mode="bilinear", align_corners=False,
                             antialias=True)[:, 0]
    top, left = (side - rows) // 2, (side - cols) // 2
    return np.clip(maps[:, top:top + rows, left:left + cols].numpy(), 0.0, 1.0).astype(np.float32)


def _copied_apply_windows(slices_hu: np.ndarray, windows) -> torch.Tensor:
    hu = torch.from_numpy(np.ascontiguousarray(slices_hu, dtype=np.float32))
    channels = [((hu - (c - w / 2)) / w).clamp_(0.0, 1.0) for c, w in windows]
    return torch.stack(channels, dim=1)


HEAD_CT_WINDOWS = ((40.0, 80.0), (80.0, 200.0), (600.0, 2800.0))


# --- in-plane geometry ---------------------------------------------------------------------


@pytest.mark.parametrize("rows, cols", [(37, 23), (23, 37), (30, 30)])
@pytest.mark.parametrize("size", [16, 37, 64])
def test_square_resize_matches_copied_resize_square_bit_for_bit(rows, cols, size):
    images = torch.rand(3, 2, rows, cols, generator=torch.Generator().manual_seed(rows * cols + size))
    out, record = SquareResize(size).forward(images)
    assert out.shape == (3, 2, size, size) and out.dtype == torch.float32
    assert torch.equal(out, _copied_resize_square(images, size))
    side = max(rows, cols)
    assert (record.rows, record.cols, record.side, record.size) == (rows, cols, side, size)
    assert (record.top, record.left) == ((side - rows) // 2, (side - cols) // 2)


@pytest.mark.parametrize("rows, cols", [(37, 23), (23, 37)])
@pytest.mark.parametrize("size", [16, 37, 64])
def test_square_inverse_matches_copied_to_series_grid_bit_for_bit(rows, cols, size):
    _, record = SquareResize(size).forward(torch.zeros(1, 1, rows, cols))
    maps = torch.rand(5, size, size, generator=torch.Generator().manual_seed(size))
    expected = _copied_to_series_grid(maps, rows, cols)
    back = record.inverse(maps, clip=(0.0, 1.0))
    assert isinstance(back, torch.Tensor) and back.shape == (5, rows, cols)
    assert np.array_equal(back.numpy(), expected)
    from_numpy = record.inverse(maps.numpy(), clip=(0.0, 1.0))
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    assert np.array_equal(from_numpy, expected)
    channels = record.inverse(maps[:, None].expand(5, 2, size, size))  # [k, c, S, S] keeps its channels
    assert channels.shape == (5, 2, rows, cols)


@pytest.mark.parametrize("rows, cols", [(48, 30), (30, 48)])
@pytest.mark.parametrize("size", [24, 96])
def test_square_forward_then_inverse_returns_a_smooth_map(rows, cols, size):
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    smooth = (0.5 + 0.3 * np.sin(2 * np.pi * r / 60) * np.cos(2 * np.pi * c / 50)).astype(np.float32)
    out, record = SquareResize(size).forward(torch.from_numpy(smooth)[None, None])
    back = record.inverse(out[:, 0])[0].numpy()
    # Next to the zero padding, bilinear mixes in zeros; away from it the map comes back.
    m = 3
    np.testing.assert_allclose(back[m:-m, m:-m], smooth[m:-m, m:-m], atol=0.01)


@pytest.mark.parametrize("rows, cols", [(37, 23), (23, 37)])
@pytest.mark.parametrize("size", [16, 64])
def test_square_points_follow_the_image_and_round_trip(rows, cols, size):
    # A blob at a sub-pixel point: its centroid on the output is where forward_points puts it.
    centre = np.array([rows * 0.45 + 0.3, cols * 0.55 - 0.2])
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    blob = np.exp(-((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * 3.0 ** 2)).astype(np.float32)
    out, record = SquareResize(size).forward(torch.from_numpy(blob)[None, None])

    def centroid(a):
        rr, cc = np.meshgrid(np.arange(a.shape[0]), np.arange(a.shape[1]), indexing="ij")
        return np.array([(a * rr).sum(), (a * cc).sum()]) / a.sum()

    np.testing.assert_allclose(record.forward_points(centroid(blob)), centroid(out[0, 0].numpy()),
                               atol=0.01)
    points = np.random.default_rng(3).uniform(-0.5, [rows - 0.5, cols - 0.5], size=(4, 7, 2))
    np.testing.assert_allclose(record.inverse_points(record.forward_points(points)), points, atol=1e-12)
    assert record.forward_points(points).shape == (4, 7, 2)


def test_crop_box_3d_inverse_pastes_back_at_the_box():
    arr = np.random.default_rng(0).normal(size=(6, 9, 11)).astype(np.float32)
    crop, record = CropBox((1, 2, 3), (4, 7, 10)).forward(arr)
    assert crop.shape == (3, 5, 7) and np.array_equal(crop, arr[1:4, 2:7, 3:10])
    crop[0, 0, 0] = 99.0  # a copy: the source is untouched
    assert arr[1, 2, 3] != 99.0
    back = record.inverse(crop * 2, fill=-1.0)
    assert back.shape == arr.shape and back.dtype == np.float32
    inside = np.zeros(arr.shape, bool)
    inside[1:4, 2:7, 3:10] = True
    assert np.array_equal(back[inside], (crop * 2).ravel()) and np.all(back[~inside] == -1.0)
    assert np.array_equal(record.forward_points([[1, 2, 3]]), [[0, 0, 0]])
    assert np.array_equal(record.inverse_points([[2, 4, 6]]), [[3, 6, 9]])


def test_crop_box_2d_on_tensors_keeps_leading_axes():
    images = torch.arange(2 * 3 * 8 * 10, dtype=torch.float32).reshape(2, 3, 8, 10)
    crop, record = CropBox((2, 1), (6, 9)).forward(images)
    assert crop.shape == (2, 3, 4, 8) and torch.equal(crop, images[..., 2:6, 1:9])
    back = record.inverse(crop)
    assert back.shape == images.shape and torch.equal(back[..., 2:6, 1:9], crop)
    assert back[..., :2, :].abs().sum() == 0 and back[..., :, 9:].abs().sum() == 0
    with pytest.raises(ValueError, match=r"does not fit an array of shape \(2, 3, 5, 10\)"):
        CropBox((2, 1), (6, 9)).forward(images[..., :5, :])
    with pytest.raises(ValueError, match="crop's shape"):
        record.inverse(crop[..., :3, :])


# --- intensities ---------------------------------------------------------------------------


def test_windows_match_copied_apply_windows():
    hu = np.random.default_rng(1).integers(-1200, 3500, size=(3, 17, 11)).astype(np.int16)
    expected = _copied_apply_windows(hu, HEAD_CT_WINDOWS)
    out = Windows(HEAD_CT_WINDOWS).forward(hu)
    assert out.shape == (3, 3, 17, 11) and out.dtype == torch.float32 and torch.equal(out, expected)
    named = Windows([Window(40, 80, "brain"), Window(80, 200, "subdural"), Window(600, 2800, "bone")])
    assert torch.equal(named.forward(torch.from_numpy(hu)), expected)
    assert torch.equal(Window(80.0, 200.0).forward(hu), expected[:, 1])
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_zscore_over_a_mask_round_trips():
    rng = np.random.default_rng(2)
    values = rng.normal(300.0, 45.0, size=(4, 12, 10)).astype(np.float32)
    mask = np.zeros(values.shape, bool)
    mask[1:3, 2:10, 2:8] = True
    values[~mask] = 0.0  # background that must not enter the statistics
    out, record = ZScore().forward(values, mask)
    assert out.dtype == np.float32 and out.shape == values.shape
    assert abs(float(out[mask].mean())) < 1e-5 and abs(float(out[mask].std()) - 1.0) < 1e-5
    assert record.mean == pytest.approx(float(values[mask].astype(np.float64).mean()))
    np.testing.assert_allclose(record.inverse(out), values, rtol=1e-5, atol=1e-3)
    tensor_out, tensor_record = ZScore().forward(torch.from_numpy(values), torch.from_numpy(mask))
    assert tensor_record == record and isinstance(tensor_out, torch.Tensor)
    np.testing.assert_allclose(tensor_out.numpy(), out, rtol=1e-6, atol=1e-6)
    flat, flat_record = ZScore().forward(np.full((2, 3, 3), 7.0, np.float32))
    assert flat_record.std == 1.0 and np.all(flat == 0.0)
    with pytest.raises(ValueError, match="mask must be a boolean array"):
        ZScore().forward(values, mask[0])


def test_percentile_scale_round_trips_without_clipping_and_refuses_with_it():
    values = np.random.default_rng(4).gamma(2.0, 100.0, size=(5, 9, 8)).astype(np.float32)
    out, record = PercentileScale(2, 98, clip=False).forward(values)
    assert np.percentile(out, 2) == pytest.approx(0.0, abs=1e-6)
    assert np.percentile(out, 98) == pytest.approx(1.0, abs=1e-6)
    assert out.min() < 0 and out.max() > 1
    np.testing.assert_allclose(record.inverse(out), values, rtol=1e-5, atol=1e-3)
    clipped, clipped_record = PercentileScale().forward(torch.from_numpy(values))
    assert float(clipped.min()) == 0.0 and float(clipped.max()) == 1.0
    assert (clipped_record.low_value, clipped_record.high_value) == pytest.approx(tuple(np.percentile(values, [1, 99])))
    with pytest.raises(ValueError, match="clipped"):
        clipped_record.inverse(clipped)


# --- 3-D resampling ------------------------------------------------------------------------


def test_to_sitk_keeps_the_volume_geometry():
    vol = _volume(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    image = to_sitk(vol)
    assert image.GetSize() == (6, 5, 4) and image.GetSpacing() == SPACING and image.GetOrigin() == ORIGIN
    for zyx in [(0, 0, 0), (3, 1, 5), (1.5, 2.25, 0.5)]:
        np.testing.assert_allclose(image.TransformContinuousIndexToPhysicalPoint(zyx[::-1]),
                                   vol.index_to_lps(zyx), atol=1e-9)
    assert np.array_equal(from_sitk(image), vol.array) and from_sitk(image).dtype == np.int16
    grid = VoxelGrid.of(vol)
    np.testing.assert_allclose(grid.lps_to_index(vol.index_to_lps([[1.5, 2.25, 0.5]])), [[1.5, 2.25, 0.5]])


def test_resample_onto_itself_is_the_identity():
    arr = np.random.default_rng(5).integers(-1000, 1000, size=(6, 8, 7)).astype(np.int16)
    vol = _volume(arr)
    nearest = resample_onto(vol, vol, interpolator="nearest")
    assert nearest.dtype == np.int16 and np.array_equal(nearest, arr)
    linear = resample_onto(vol, vol)
    assert linear.dtype == np.float32 and linear.shape == arr.shape
    np.testing.assert_allclose(linear, arr, atol=1e-3)
    spline = resample_onto(vol, vol, interpolator="bspline")
    assert spline.dtype == np.float32
    np.testing.assert_allclose(spline, arr, atol=1e-2)


@pytest.mark.parametrize("interpolator", ["nearest", "linear"])
def test_a_grid_shifted_by_a_voxel_moves_values_by_one_index(interpolator):
    arr = np.random.default_rng(6).normal(size=(6, 8, 7)).astype(np.float32)
    vol = _volume(arr)
    d = np.asarray(DIRECTION)
    one_row = _volume(np.zeros_like(arr), origin=tuple(np.asarray(ORIGIN) + d[:, 1] * SPACING[1]))
    out = resample_onto(vol, one_row, interpolator=interpolator, default=-7.0)
    np.testing.assert_allclose(out[:, :-1, :], arr[:, 1:, :], atol=1e-5)
    assert np.all(out[:, -1, :] == -7.0)  # beyond the last row: outside the moving volume
    slice_back = _volume(np.zeros_like(arr), origin=tuple(np.asarray(ORIGIN) - d[:, 2] * SPACING[2]))
    out = resample_onto(vol, slice_back, interpolator=interpolator, default=-7.0)
    np.testing.assert_allclose(out[1:], arr[:-1], atol=1e-5)
    assert np.all(out[0] == -7.0)


def test_a_transform_maps_reference_points_into_the_moving_space():
    arr = np.random.default_rng(7).normal(size=(5, 6, 7)).astype(np.float32)
    vol = _volume(arr)
    shift = np.asarray(DIRECTION)[:, 0] * SPACING[0]  # one column, in LPS mm
    out = resample_onto(vol, vol, transform=sitk.TranslationTransform(3, tuple(shift)), interpolator="nearest")
    assert np.array_equal(out[:, :, :-1], arr[:, :, 1:]) and np.all(out[:, :, -1] == 0.0)


def test_a_marked_voxel_lands_at_its_lps_point_on_a_coronal_grid():
    nz, ny, nx = 5, 7, 6
    arr = np.zeros((nz, ny, nx), np.int16)
    marked = (3, 2, 4)
    arr[marked] = 1000
    axial = _volume(arr)
    d = np.asarray(DIRECTION)
    # The same frame cut coronally: columns along the axial columns, rows down the axial slice
    # normal (head to feet), slices along the axial rows.
    coronal = _volume(np.zeros((ny, nz, nx), np.int16), uid="1.2.3.2", spacing=(SPACING[0], SPACING[2], SPACING[1]),
                      origin=tuple(axial.index_to_lps([nz - 1, 0, 0])),
                      direction=np.stack([d[:, 0], -d[:, 2], d[:, 1]], axis=1))
    out = resample_onto(axial, coronal, interpolator="nearest")
    assert out.shape == (ny, nz, nx) and out.dtype == np.int16
    (hit,) = np.argwhere(out == 1000)
    np.testing.assert_allclose(coronal.index_to_lps(hit), axial.index_to_lps(marked), atol=1e-9)
    assert np.array_equal(out, np.flip(arr, 0).transpose(1, 0, 2))


def test_linear_resampling_onto_an_oblique_grid_is_exact_for_a_linear_field():
    shape = (9, 12, 11)
    axial = _volume(np.zeros(shape, np.float32))
    idx = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    a, b = np.array([0.7, -1.3, 0.4]), 25.0
    axial.array[...] = axial.index_to_lps(idx) @ a + b
    # A smaller grid, rotated another way, around the axial volume's centre.
    centre = axial.index_to_lps((np.array(shape) - 1) / 2)
    other = _rotation(-30.0, 40.0, 10.0)
    ref_shape, ref_spacing = (4, 5, 6), (0.9, 0.8, 1.2)
    half = (np.array(ref_shape[::-1]) - 1) / 2 * ref_spacing
    ref = _volume(np.zeros(ref_shape, np.float32), uid="1.2.3.3", spacing=ref_spacing,
                  origin=tuple(centre - other @ half), direction=other)
    ref_idx = np.stack(np.meshgrid(*map(np.arange, ref_shape), indexing="ij"), axis=-1)
    where = VoxelGrid.of(axial).lps_to_index(ref.index_to_lps(ref_idx))
    assert np.all(where >= 0) and np.all(where <= np.array(shape) - 1)  # inside the axial voxel centres
    out = resample_onto(axial, ref, default=float("nan"))
    np.testing.assert_allclose(out, ref.index_to_lps(ref_idx) @ a + b, atol=1e-3)


def test_a_mask_image_with_flipped_slices_lands_on_the_right_slices():
    vol = _volume(np.zeros((6, 7, 5), np.float32))
    mask = np.zeros(vol.array.shape, np.uint8)
    mask[1, 2:5, 1:4] = 1
    mask[4, 3:6, 2:3] = 1
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(mask[::-1]))
    d = np.asarray(DIRECTION).copy()
    d[:, 2] *= -1  # slices run the other way
    flipped.SetSpacing(SPACING)
    flipped.SetOrigin(tuple(vol.index_to_lps([5, 0, 0])))
    flipped.SetDirection(tuple(d.ravel()))
    out = resample_onto(flipped, vol, interpolator="nearest")
    assert out.dtype == np.uint8 and np.array_equal(out, mask)
    assert list(np.flatnonzero(out.any(axis=(1, 2)))) == [1, 4]
    as_bool = resample_onto((mask.astype(bool), vol), vol, interpolator="nearest")
    assert as_bool.dtype == bool and np.array_equal(as_bool, mask.astype(bool))


def test_check_same_frame_refuses_other_or_missing_frames():
    a = _volume(np.zeros((2, 3, 3), np.float32), uid="1.2.3.10")
    check_same_frame(a, _volume(np.zeros((2, 3, 3), np.float32), uid="1.2.3.11"))
    other = _volume(np.zeros((2, 3, 3), np.float32), uid="1.2.3.12", frame="1.2.3.999")
    with pytest.raises(ValueError, match=r"1\.2\.3\.10.*1\.2\.3\.12.*different frames"):
        check_same_frame(a, other)
    missing = _volume(np.zeros((2, 3, 3), np.float32), uid="1.2.3.13", frame=None)
    with pytest.raises(ValueError, match=r"no Frame of Reference UID on 1\.2\.3\.13"):
        check_same_frame(a, missing)
    with pytest.raises(ValueError, match="different frames"):
        resample_onto(other, a)
    with pytest.raises(ValueError, match="different frames"):  # an array on that series' grid too
        resample_onto((other.array, other), a)
    assert resample_onto(other, a, transform=sitk.Transform(3, sitk.sitkIdentity)).shape == (2, 3, 3)
    assert resample_onto(other, a, check_frame=False).shape == (2, 3, 3)


def test_resample_to_spacing_and_back_returns_a_smooth_map():
    shape = (10, 24, 20)
    vol = _volume(np.zeros(shape, np.float32))
    idx = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)

    def field(lps):
        return (np.sin(lps[..., 0] * 2 * np.pi / 45) * np.cos(lps[..., 1] * 2 * np.pi / 60)
                + 0.5 * np.sin(lps[..., 2] * 2 * np.pi / 70)).astype(np.float32)

    vol.array[...] = field(vol.index_to_lps(idx))
    out, record = ResampleToSpacing(1.2).forward(vol)
    target = record.target
    assert target.spacing == (1.2, 1.2, 1.2) and out.shape == target.shape == (21, 12, 13)
    corner = (-0.5, -0.5, -0.5)
    np.testing.assert_allclose(target.index_to_lps(corner), vol.index_to_lps(corner), atol=1e-9)
    t_idx = np.stack(np.meshgrid(*map(np.arange, target.shape), indexing="ij"), axis=-1)
    np.testing.assert_allclose(out[1:-1, 1:-1, 1:-1], field(target.index_to_lps(t_idx))[1:-1, 1:-1, 1:-1], atol=0.01)
    back = record.inverse(out)
    assert back.shape == shape and back.dtype == np.float32
    np.testing.assert_allclose(back[1:-1, 1:-1, 1:-1], vol.array[1:-1, 1:-1, 1:-1], atol=0.02)
    np.testing.assert_allclose(back, vol.array, atol=0.15)  # edges: nearest extrapolation, not a default


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda: SquareResize(0), r"SquareResize\.size must be an integer >= 1, got 0"),
    (lambda: SquareResize(2.5), r"SquareResize\.size .* got 2\.5"),
    (lambda: SquareResize(8, pad_value=float("nan")), r"SquareResize\.pad_value .* got nan"),
    (lambda: CropBox((0,), (1,)), r"2 or 3 entries"),
    (lambda: CropBox((-1, 0), (2, 2)), r"CropBox\.start .* got -1"),
    (lambda: CropBox((0, 5), (3, 5)), r"stop \(3, 5\) must exceed start \(0, 5\)"),
    (lambda: Window(40.0, 0.0, "brain"), r"Window 'brain': width must be > 0, got 0\.0"),
    (lambda: Windows([]), r"Windows\.windows must be a non-empty sequence"),
    (lambda: Windows([(40.0,)]), r"a Window or a \(centre, width\) pair, got \(40\.0,\)"),
    (lambda: ZScore(min_std=0.0), r"ZScore\.min_std must be > 0, got 0\.0"),
    (lambda: PercentileScale(60, 40), r"low=60, high=40"),
    (lambda: PercentileScale(clip="yes"), r"PercentileScale\.clip .* got 'yes'"),
    (lambda: ResampleToSpacing(-1.0), r"ResampleToSpacing\.spacing_mm must be positive, got -1\.0"),
    (lambda: ResampleToSpacing((1.0, 1.0)), r"ResampleToSpacing\.spacing_mm must be 3 finite numbers"),
    (lambda: ResampleToSpacing(1.0, interpolator="lineer"), r"got 'lineer' \(did you mean 'linear'\?\)"),
    (lambda: VoxelGrid((2, 2, 2), (1, 1, 1), (0, 0, 0), (1, 0, 0, 1, 0, 0, 0, 0, 1)), r"VoxelGrid\.direction"),
    (lambda: VoxelGrid((2, 0, 2), (1, 1, 1), (0, 0, 0), np.eye(3).ravel()), r"VoxelGrid\.shape .* got 0"),
])
def test_constructors_name_the_field_and_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_calls_refuse_what_they_cannot_use():
    vol = _volume(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match=r"interpolator must be one of linear, nearest, bspline, got 'cubic'"):
        resample_onto(vol, vol, interpolator="cubic")
    with pytest.raises(ValueError, match=r"default -1\.0 is not a value of the moving image's dtype uint8"):
        resample_onto(vol, vol, interpolator="nearest", default=-1)
    with pytest.raises(ValueError, match=r"float tensor \[n, c, rows, cols\], got torch\.int64"):
        SquareResize(8).forward(torch.zeros(1, 1, 4, 4, dtype=torch.int64))
    _, record = SquareResize(8).forward(torch.zeros(1, 1, 4, 6))
    with pytest.raises(ValueError, match=r"maps must be \[k, 8, 8\]"):
        record.inverse(torch.zeros(2, 6, 6))
    with pytest.raises(ValueError, match=r"array shape \(2, 3, 3\) is not the grid's \(2, 3, 4\)"):
        resample_onto((np.zeros((2, 3, 3)), vol), vol)
