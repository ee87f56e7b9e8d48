"""Infer: series become volumes (:func:`load_series`, the reader shared with training, from
:mod:`neuroread.models.volume`) and models run on them (:class:`ModelRunner`).
"""
from neuroread.models.volume import SeriesError, load_series

from .runner import ModelRunner

__all__ = [
    "ModelRunner",
    "SeriesError",
    "load_series",
]
