"""Route: which model takes a complete series, and which series fills which input slot.

YAML rules on DICOM attributes (:mod:`.rules`), the MR sequence classifier from acquisition
parameters (:mod:`.mr_sequence`), and the slot filling of multi-series models per study
(:mod:`.study_slots`).
"""
from .mr_sequence import SequenceClass, classify
from .rules import Route, RouteDecision, default_routes, explain_path, load_routes, match_series
from .study_slots import Candidate, SlotFilling, fill_slots

__all__ = [
    "Candidate",
    "Route",
    "RouteDecision",
    "SequenceClass",
    "SlotFilling",
    "classify",
    "default_routes",
    "explain_path",
    "fill_slots",
    "load_routes",
    "match_series",
]
