"""In-plane geometry, per slice: :class:`SquareResize` (torch ``[n, c, rows, cols]``: centred
padding to a square, then bilinear with antialiasing; record :class:`SquareRecord`) and
:class:`CropBox` (a 2-D or 3-D box of voxel indices; record :class:`CropRecord`).

Conventions as in :mod:`neuroread.models.transforms`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import Array, _finite, _float32_tensor, _integer, _points


@dataclass(frozen=True)
class SquareRecord:
    """What :class:`SquareResize` did to slices of ``rows`` x ``cols``: padded to a centred
    ``side`` x ``side`` square (``top`` rows above, ``left`` columns before, the rest after),
    then resized to ``size`` x ``size``."""

    rows: int
    cols: int
    side: int
    top: int
    left: int
    size: int

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "size"):
            _integer(getattr(self, name), 1, f"SquareRecord.{name}")
        _integer(self.side, max(self.rows, self.cols), "SquareRecord.side (max(rows, cols) or more)")
        for name, free in (("top", self.side - self.rows), ("left", self.side - self.cols)):
            value = getattr(self, name)
            if _integer(value, 0, f"SquareRecord.{name}") > free:
                raise ValueError(f"SquareRecord.{name} must be <= side - {'rows' if name == 'top' else 'cols'} "
                                 f"= {free}, got {value}")

    def inverse(self, maps: Array, clip: tuple[float, float] | None = None) -> Array:
        """Maps on the output grid back onto the source slices.

        ``maps``: ``[k, size, size]`` or ``[k, c, size, size]``, a torch tensor (float dtype and
        device kept; integers become float32) or a numpy array (computed in float32).
        Bilinear with antialiasing back to the padded square (none when ``side == size``),
        then the padding cropped off. Returns the same kind, ``[k, rows, cols]`` or ``[k, c,
        rows, cols]``. Bilinear weights are convex, so a map within a range stays in it but
        for rounding; ``clip=(low, high)`` removes the rounding.
        """
        as_numpy = not isinstance(maps, torch.Tensor)
        x = _float32_tensor(maps, "SquareRecord.inverse") if as_numpy or not maps.is_floating_point() else maps
        if x.ndim not in (3, 4) or tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"SquareRecord.inverse: maps must be [k, {self.size}, {self.size}] or "
                             f"[k, c, {self.size}, {self.size}], got shape {tuple(x.shape)}")
        y = x[:, None] if x.ndim == 3 else x
        if self.side != self.size:
            y = F.interpolate(y, size=(self.side, self.side), mode="bilinear", align_corners=False, antialias=True)
        y = y[..., self.top:self.top + self.rows, self.left:self.left + self.cols]
        if x.ndim == 3:
            y = y[:, 0]
        if clip is not None:
            low, high = (_finite(v, "SquareRecord.inverse: clip") for v in clip)
            y = y.clamp(low, high)
        return np.ascontiguousarray(y.numpy()) if as_numpy else y.clone(memory_format=torch.contiguous_format)

    def forward_points(self, points: Any) -> np.ndarray:
        """Continuous (row, col) indices on a source slice ``[..., 2]`` → on the output, float64."""
        p = _points(points, 2, "SquareRecord.forward_points") + (self.top, self.left)
        return (p + 0.5) * (self.size / self.side) - 0.5

    def inverse_points(self, points: Any) -> np.ndarray:
        """Continuous (row, col) indices on the output ``[..., 2]`` → on the source slice, float64."""
        p = _points(points, 2, "SquareRecord.inverse_points")
        return (p + 0.5) * (self.side / self.size) - 0.5 - (self.top, self.left)


@dataclass(frozen=True)
class SquareResize:
    """Slices to ``size`` x ``size`` with their aspect ratio kept.

    Each slice is padded with ``pad_value`` to a centred square (the odd row or column goes
    after), then resized bilinearly with antialiasing (``align_corners=False``; deterministic on
    CPU). Pad with a value that is background after the intensity transform (0 after CT
    windows is air).
    """

    size: int
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        _integer(self.size, 1, "SquareResize.size")
        _finite(self.pad_value, "SquareResize.pad_value")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, SquareRecord]:
        """``images``: float tensor ``[n, c, rows, cols]`` (any device) → (``[n, c, size, size]``,
        same dtype, its record). When nothing changes (square slices of ``size``) the output may
        be ``images`` itself."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            what = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                    else type(images).__name__)
            raise ValueError(f"SquareResize: expected a float tensor [n, c, rows, cols], got {what}")
        rows, cols = images.shape[-2:]
        side = max(rows, cols)
        top, left = (side - rows) // 2, (side - cols) // 2
        if rows != cols:
            images = F.pad(images, (left, side - cols - left, top, side - rows - top), value=self.pad_value)
        record = SquareRecord(rows, cols, side, top, left, self.size)
        if side == self.size:
            return images.contiguous(), record
        return F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=True), record


