"""Assemble: spooled instances become complete series and studies (stable age, early completion),
and a series' instances are reduced to the one header routing reads (:func:`series_consensus`).
"""
from .assembler import Assembler, CompleteSeries, CompleteStudy
from .consensus import SeriesConsensus, read_header_or_none, series_consensus

__all__ = [
    "Assembler",
    "CompleteSeries",
    "CompleteStudy",
    "SeriesConsensus",
    "read_header_or_none",
    "series_consensus",
]
