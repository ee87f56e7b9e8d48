"""The job function: one job of the queue, from its spooled inputs to results in the outbox.

:func:`run_job` takes everything it uses as arguments (:class:`JobContext`): the embedded
workers of :class:`~neuroread.node.app.node.Node` call it, and distributed workers will call the
same function with their own store, spool and outbox. :func:`process_inputs` is its core
(load → infer → encode → validate), shared with :func:`~neuroread.node.app.offline.run_files`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pydicom

from neuroread.models import ModelRegistry, ModelResult
from neuroread.node.assemble import series_consensus
from neuroread.node.deliver import Outbox
from neuroread.node.encode import EncodeInfo, Withheld, encode_result, fill_series_level, validate, withhold_invalid_all
from neuroread.node.infer import ModelRunner, SeriesError, load_series
from neuroread.node.jobs import Job, JobError, JobOutcome, JobStore
from neuroread.node.malformed import PARSE_ERRORS
from neuroread.node.redact import describe_error, redact
from neuroread.node.route import Route, match_series
from neuroread.node.spool import Spool

logger = logging.getLogger(__name__)


class PipelineError(Exception):
    """One job that could not go through the pipeline; the message says why (UIDs, no names)."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


class Processed(NamedTuple):
    """What :func:`process_inputs` made: the result, its validated objects, the source attributes
    changed in them (:class:`Withheld`), and each slot's routing header (the consensus of the
    sources it read, so the caller need not read the files again)."""

    result: ModelResult
    objects: list[pydicom.Dataset]
    withheld: list[Withheld]
    headers: dict[str, pydicom.Dataset]


def process_inputs(paths: Mapping[str, Sequence[Path]], model: str, runner: ModelRunner, info: EncodeInfo,
                   dciodvfy: str) -> Processed:
    """Load one series per input slot of ``model``, infer, encode with every slot's sources and validate.

    The spec is the runner's (threshold overrides applied). Before encoding, the attributes the
    results copy from the sources are checked (:mod:`neuroread.node.encode.tolerant`): an invalid value is
    left out of the results and returned as a :class:`Withheld` (keyword and tag, no value), and
    the job goes on. Raises :class:`PipelineError` (not retryable) for slots that do not match,
    a series the model cannot use, an encoding that does not fit, or any dciodvfy error: nothing
    is returned to send then. No reason quotes an element value.
    """
    try:
        spec = runner.spec(model)  # the effective thresholds: configured, else the weights' card
    except ValueError as exc:  # MissingWeights, or weights that are not this model's
        raise PipelineError(f"model {model}: {exc}") from exc
    min_slices = {s.name: s.min_slices for s in spec.slots}
    if set(paths) != set(min_slices):
        raise PipelineError(f"model {model}: inputs {sorted(paths)} do not fill its slots {sorted(min_slices)}")
    volumes = {}
    for slot, files in paths.items():
        try:
            volumes[slot] = load_series(files, min_slices=min_slices[slot])
        except SeriesError as exc:
            raise PipelineError(f"series unusable for slot {slot}: {redact(str(exc))}") from exc
    try:
        result = runner.run(model, volumes)
    except ValueError as exc:  # contract checks (slot sizes, result shape)
        raise PipelineError(f"model {model}: {exc}") from exc
    sources = {}
    for slot, files in paths.items():
        by_uid: dict[str, Path] = {}
        for p in files:
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            except PARSE_ERRORS as exc:
                raise PipelineError(f"cannot read {p.name}: {describe_error(exc)}") from exc
            by_uid[str(ds.SOPInstanceUID)] = p
        sources[slot] = [pydicom.dcmread(by_uid[uid]) for uid in volumes[slot].sop_instance_uids]
    headers = {slot: series_consensus(sorted(instances, key=lambda ds: str(ds.SOPInstanceUID))).header
               for slot, instances in sources.items()}
    withheld = [w for instances in sources.values() for w in fill_series_level(instances)]
    withheld += withhold_invalid_all([ds for instances in sources.values() for ds in instances])
    try:
        objects = encode_result(result, spec, sources, node_info=info)
    except (KeyError, ValueError, TypeError) as exc:
        raise PipelineError(f"encoding failed: {describe_error(exc)}") from exc
    for ds in objects:
        errors = validate(ds, dciodvfy=dciodvfy)
        if errors:
            raise PipelineError(f"{ds.Modality} {ds.SOPInstanceUID} fails dciodvfy: "
                                f"{'; '.join(redact(e) for e in errors[:3])}")
    return Processed(result, objects, withheld, headers)


@dataclass(frozen=True)
class JobContext:
    """What :func:`run_job` works with, passed in rather than reached for.

    ``destinations``: the names of every configured destination (a job goes to all of them when
    no route that matches its series names any); ``on_outbox``: called once the results are in
    the outbox (the node wakes its deliverer).
    """

    registry: ModelRegistry
    routes: Sequence[Route]
    destinations: Sequence[str]
    store: JobStore
    spool: Spool
    outbox: Outbox
    runner: ModelRunner
    info: EncodeInfo
    dciodvfy: str
    on_outbox: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class _Inputs:
    study_uid: str
    paths: list[Path]