@dataclass(frozen=True)
class CropRecord:
    """What :class:`CropBox` did: cut ``start`` to ``stop`` (exclusive) out of the last
    ``len(source_shape)`` axes, of size ``source_shape``."""

    source_shape: tuple[int, ...]
    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.source_shape) == len(self.start) == len(self.stop):
            raise ValueError(f"CropRecord: source_shape {self.source_shape}, start {self.start} and stop {self.stop} "
                             "must have one entry per axis")
        for n, a, b in zip(self.source_shape, self.start, self.stop):
            if not 0 <= a < b <= n:
                raise ValueError(f"CropRecord: box {self.start}..{self.stop} does not fit shape {self.source_shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The crop's shape over the boxed axes."""
        return tuple(b - a for a, b in zip(self.start, self.stop))

    def inverse(self, maps: Array, fill: float = 0.0) -> Array:
        """Paste ``maps`` ``[..., *shape]`` (numpy or torch) into an array ``[..., *source_shape]``
        of ``fill`` (dtype, kind and device of ``maps``) at the box."""
        d = len(self.source_shape)
        if maps.ndim < d or tuple(maps.shape[maps.ndim - d:]) != self.shape:
            raise ValueError(f"CropRecord.inverse: maps must end with the crop's shape {self.shape}, "
                             f"got {tuple(maps.shape)}")
        shape = tuple(maps.shape[:maps.ndim - d]) + self.source_shape
        if isinstance(maps, torch.Tensor):
            out = torch.full(shape, fill, dtype=maps.dtype, device=maps.device)
        else:
            out = np.full(shape, fill, dtype=maps.dtype)
        out[(..., *(slice(a, b) for a, b in zip(self.start, self.stop)))] = maps
        return out

    def forward_points(self, points: Any) -> np.ndarray:
        """Continuous indices ``[..., d]`` on the source → in the crop, float64."""
        return _points(points, len(self.start), "CropRecord.forward_points") - self.start

    def inverse_points(self, points: Any) -> np.ndarray:
        """Continuous indices ``[..., d]`` in the crop → on the source, float64."""
        return _points(points, len(self.start), "CropRecord.inverse_points") + self.start


@dataclass(frozen=True)
class CropBox:
    """A box of voxel indices, ``start`` inclusive to ``stop`` exclusive, over the last 2
    (rows, cols) or 3 (slices, rows, cols) axes of an array."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        start, stop = tuple(self.start), tuple(self.stop)
        if len(start) not in (2, 3) or len(stop) != len(start):
            raise ValueError(f"CropBox: start {self.start} and stop {self.stop} must both have 2 or 3 entries")
        start = tuple(_integer(v, 0, "CropBox.start") for v in start)
        stop = tuple(_integer(v, 1, "CropBox.stop") for v in stop)
        if any(b <= a for a, b in zip(start, stop)):
            raise ValueError(f"CropBox: stop {stop} must exceed start {start} on every axis")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)

    def forward(self, array: Array) -> tuple[Array, CropRecord]:
        """``array`` ``[..., *source]`` (numpy or torch) → (a copy of the box ``[..., *(stop -
        start)]``, its record). ValueError when the box does not fit."""
        d = len(self.start)
        if array.ndim < d or any(b > n for b, n in zip(self.stop, array.shape[array.ndim - d:])):
            raise ValueError(f"CropBox {self.start}..{self.stop} does not fit an array of shape {tuple(array.shape)}")
        box = array[(..., *(slice(a, b) for a, b in zip(self.start, self.stop)))]
        out = box.clone() if isinstance(box, torch.Tensor) else np.array(box)
        return out, CropRecord(tuple(int(n) for n in array.shape[array.ndim - d:]), self.start, self.stop)


__all__ = ["CropBox", "CropRecord", "SquareRecord", "SquareResize"]
