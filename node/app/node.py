"""The node: every stage wired together (receive → spool → assemble → route → queue → infer →
encode → validate → outbox → deliver).

:class:`Node` (``with Node(config, registry) as node: ...``)
    * a :class:`~neuroread.node.receive.dimse.StorageSCP` on ``config.node`` host/port (port 0: a free one,
      see :attr:`Node.port`) stores into a :class:`~neuroread.node.spool.store.Spool`, whose ``on_stored`` is
      the :class:`~neuroread.node.assemble.assembler.Assembler`'s ``add``;
    * a ticker thread calls :meth:`Assembler.tick` every ``tick_s``; each
      :class:`~neuroread.node.assemble.assembler.CompleteSeries` is routed from a representative header
      (configured routes, then each registry model's :func:`~neuroread.node.route.rules.default_routes`).
      An unrouted series is recorded with its reason (``routing`` table, series state
      ``unrouted``, a log line); a series routed to a single-series model gets one job per
      (model, slot) in the :class:`~neuroread.node.jobs.store.JobStore` (idempotent: the same instances never
      make two jobs); a series routed to a slot of a multi-series model waits for its study;
    * each :class:`~neuroread.node.assemble.assembler.CompleteStudy` fills the slots of every multi-series model
      from the study's series and enqueues one job per (study, model) (rules below);
    * with ``queue.backend: embedded`` (the default) a :class:`~neuroread.node.jobs.store.WorkerPool` runs each job: :func:`~neuroread.node.infer.runner.load_series` for
      every slot, :meth:`ModelRunner.run` on {slot: volume}, :func:`~neuroread.node.encode.encode_result`
      with every slot's sources, :func:`~neuroread.node.encode.dciodvfy` on every object (one error: the
      job fails, nothing is sent), then :meth:`Outbox.add` to the destinations its routes name
      (the union over its slots, in slot order; every configured destination when none names
      any) and an ``outbox`` audit event (every slot's series → model, version, weights →
      outputs → destinations);
    * with ``queue.backend: celery`` the node runs no model: a :class:`~neuroread.node.jobs.Publisher`
      publishes each claimable job's id to Redis and sweeps (expired leases recovered, lost
      messages published again), and ``neuroread worker`` processes run the jobs
      (:mod:`neuroread.node.app.distributed`, :mod:`neuroread.node.jobs.dispatch`);
    * a :class:`~neuroread.node.deliver.Deliverer` thread sends the outbox;
    * with ``config.dicomweb`` set, a :class:`~neuroread.node.receive.stow.StowReceiver` takes STOW-RS pushes into
      the same spool (:attr:`Node.stow_port`; ``web_port`` overrides the configured port).

    ``listen=False`` (the Orthanc plugin): no DIMSE or STOW-RS listener and no assembler; the
    caller decides when a series or study is complete and calls :meth:`Node.route_series` /
    :meth:`Node.route_study` itself (:class:`neuroread.node.intake.orthanc.OrthancIntake` does, from
    Orthanc's change log). ``extra_destinations`` join the configured ones (the plugin's
    in-process Orthanc destination).

    Restart: the embedded queue has one node process per database, so at start-up every job
    left ``running`` belonged to a dead process and is put back to ``queued`` at once (with the
    celery backend, running jobs belong to workers elsewhere: only expired leases are recovered)
    (:meth:`JobStore.recover` with a time past any lease); the spool is rescanned so series
    and studies received before a kill are assembled again: inputs that already had a job (with
    any weights) keep that job, not re-run; only inputs without one get a new job. New weights
    or thresholds therefore apply to what arrives after them (send a study again to have it
    processed with them), not to the whole spool at the next restart.

Multi-series models (a spec with several input slots, e.g. T1 + STIR) get one job per study
and model; which series fills which slot, and what happens when one is missing or arrives
late, is :mod:`neuroread.node.route.study_slots`. An incomplete study is recorded in the ``study_routing`` table
(:meth:`Node.study_routing`).

Weights and thresholds: one :class:`~neuroread.models.weights.WeightsCatalog` per node
(:func:`make_catalog`) says which weights each model runs with (configured file, else its
demo weights) and its effective thresholds (configured overrides, else the card's operating
points); the :class:`~neuroread.node.infer.runner.ModelRunner` of each worker applies them, so
the findings' ``present`` flags, the SR and the report page carry the thresholds that decided.
Their identity (weights SHA-256 and thresholds) is part of each job's key and of its results'
UIDs: new weights make new jobs and new objects, the same weights find the job already done.
A model switched off (``models: {name: {enabled: false}}``) is not routed to; a model without
weights gets no job: its series are recorded ``skipped`` with the reason (``neuroread jobs
unrouted``), once per series rather than a failed job per series.

The same route → infer → encode → validate path on files, without a network, is
:func:`neuroread.node.app.offline.run_files` (``neuroread run``); both use the building blocks of
:mod:`.build` (:func:`build_routes`, :func:`make_runner`, :func:`decide`) and :mod:`.job`
(:func:`process_inputs`; the job function :func:`run_job`, which the workers call).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import sqlalchemy as sa
from kombu.utils.url import maybe_sanitize_url

from neuroread.models import ModelRegistry
from neuroread.node.assemble import Assembler, CompleteSeries, CompleteStudy, read_header_or_none, series_consensus
from neuroread.node.config import Config
from neuroread.node.deliver import Backoff, Deliverer, Destination, Outbox
from neuroread.node.encode import find_dciodvfy
from neuroread.node.infer import ModelRunner
from neuroread.node.jobs import Job, JobOutcome, JobStore, Publisher, WorkerPool, make_celery
from neuroread.node.malformed import MAX_SEQUENCE_DEPTH, PARSE_ERRORS, sequence_too_deep
from neuroread.node.receive import Peer, StorageSCP, StowReceiver
from neuroread.node.redact import describe_error, redact
from neuroread.node.redact import install as install_log_redaction
from neuroread.node.route import Candidate, fill_slots
from neuroread.node.schema import utc_now
from neuroread.node.spool import InstanceRecord, Quarantine, SeriesStudyConflictError, Spool, validate_uid
from neuroread.node.status import NodeMetrics, StatusServer

from .build import (
    build_destinations,
    build_routes,
    decide,
    encode_info,
    make_catalog,
    make_runner,
    multi_series_specs,
    server_ssl_context,
)
from .job import JobContext, run_job
from .routing import RoutingRecords

logger = logging.getLogger(__name__)

# -- the node -------------------------------------------------------------------------------------
class _Unusable(ValueError):
    """A spool file that is readable but cannot be assembled; the message says why (no values)."""


class Node:
    """The whole node (see the module docstring). ``start``/``stop`` or a ``with`` block.

    ``tick_s``: how often the assembler is ticked; ``poll_s``: how often idle workers look for
    jobs; ``deliver_interval_s``: how often the outbox is tried without a wake-up (default:
    ``config.deliver.interval_s``; retries follow ``config.deliver``'s back-off); ``lease_s``:
    a running job's lease (default ``config.queue.lease_s``); ``port``: overrides ``config.node.port`` (0: a free port, see
    :attr:`port`); ``web_port``: overrides ``config.dicomweb.port`` of the STOW-RS receiver
    (built when ``config.dicomweb`` is set; 0: a free port, see :attr:`stow_port`); ``status_port``
    overrides ``config.status.port`` of the status page and ``/metrics`` (:attr:`status`, built
    when ``config.status`` is set; :attr:`metrics` counts in any case).
    """

    def __init__(self, config: Config, registry: ModelRegistry, *, tick_s: float = 1.0, poll_s: float = 0.5,
                 deliver_interval_s: float | None = None, lease_s: float | None = None, port: int | None = None,
                 listen: bool = True, extra_destinations: Sequence[Destination] = (),
                 web_port: int | None = None, status_port: int | None = None) -> None:
        if not isinstance(config, Config):
            raise ValueError(f"Node.config must be a Config, got {type(config).__name__}")
        if not isinstance(registry, ModelRegistry):
            raise ValueError(f"Node.registry must be a ModelRegistry, got {type(registry).__name__}")
        lease_s = config.queue.lease_s if lease_s is None else lease_s
        for name, value in (("tick_s", tick_s), ("poll_s", poll_s), ("lease_s", lease_s),
                            *((("deliver_interval_s", deliver_interval_s),) if deliver_interval_s is not None else ())):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"Node.{name} must be a positive number, got {value!r}")
        config.check_models({n: registry.spec(n) for n in registry.names()})
        install_log_redaction()  # no element value of an input in the log (neuroread.node.redact)
        self.config, self.registry = config, registry
        self.tick_s, self.lease_s = float(tick_s), float(lease_s)
        self.routes = build_routes(config, registry)
        self.catalog = make_catalog(config, registry)
        self.destinations = build_destinations(config) + list(extra_destinations)
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"Node destinations: names must be unique, got {names}")
        self.listen = bool(listen)
        self.info = encode_info(config)
        self.dciodvfy = find_dciodvfy()
        Path(config.storage.root).mkdir(parents=True, exist_ok=True)  # the default database lives there
        self.store = JobStore(config.queue.database, max_attempts=config.queue.max_attempts,
                              backoff_s=config.queue.retry_s)
        self.records = RoutingRecords(self.store.engine)
        d = config.deliver
        self.outbox = Outbox(self.store.engine, config.storage.outbox, self.destinations,
                             backoff=Backoff(d.retry_base_s, d.retry_cap_s, d.retry_factor))
        interval = d.interval_s if deliver_interval_s is None else deliver_interval_s
        if config.queue.backend == "celery":
            # Workers elsewhere fill the outbox and cannot wake this node's deliverer: it looks
            # at least every second (one indexed query) so results do not wait for the interval.
            interval = min(interval, 1.0)
        self.deliverer = Deliverer(self.outbox, interval=interval)
        self.metrics = NodeMetrics(self.store.engine, models=registry.names())
        self.status: StatusServer | None = None
        if config.status is not None:
            status = config.status if status_port is None else dataclasses.replace(config.status, port=status_port)
            self.status = StatusServer(status, self.store.engine, outbox_folder=config.storage.outbox,
                                       metrics=self.metrics, node_name=config.node.ae_title)
        self.assembler = Assembler(self._on_complete, quiet_s=config.assemble.stable_age_s,
                                   study_quiet_s=config.assemble.study_quiet_s,
                                   early=config.assemble.early_completion, store=self.store)
        # Without listeners (inside Orthanc) completeness comes from outside: the intake calls
        # route_series / route_study itself, so the assembler never sees the spool.
        self.spool = Spool(config.storage.spool, on_stored=self._on_stored if self.listen else None)
        self.quarantine = Quarantine(config.storage.quarantine)
        n = config.node
        peers = [Peer(p.ae_title, p.address) for p in n.peers] or None
        self.scp = StorageSCP(self.spool, ae_title=n.ae_title, host=n.host, port=n.port if port is None else port,
                              peers=peers,
                              require_called_ae=n.require_called_ae, max_associations=n.max_associations,
                              ssl_context=None if n.tls is None else server_ssl_context(n.tls))
        web = config.dicomweb
        self.stow: StowReceiver | None = None
        if web is not None and self.listen:
            web = web if web_port is None else dataclasses.replace(web, port=web_port)
            self.stow = StowReceiver(self.spool, web,
                                     ssl_context=None if web.tls is None else server_ssl_context(web.tls))
        self._runners = threading.local()
        # Series handed to the assembler by the start-up rescan, and the inputs of every job made
        # before the restart: a rescanned series whose inputs already had a job keeps it rather
        # than being processed again because the weights or thresholds changed meanwhile.
        self._rescanned: set[str] = set()  # series UIDs
        self._rescanned_studies: set[str] = set()
        self._known_inputs: dict[str, int] = {}
        q = config.queue
        self.distributed = q.backend == "celery"
        self.pool: WorkerPool | None = None
        self.publisher: Publisher | None = None
        if self.distributed:
            self.publisher = Publisher(make_celery(q), self.store, sweep_s=q.sweep_s, republish_s=q.republish_s)
        else:
            self.pool = WorkerPool(self.store, self._run_job, n_workers=q.workers, poll_s=poll_s,
                                   lease_s=lease_s, name="neuroread-worker")
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._started = False

    # -- life cycle ---------------------------------------------------------------------------------
    @property
    def multi_series(self) -> bool:
        """Whether a registered model takes several series of a study (then studies are routed too)."""
        return bool(multi_series_specs(self.registry))

    @property
    def port(self) -> int:
        """The port the SCP listens on (the one picked when the configuration says 0)."""
        return self.scp.port

    @property
    def stow_port(self) -> int | None:
        """The port the STOW-RS receiver listens on (None without ``config.dicomweb``)."""
        return None if self.stow is None else self.stow.port

    def start(self) -> "Node":
        if self._started:
            raise RuntimeError("Node is already started")
        if self.pool is not None:
            # embedded queue: one node process per database, so a job still running belongs to a dead one
            leases = [j.lease_expires for j in self.store.list("running") if j.lease_expires is not None]
            recovered = self.store.recover(now=max([utc_now(), *leases]) + timedelta(seconds=1))
            if recovered:
                logger.info("recovered %d jobs left running by a previous run: %s", len(recovered), recovered)
        self.spool.remove_stale_temp_files()
        self._log_models()
        if self.listen:
            self._rescan_spool()
        self.deliverer.start()
        if self.pool is not None:
            self.pool.start()
        if self.publisher is not None:
            self.publisher.start()
            logger.info("queue: celery on %s; jobs run in `neuroread worker` processes",
                        maybe_sanitize_url(self.config.queue.broker))
        if self.status is not None:
            self.status.start()
            logger.info("status page at %s, Prometheus metrics at %s/metrics", self.status.url, self.status.url)
        self._stop.clear()
        self._started = True
        if not self.listen:
            logger.info("node %s started without listeners (series come from its intake)", self.config.node.ae_title)
            return self
        self._ticker = threading.Thread(target=self._tick_loop, name="neuroread-assemble", daemon=True)
        self._ticker.start()
        self.scp.start()
        if self.stow is not None:
            self.stow.start()
        logger.info("node %s listening on %s:%d", self.config.node.ae_title, self.config.node.host, self.port)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop listening, let running jobs finish (up to ``timeout`` seconds: a job still
        running then is left ``running`` and recovered at the next start), stop delivering."""
        if self.status is not None:
            self.status.stop()
        if self.stow is not None:
            self.stow.stop()
        if self.listen:
            self.scp.stop()
        self._started = False
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(30)
            self._ticker = None
        if self.pool is not None:
            self.pool.stop(timeout)
        if self.publisher is not None:
            self.publisher.stop()
        self.deliverer.stop()
        self.store.close()

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _on_stored(self, record: InstanceRecord) -> None:
        """An instance received (new or again): its series and study are no longer only the start-up
        rescan's, so they are routed as any arrival is (a study sent again is processed again
        with the current weights), then the assembler gets it."""
        self.metrics.instance_received(record.outcome)
        self._rescanned.discard(record.series_uid)
        self._rescanned_studies.discard(record.study_uid)
        self.assembler.add(record)

    def _log_models(self) -> None:
        """One line per model: switched off, or the weights it runs with, or why it has none."""
        disabled = self.config.disabled_models()
        for name in self.registry.names():
            if name in disabled:
                logger.info("model %s: switched off (models.%s.enabled: false)", name, name)
                continue
            ok, what = self.catalog.status(name)
            (logger.info if ok else logger.warning)("model %s: %s", name, what if ok else
                                                    f"{what}; its series will be recorded as skipped")

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.assembler.tick()
            except (OSError, sa.exc.SQLAlchemyError) as exc:
                logger.error("assemble tick: %s", describe_error(exc))
            except Exception as exc:  # noqa: BLE001 -- last resort, as the queue's workers have
                # A bug reached here (every expected failure is handled per series): the thread
                # must not die with it, or no series would ever be routed again.
                logger.exception("assemble tick: unexpected %s", type(exc).__name__)

    def _rescan_spool(self) -> None:
        """Give the assembler every instance already in the spool (series received before a restart).

        Start-up never fails because of what is in the spool: a file that cannot be assembled
        (unreadable, sequences nested past the limit, UIDs that do not match its place in the
        spool, a series already held under another study) is moved to the quarantine with its
        reason (:mod:`neuroread.node.spool.quarantine`, ``neuroread quarantine list``) and the rescan goes on.
        """
        count, quarantined = 0, 0
        root = Path(self.config.storage.spool)
        self._known_inputs = self.store.inputs_index()
        for path in sorted(root.glob("*/*/*.dcm")):
            try:
                record = self._spooled_record(path)
                self.spool.check_series(record.study_uid, record.series_uid)
                self._rescanned.add(record.series_uid)
                self._rescanned_studies.add(record.study_uid)
                self.assembler.add(record)
            except PARSE_ERRORS + (SeriesStudyConflictError, AttributeError) as exc:
                if isinstance(exc, OSError) and not path.exists():
                    continue  # removed while we looked: nothing to keep
                reason = (str(exc) if isinstance(exc, (SeriesStudyConflictError, _Unusable))
                          else f"cannot be read: {describe_error(exc)}")
                try:
                    self.quarantine.put(path, reason, base=root, stage="spool rescan")
                    quarantined += 1
                except OSError as move_error:
                    logger.error("spool rescan: %s cannot be used (%s) nor moved to the quarantine (%s); "
                                 "left in place", path.relative_to(root), reason, describe_error(move_error))
                continue
            count += 1
        if quarantined:
            self.spool.reindex()
            logger.warning("spool rescan: %d files moved to the quarantine %s (neuroread quarantine list)",
                           quarantined, self.quarantine.root)
        if count:
            logger.info("spool rescan: %d instances handed to the assembler", count)

    def _enqueue(self, spec, inputs: dict[str, str], instances: dict[str, Any], *, rescanned: bool,
                 ready: bool = True) -> Job:
        """Enqueue a job with the model's current weights identity; for series from the start-up
        rescan, the job already made for the same inputs (with any weights) instead, so a restart
        after new weights does not process the whole spool again (send a study again to have it
        processed with the new weights)."""
        from neuroread.node.jobs import job_key

        if rescanned:
            earlier = self._known_inputs.get(job_key(spec.name, spec.version, inputs, instances))
            if earlier is not None:
                return self.store.get(earlier)
        job = self.store.enqueue(spec.name, spec.version, inputs, instances, ready=ready,
                                 identity=self.catalog.identity(spec.name))
        if ready:
            self._dispatch(job)
        return job

    def _dispatch(self, job: Job) -> None:
        """With the celery backend, publish a job that just became claimable (a job that existed
        already was published then; the sweeper covers a message lost since)."""
        if self.publisher is not None and job.state == "queued":
            self.publisher.publish(job.id)

    @staticmethod
    def _spooled_record(path: Path) -> InstanceRecord:
        """The record of one spool file, checked as the SCP checks what it receives; raises
        :class:`_Unusable` (or a parse error) for a file that cannot be assembled."""
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if sequence_too_deep(ds):
            raise _Unusable(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")
        found = {}
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            value = ds.get(keyword)
            if not value:
                raise _Unusable(f"{keyword} is missing")
            found[keyword] = validate_uid(str(value), keyword)
        expected = (path.parent.parent.name, path.parent.name, path.stem)
        if (found["StudyInstanceUID"], found["SeriesInstanceUID"], found["SOPInstanceUID"]) != expected:
            raise _Unusable("its Study/Series/SOP Instance UIDs do not match its place in the spool")
        return InstanceRecord(found["StudyInstanceUID"], found["SeriesInstanceUID"], found["SOPInstanceUID"],
                              found["SOPClassUID"], str(ds.file_meta.TransferSyntaxUID), path,
                              path.stat().st_size, utc_now(), "duplicate", header=ds)  # read once

    # -- routing ------------------------------------------------------------------------------------
    def _on_complete(self, item: object) -> None:
        if isinstance(item, CompleteStudy):
            try:
                self.route_study(item)
            except PARSE_ERRORS + (sa.exc.SQLAlchemyError,) as exc:
                logger.error("study %s: slot filling failed: %s", item.study_uid, describe_error(exc))
            return
        if not isinstance(item, CompleteSeries):
            return
        try:
            self.route_series(item)
        except PARSE_ERRORS + (sa.exc.SQLAlchemyError,) as exc:
            logger.error("series %s: routing failed: %s", item.series_uid, describe_error(exc))
            self._record_routing(item, "unrouted", f"routing failed: {describe_error(exc)}")

    def _header(self, series: CompleteSeries) -> pydicom.Dataset:
        """The header routing reads for ``series``: the value most of its readable instances carry
        for each attribute. Raises :class:`_Unusable` when its instances disagree on Modality or
        SOP class, or none is readable."""
        consensus = series_consensus(read_header_or_none(series.instances[uid]) for uid in sorted(series.instances))
        if consensus.problem:
            raise _Unusable(consensus.problem)
        if consensus.unreadable:
            logger.warning("series %s: %d of %d instance headers unreadable; routed on the others",
                           series.series_uid, consensus.unreadable, len(series.instances))
        return consensus.header

    def route_series(self, series: CompleteSeries) -> list[Job]:
        """Route a complete series and enqueue its single-series jobs (the assembler's
        ``on_complete``); slots of multi-series models are filled by :meth:`route_study`."""
        try:
            decision, single, multi = decide(self._header(series), len(series.instances), self.routes, self.registry)
        except _Unusable as exc:
            single, multi, reason = [], [], f"cannot route: {exc}"
        except PARSE_ERRORS as exc:
            # One series that cannot be routed must not stop the node: record why, go on.
            single, multi, reason = [], [], f"cannot route: {describe_error(exc)}"
        else:
            reason = decision.reason
        if not single and not multi:
            off = sorted(self.config.disabled_models())
            if off:
                reason += f" (switched off: {', '.join(off)})"
            logger.warning("series %s unrouted (%d instances): %s", series.series_uid, len(series.instances),
                           redact(reason))
            self._record_routing(series, "unrouted", reason)
            return []
        jobs, notes, skipped = [], [], []
        for route in single:
            ok, why = self.catalog.status(route.model)
            if not ok:
                skipped.append(f"{route.name} → {route.model} skipped: {why}")
                continue
            spec = self.registry.spec(route.model)
            job = self._enqueue(spec, {route.slot: series.series_uid}, {route.slot: series.sop_instance_uids},
                                rescanned=series.series_uid in self._rescanned)
            jobs.append(job)
            notes.append(f"{route.name} → job {job.id}")
            logger.info("series %s → %s/%s: job %d (%s)", series.series_uid, route.model, route.slot, job.id, job.state)
        for route in multi:
            notes.append(f"{route.name} → slot {route.slot} of {route.model}, filled when study {series.study_uid} "
                         "is complete (see its study routing)")
            logger.info("series %s → %s/%s: waits for study %s", series.series_uid, route.model, route.slot,
                        series.study_uid)
        if skipped:
            logger.warning("series %s: %s", series.series_uid, "; ".join(skipped))
        self._rescanned.discard(series.series_uid)
        self._record_routing(series, "routed" if notes else "skipped", ", ".join(notes + skipped))
        return jobs

    def route_study(self, study: CompleteStudy) -> list[Job]:
        """Fill the slots of each multi-series model from a complete study's series and enqueue
        one job per model whose slots are all filled (rules in the module docstring); record
        the others ``incomplete`` with the missing slots. Returns the jobs (new or existing)."""
        specs = multi_series_specs(self.registry)
        if not specs:
            return []
        members = {s.series_uid: s for s in study.series}
        candidates = []
        for series in study.series:
            try:
                header = self._header(series)
                _, _, multi = decide(header, len(series.instances), self.routes, self.registry)
                candidates += [Candidate.of(series.series_uid, r, header, len(series.instances)) for r in multi]
            except PARSE_ERRORS as exc:  # route_series recorded it unrouted
                logger.warning("study %s: series %s left out of slot filling: %s", study.study_uid,
                               series.series_uid, describe_error(exc))
        jobs = []
        rescanned = study.study_uid in self._rescanned_studies
        for spec in specs:
            filling = fill_slots(spec, candidates)
            if not filling.chosen:
                continue
            if filling.missing:
                logger.warning("study %s incomplete for %s: %s", study.study_uid, spec.name, filling.describe())
                self._record_study(study.study_uid, spec.name, "incomplete", filling.describe(), None)
                continue
            ok, why = self.catalog.status(spec.name)
            if not ok:
                logger.warning("study %s: %s skipped: %s", study.study_uid, spec.name, why)
                self._record_study(study.study_uid, spec.name, "skipped", why, None)
                continue
            job = self._enqueue(spec, {slot: c.series_uid for slot, c in filling.chosen.items()},
                                {slot: members[c.series_uid].sop_instance_uids for slot, c in filling.chosen.items()},
                                rescanned=rescanned, ready=False)
            if job.state == "received":  # new (or left unreleased by a node killed here): audit, then release
                self.store.audit(job.id, "slots", filling.audit(study.study_uid))
                job = self.store.release(job.id)
                self._dispatch(job)
            jobs.append(job)
            self._record_study(study.study_uid, spec.name, "routed", f"job {job.id}: {filling.describe()}", job.id)
            logger.info("study %s → %s: job %d (%s)", study.study_uid, spec.name, job.id, job.state)
        self._rescanned_studies.discard(study.study_uid)
        return jobs

    def _record_routing(self, series: CompleteSeries, state: str, reason: str) -> None:
        self.records.record_series(series.series_uid, series.study_uid, state, reason)
        row = self.store.series(series.series_uid)
        if row is not None and state == "unrouted":
            self.store.record_series(row["study_uid"], series.series_uid, row["instances"], row["first_received"],
                                     row["last_received"], "unrouted")

    def routing(self, series_uid: str) -> dict[str, Any] | None:
        """The routing record of a series: state (routed/unrouted) and reason; None if not seen."""
        return self.records.series(series_uid)

    def _record_study(self, study_uid: str, model: str, state: str, reason: str, job_id: int | None) -> None:
        self.records.record_study(study_uid, model, state, reason, job_id)

    def study_routing(self, study_uid: str) -> dict[str, dict[str, Any]]:
        """Per multi-series model, the study's last slot filling: state (routed/incomplete),
        reason (each slot's series, or what is missing) and job id; empty if none was made."""
        return self.records.study(study_uid)

    # -- jobs ---------------------------------------------------------------------------------------
    def _runner(self) -> ModelRunner:
        runner = getattr(self._runners, "runner", None)
        if runner is None:
            runner = self._runners.runner = make_runner(self.config, self.registry, self.catalog)
        return runner

    def _run_job(self, job: Job) -> JobOutcome:
        """The job function (:func:`~neuroread.node.app.job.run_job`) with this node's parts; the
        model runner is per worker thread."""
        return run_job(job, JobContext(self.registry, self.routes, [d.name for d in self.destinations], self.store,
                                       self.spool, self.outbox, self._runner(), self.info, self.dciodvfy,
                                       on_outbox=self.deliverer.wake))
