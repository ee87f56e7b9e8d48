"""Intensities: :class:`Window` and :class:`Windows` (CT windows → channels in [0, 1]; they
clip, so they have no inverse), :class:`ZScore` and :class:`PercentileScale` (statistics of
the image, recorded in :class:`ZScoreRecord` and :class:`PercentileRecord`, invertible where
nothing was clipped).

Conventions as in :mod:`neuroread.models.transforms`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._checks import Array, _finite, _float32_tensor


@dataclass(frozen=True)
class Window:
    """A display window: ``[centre - width/2, centre + width/2]`` (modality units, e.g. HU) maps
    linearly to [0, 1], clipped outside.

    No inverse: a 0 or a 1 stands for every value beyond its edge (inside the window a value
    ``x`` came from ``centre - width/2 + x * width``).
    """

    centre: float
    width: float
    name: str = ""

    def __post_init__(self) -> None:
        _finite(self.centre, f"Window {self.name!r}: centre")
        if not _finite(self.width, f"Window {self.name!r}: width") > 0:
            raise ValueError(f"Window {self.name!r}: width must be > 0, got {self.width!r}")

    def forward(self, values: Array) -> torch.Tensor:
        """``values`` (numpy of any real dtype, or torch), any shape → float32 tensor, same shape, in [0, 1]."""
        x = _float32_tensor(values, "Window")
        return ((x - (self.centre - self.width / 2)) / self.width).clamp_(0.0, 1.0)


def _as_window(item: Any) -> Window:
    if isinstance(item, Window):
        return item
    if hasattr(item, "centre") and hasattr(item, "width"):  # e.g. a model's named window
        return Window(item.centre, item.width, str(getattr(item, "name", "")))
    try:
        centre, width = item
    except (TypeError, ValueError):
        raise ValueError(f"Windows: each window must be a Window or a (centre, width) pair, got {item!r}") from None
    return Window(centre, width)


@dataclass(frozen=True)
class Windows:
    """Several windows, one output channel each (see :class:`Window`; no inverse).

    ``windows``: :class:`Window`, ``(centre, width)`` pairs, or objects with ``centre`` and
    ``width`` (and ``name``); at least one.
    """

    windows: tuple[Window, ...]

    def __post_init__(self) -> None:
        if isinstance(self.windows, (str, bytes)) or not isinstance(self.windows, Sequence) or not self.windows:
            raise ValueError(f"Windows.windows must be a non-empty sequence of windows, got {self.windows!r}")
        object.__setattr__(self, "windows", tuple(_as_window(w) for w in self.windows))

    def forward(self, slices: Array) -> torch.Tensor:
        """Slices ``[n, rows, cols]`` (numpy of any real dtype, or torch) → float32 tensor
        ``[n, len(windows), rows, cols]`` in [0, 1]."""
        x = _float32_tensor(slices, "Windows")
        if x.ndim != 3:
            raise ValueError(f"Windows: expected slices [n, rows, cols], got shape {tuple(x.shape)}")
        return torch.stack([w.forward(x) for w in self.windows], dim=1)


def _statistics_of(values: Array, mask: Array | None, what: str) -> np.ndarray:
    """The values under ``mask`` (all when None), finite, at least one, as a flat numpy array."""
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if m.shape != v.shape or m.dtype != bool:
            raise ValueError(f"{what}: mask must be a boolean array of the values' shape {v.shape}, "
                             f"got {m.dtype} {m.shape}")
        v = v[m]
    if v.size == 0:
        raise ValueError(f"{what}: no values to compute statistics from (empty array or mask)")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what}: values (under the mask) must be finite")
    return v.ravel()


def _float32(values: Array, what: str) -> Array:
    """``values`` as float32 of the same kind (numpy or torch; may be ``values`` itself)."""
    if isinstance(values, torch.Tensor):
        return values.to(torch.float32)
    if isinstance(values, np.ndarray):
        return values.astype(np.float32, copy=False)
    raise TypeError(f"{what}: expected a numpy array or a torch tensor, got {type(values).__name__}")


@dataclass(frozen=True)
class ZScoreRecord:
    """The ``mean`` subtracted and the ``std`` (> 0) divided by: ``out = (x - mean) / std``."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        _finite(self.mean, "ZScoreRecord.mean")
        if not _finite(self.std, "ZScoreRecord.std") > 0:
            raise ValueError(f"ZScoreRecord.std must be > 0, got {self.std!r}")

    def apply(self, values: Array) -> Array:
        """The same normalisation of other values (any shape, numpy or torch → float32, same kind)."""
        return (_float32(values, "ZScoreRecord.apply") - self.mean) / self.std

    def inverse(self, values: Array) -> Array:
        """Normalised values back to the source's units (``x * std + mean``; float32, same kind)."""
        return _float32(values, "ZScoreRecord.inverse") * self.std + self.mean


