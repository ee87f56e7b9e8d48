"""Synthetic patients, visits and scanners, and the vendors' ways of naming series.

Names are drawn from short lists of common names and carry no real person; identities are
deterministic for a random generator. Scanner models and wording follow what Siemens, GE
and Philips scanners write, so that routing cannot rely on one style.
"""
from __future__ import annotations

import datetime as _dt

import numpy as np

from .study import Identity, Scanner

_FAMILY = (
    "Miller", "Novak", "Garcia", "Schmidt", "Rossi", "Kowalski", "Jensen", "Dubois", "Silva",
    "Nakamura", "Okafor", "Haddad", "Larsen", "Costa", "Petrov", "Moreau", "Fischer", "Lindqvist",
)
_GIVEN = {
    "F": ("Anna", "Maria", "Elena", "Sofia", "Grace", "Ingrid", "Amara", "Yuki", "Lucia", "Hanna"),
    "M": ("John", "Pavel", "Luis", "Jonas", "Kenji", "Omar", "Marco", "Erik", "Chidi", "Tomas"),
}
_INSTITUTIONS = ("St. Elsewhere General", "University Hospital North", "City Neuro Center", "")

_SCANNERS = {
    "CT": (
        Scanner("SIEMENS", "SOMATOM Definition AS+", "syngo CT VA48A", "CTAWP71842", style="siemens"),
        Scanner("GE MEDICAL SYSTEMS", "Revolution CT", "revo_ct_22bc.50", "GECT01", style="ge"),
        Scanner("Philips", "iCT 256", "4.1.6", "PHCT256", style="philips"),
    ),
    "MR": (
        Scanner("SIEMENS", "Prisma", "syngo MR XA30", "AWP167011", 3.0, style="siemens"),
        Scanner("SIEMENS", "MAGNETOM Aera", "syngo MR E11", "MRC40512", 1.5, style="siemens"),
        Scanner("GE MEDICAL SYSTEMS", "SIGNA Premier", "29\\LX\\MR Software release:RX29.1", "GEMR3T", 3.0, style="ge"),
        Scanner("Philips Medical Systems", "Ingenia", "5.7.1\\5.7.1.2", "PHMR15", 1.5, style="philips"),
    ),
}


def make_identity(rng: np.random.Generator, modality: str, age_range: tuple[int, int]) -> Identity:
    """A synthetic patient of an age in ``age_range`` visiting a scanner of ``modality``."""
    sex = "F" if rng.random() < 0.5 else "M"
    study_date = _dt.date(2024, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 900)))
    age = int(rng.integers(age_range[0], age_range[1] + 1))
    birth = study_date - _dt.timedelta(days=int(age * 365.25 + rng.integers(1, 364)))
    scanners = _SCANNERS[modality]
    scanner = scanners[int(rng.integers(len(scanners)))]
    family = _FAMILY[int(rng.integers(len(_FAMILY)))]
    given = _GIVEN[sex][int(rng.integers(len(_GIVEN[sex])))]
    return Identity(
        patient_name=f"{family}^{given}",
        patient_id=f"NR{int(rng.integers(10**6, 10**7))}",
        birth_date=birth,
        sex=sex,
        study_date=study_date,
        study_time=_dt.time(int(rng.integers(7, 20)), int(rng.integers(60)), int(rng.integers(60))),
        accession=f"A{int(rng.integers(10**7, 10**8))}",
        institution=_INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
        referring=f"{_FAMILY[int(rng.integers(len(_FAMILY)))]}^{_GIVEN['F'][int(rng.integers(10))]}^^Dr",
        scanner=scanner,
    )


def pick_description(
    rng: np.random.Generator,
    by_style: dict[str, tuple[str, ...]],
    style: str,
    misleading: tuple[str, ...] = (),
    p_empty: float = 0.1,
    p_misleading: float = 0.1,
) -> str:
    """A SeriesDescription in the scanner's style; sometimes empty or misleading on purpose."""
    u = rng.random()
    if u < p_empty:
        return ""
    if u < p_empty + p_misleading and misleading:
        return misleading[int(rng.integers(len(misleading)))]
    options = by_style[style]
    return options[int(rng.integers(len(options)))]
