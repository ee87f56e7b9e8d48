"""Argument checks and conversions shared by the transform modules (:mod:`.planar`,
:mod:`.intensity`, :mod:`.grid`)."""
from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]


def _integer(value: Any, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _points(points: Any, dims: int, what: str) -> np.ndarray:
    p = np.asarray(points, float)
    if p.ndim < 1 or p.shape[-1] != dims:
        raise ValueError(f"{what}: points must be [..., {dims}], got shape {p.shape}")
    return p


def _float32_tensor(values: Array, what: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(torch.float32)
    if isinstance(values, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    raise TypeError(f"{what}: expected a numpy array or a torch tensor, got {type(values).__name__}")