@dataclass(frozen=True)
class ZScore:
    """Zero mean, unit standard deviation, over the voxels of an optional mask (e.g. the brain).

    ``min_std``: a standard deviation at or below it (a constant image) is replaced by 1, so
    the output is ``x - mean`` rather than a division by ~0.
    """

    min_std: float = 1e-6

    def __post_init__(self) -> None:
        if not _finite(self.min_std, "ZScore.min_std") > 0:
            raise ValueError(f"ZScore.min_std must be > 0, got {self.min_std!r}")

    def forward(self, values: Array, mask: Array | None = None) -> tuple[Array, ZScoreRecord]:
        """``values`` any shape (numpy or torch, real) and an optional boolean ``mask`` of its
        shape → (float32 of the same kind and shape, unbounded, mean 0 and std 1 under the mask;
        the record). Statistics in float64 over the finite values the mask selects (all
        voxels are normalised)."""
        v = _statistics_of(values, mask, "ZScore")
        mean, std = float(np.mean(v, dtype=np.float64)), float(np.std(v, dtype=np.float64))
        record = ZScoreRecord(mean, std if std > self.min_std else 1.0)
        return record.apply(values), record


@dataclass(frozen=True)
class PercentileRecord:
    """The values at the two percentiles (``low_value`` → 0, ``high_value`` → 1) and whether
    the output was clipped to [0, 1]. Equal values (a constant image) scale by 1."""

    low_value: float
    high_value: float
    clip: bool

    def __post_init__(self) -> None:
        if _finite(self.high_value, "PercentileRecord.high_value") < _finite(self.low_value,
                                                                            "PercentileRecord.low_value"):
            raise ValueError(f"PercentileRecord: high_value {self.high_value} < low_value {self.low_value}")

    @property
    def scale(self) -> float:
        span = self.high_value - self.low_value
        return span if span > 0 else 1.0

    def apply(self, values: Array) -> Array:
        """The same scaling (and clipping) of other values → float32, same kind and shape."""
        out = (_float32(values, "PercentileRecord.apply") - self.low_value) / self.scale
        if not self.clip:
            return out
        return out.clamp_(0.0, 1.0) if isinstance(out, torch.Tensor) else np.clip(out, 0.0, 1.0, out=out)

    def inverse(self, values: Array) -> Array:
        """Scaled values back to the source's units (``x * scale + low_value``; float32, same kind).

        ValueError when the output was clipped: a 0 or 1 stands for every value beyond a
        percentile, so clipped values cannot be recovered.
        """
        if self.clip:
            raise ValueError("PercentileRecord.inverse: the values were clipped to [0, 1] and cannot be recovered; "
                             "use PercentileScale(clip=False) to invert")
        return _float32(values, "PercentileRecord.inverse") * self.scale + self.low_value


@dataclass(frozen=True)
class PercentileScale:
    """The ``low``-th percentile to 0 and the ``high``-th to 1 (0 <= low < high <= 100), over
    the voxels of an optional mask; ``clip`` clips the output to [0, 1] (then no inverse)."""

    low: float = 1.0
    high: float = 99.0
    clip: bool = True

    def __post_init__(self) -> None:
        low, high = _finite(self.low, "PercentileScale.low"), _finite(self.high, "PercentileScale.high")
        if not 0 <= low < high <= 100:
            raise ValueError(f"PercentileScale: need 0 <= low < high <= 100, got low={self.low!r}, high={self.high!r}")
        if not isinstance(self.clip, bool):
            raise ValueError(f"PercentileScale.clip must be True or False, got {self.clip!r}")

    def forward(self, values: Array, mask: Array | None = None) -> tuple[Array, PercentileRecord]:
        """``values`` any shape (numpy or torch, real) and an optional boolean ``mask`` → (float32
        of the same kind and shape, in [0, 1] when clipped; the record). Percentiles by linear
        interpolation (numpy's default) over the finite values the mask selects."""
        v = _statistics_of(values, mask, "PercentileScale")
        low, high = np.percentile(v, [self.low, self.high])
        record = PercentileRecord(float(low), float(high), self.clip)
        return record.apply(values), record


__all__ = ["PercentileRecord", "PercentileScale", "Window", "Windows", "ZScore", "ZScoreRecord"]
