"""Intake: series that arrive by other doors than the receivers: Orthanc's change feed
(:class:`OrthancIntake`, the Orthanc plugin's) and DICOMweb pull (:func:`pull_study`).
"""
from .dicomweb import DicomWebError, StudyNotFoundError, pull_study
from .orthanc import IntakeReport, OrthancGone, OrthancIntake, OrthancUnavailable, Pipeline

__all__ = [
    "DicomWebError",
    "IntakeReport",
    "OrthancGone",
    "OrthancIntake",
    "OrthancUnavailable",
    "Pipeline",
    "StudyNotFoundError",
    "pull_study",
]