def _inputs(ctx: JobContext, series_uid: str, sop_uids: Sequence[str]) -> _Inputs:
    row = ctx.store.series(series_uid)
    if row is not None:
        study = row["study_uid"]
    else:
        found = list(Path(ctx.spool.root).glob(f"*/{series_uid}"))
        if not found:
            raise JobError(f"series {series_uid} is not in the spool")
        study = found[0].parent.name
    paths = [ctx.spool.path_for(study, series_uid, uid) for uid in sop_uids]
    missing = [p.stem for p in paths if not p.exists()]
    if missing:
        raise JobError(f"series {series_uid}: {len(missing)} instances missing from the spool "
                       f"(e.g. {missing[0]})")
    return _Inputs(study, paths)


def run_job(job: Job, ctx: JobContext) -> JobOutcome:
    """Run ``job``: its series from the spool, :func:`process_inputs`, the objects into the outbox
    for the destinations its routes name, ``withheld`` and ``outbox`` audit events. Raises
    :class:`JobError` (retryable or not) when the job cannot run; nothing reaches the outbox then.
    """
    spec = ctx.registry.spec(job.model)
    if spec.version != job.model_version:
        raise JobError(f"job for {job.model} {job.model_version}, registry has {spec.version}")
    slots = [s.name for s in spec.slots]
    if set(job.inputs) != set(slots):
        raise JobError(f"job {job.id}: inputs for slots {sorted(job.inputs)}, {spec.name} {spec.version} "
                       f"has slots {sorted(slots)}")
    inputs = {slot: _inputs(ctx, job.inputs[slot], job.instances[slot]) for slot in slots}
    queued_as = next((e.detail.get("identity") for e in ctx.store.audit_trail(job.id)
                      if e.event in ("queued", "received")), None)
    studies = sorted({i.study_uid for i in inputs.values()})
    if len(studies) != 1:
        raise JobError(f"job {job.id}: its series come from studies {studies}; one study per job")
    try:
        result, objects, withheld, headers = process_inputs({slot: i.paths for slot, i in inputs.items()},
                                                            spec.name, ctx.runner, ctx.info, ctx.dciodvfy)
    except PipelineError as exc:
        raise JobError(exc.reason, retryable=exc.retryable) from exc
    if withheld:
        ctx.store.audit(job.id, "withheld", {"attributes": [w.as_dict() for w in withheld],
                                             "why": "what the results copy from the sources, changed: values "
                                                    "not valid for their VR left out, series-level values "
                                                    "missing in some instances filled (no value recorded)"})
        logger.warning("job %d: %d source attributes changed in the results: %s", job.id, len(withheld),
                       "; ".join(str(w) for w in withheld))
    names = destination_names(ctx, job.model, headers, {slot: len(i.paths) for slot, i in inputs.items()})
    output_uids = [str(ds.SOPInstanceUID) for ds in objects]
    added = ctx.outbox.add(str(job.id), objects, names) if names else 0
    ran_as = f"{result.card.weights_sha256}|{ctx.runner.spec(spec.name).thresholds_text()}"
    if queued_as and queued_as != ran_as:  # new weights or thresholds between enqueue and run
        logger.warning("job %d: queued for weights/thresholds %s, ran with %s (the results say which)", job.id,
                       queued_as[:24], ran_as[:24])
    ctx.store.audit(job.id, "outbox", {
        "inputs": {slot: {"series": job.inputs[slot], "instances": len(job.instances[slot])} for slot in slots},
        "study": studies[0], "model": spec.name, "version": spec.version, "identity": ran_as,
        "queued_identity": queued_as or "",
        "weights_sha256": result.card.weights_sha256, "demo_weights": result.card.demo,
        "outputs": output_uids, "destinations": names, "new_rows": added,
    })
    if not names:
        logger.warning("job %d: no destination configured; %d objects kept only in the outbox audit",
                       job.id, len(objects))
    ctx.on_outbox()
    logger.info("job %d: %s %s on %s → %d objects → %s", job.id, spec.name, spec.version,
                [job.inputs[slot] for slot in slots], len(objects), names)
    return JobOutcome({"sop_instance_uids": output_uids, "destinations": names}, result.card.weights_sha256)


def destination_names(ctx: JobContext, model: str, headers: Mapping[str, pydicom.Dataset],
                      counts: Mapping[str, int]) -> list[str]:
    """The destinations named by the first route matching each slot's series (its routing
    header and instance count; in slot order, without repeats); every configured
    destination when none names any."""
    names: list[str] = []
    for slot, header in headers.items():
        routes = [r for r in ctx.routes if r.model == model and r.slot == slot]
        decision = match_series(header, counts[slot], routes)
        for name in decision.matched[0].destinations if decision.matched else ():
            if name not in names:
                names.append(name)
    return names or list(ctx.destinations)
