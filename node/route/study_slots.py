"""Slot filling: which series of a study fills which input slot of a multi-series model
(a spec with several slots, e.g. T1 + STIR), one job per study and model.

* **Candidates.** A series is a candidate for a slot when its route decision assigns it
  there (configured routes, then the model's default routes: modality, the sequence class
  the classifier reads from acquisition parameters, body part, slice count). When the
  assembler reports the study complete (every series complete and no instance of the study
  for the quiet period), every multi-series model's slots are filled from the candidates
  among the study's series (:func:`fill_slots`). Series of different studies never combine.
* **Several candidates for one slot.** The first by: best route priority (a configured route
  beats a model's default), then most instances, then highest SeriesNumber (a repeated
  acquisition comes later), then highest SeriesInstanceUID (only so that the choice is
  deterministic). Slots are filled in the spec's order; a series fills one slot at most. The
  job's ``slots`` audit event lists each slot's candidates in that order and the chosen one.
* **Slot constraints.** A slot declared ``same_frame_of_reference_as`` another
  (:class:`neuroread.models.InputSlot`) takes only candidates whose Frame of Reference UID is
  that of the series chosen for the other slot (a STIR resampled onto its T1 without a
  registration); when none shares it, the slot is missing and the record says why.
* **A slot with no candidate** (T1 arrived, STIR never did): no job; the study is recorded
  ``incomplete`` for the model (the node's ``study_routing`` table,
  :meth:`neuroread.node.app.node.Node.study_routing`, a warning) naming the missing slots and the series
  that filled the others. A study with no candidate for any slot of a model records nothing
  for that model.
* **Late series or instances** reopen the study (see :mod:`neuroread.node.assemble.assembler`); when it completes
  again its slots are filled again from all its series: the missing series of an incomplete
  study makes the job then; an enlarged series or a newly preferred candidate gives another
  job key, hence a new job (the earlier job's results stay, as for a single series); the
  same choice finds the existing job.
* **Idempotence.** The job key covers every slot's series and instance set, so a study sent
  again, or reported again after a restart, makes no new job.

:func:`fill_slots` is used by the node (:class:`neuroread.node.app.node.Node`, when the assembler reports a
study complete) and by the one-shot pipeline on files (:func:`neuroread.node.app.offline.run_files`).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pydicom

from neuroread.models import ModelSpec

from .rules import Route

CHOICE_RULE = "best route priority, most instances, highest SeriesNumber, highest SeriesInstanceUID"


@dataclass(frozen=True)
class Candidate:
    """A series that fits a slot of a multi-series model, with what the choice between several reads."""

    series_uid: str
    route: Route
    instances: int
    series_number: int | None
    frame_of_reference: str = ""

    @classmethod
    def of(cls, series_uid: str, route: Route, header: pydicom.Dataset, instances: int) -> "Candidate":
        number = header.get("SeriesNumber")
        return cls(series_uid, route, instances, None if number in (None, "") else int(number),
                   str(header.get("FrameOfReferenceUID", "") or ""))

    def preference(self) -> tuple[int, int, int]:
        """Sort key, best first: route priority, then most instances, then highest SeriesNumber."""
        return (self.route.priority, -self.instances, -(-1 if self.series_number is None else self.series_number))

    def describe(self) -> dict[str, Any]:
        return {"series": self.series_uid, "instances": self.instances, "series_number": self.series_number,
                "route": self.route.name}


@dataclass(frozen=True)
class SlotFilling:
    """Which series fills each slot of one model in one study (:func:`fill_slots`)."""

    spec: ModelSpec
    candidates: dict[str, list[Candidate]]  # slot → candidates, best first
    chosen: dict[str, Candidate]  # slot → the series that fills it
    missing: tuple[str, ...]  # slots without a candidate, in the spec's order
    why: dict[str, str] | None = None  # slot → why its candidates could not fill it (constraints)

    def describe(self) -> str:
        """One line: each slot's series (and the candidates passed over), then what is missing."""
        parts = []
        for slot in self.spec.slots:
            c = self.chosen.get(slot.name)
            if c is None:
                wanted = "/".join(slot.sequences) or "any"
                reason = (self.why or {}).get(slot.name) or f"no series of the study fits it: {slot.modality} {wanted}"
                parts.append(f"{slot.name}: missing ({reason})")
                continue
            others = [o.series_uid for o in self.candidates[slot.name] if o is not c]
            passed = f", preferred to {', '.join(others)} ({CHOICE_RULE})" if others else ""
            parts.append(f"{slot.name}: series {c.series_uid} ({c.instances} instances{passed})")
        return f"{self.spec.name}: " + "; ".join(parts)

    def audit(self, study_uid: str) -> dict[str, Any]:
        return {"study": study_uid, "rule": CHOICE_RULE, "slots": {
            slot: {"chosen": self.chosen[slot].series_uid, "candidates": [c.describe() for c in ranked]}
            for slot, ranked in self.candidates.items()}}


def fill_slots(spec: ModelSpec, candidates: Iterable[Candidate]) -> SlotFilling:
    """Fill the slots of ``spec`` from ``candidates`` (those of other models are ignored): per
    slot, in the spec's order, the best candidate not already filling an earlier slot."""
    ranked: dict[str, list[Candidate]] = {s.name: [] for s in spec.slots}
    for c in candidates:
        if c.route.model == spec.name:
            ranked[c.route.slot].append(c)
    chosen: dict[str, Candidate] = {}
    used: set[str] = set()
    why: dict[str, str] = {}
    for slot, fits in ranked.items():
        fits.sort(key=lambda c: c.series_uid, reverse=True)
        fits.sort(key=Candidate.preference)  # stable: the highest UID breaks the remaining ties
        free = [c for c in fits if c.series_uid not in used]
        tied_to = spec.slot(slot).same_frame_of_reference_as
        if tied_to is not None and free:
            anchor = chosen.get(tied_to)
            if anchor is None:
                free, why[slot] = [], f"it must share the frame of reference of slot {tied_to}, which is not filled"
            else:
                others = free
                free = [c for c in free if c.frame_of_reference and c.frame_of_reference == anchor.frame_of_reference]
                if not free:
                    why[slot] = (f"{len(others)} candidate(s) ({', '.join(c.series_uid for c in others)}) but none "
                                 f"shares the frame of reference of slot {tied_to} (series {anchor.series_uid}, "
                                 f"FrameOfReferenceUID {anchor.frame_of_reference or 'missing'})")
        if free:
            chosen[slot] = free[0]
            used.add(free[0].series_uid)
    return SlotFilling(spec, ranked, chosen, tuple(s for s in ranked if s not in chosen), why)
