"""The node: every stage wired together (receive → spool → assemble → route → queue → infer →
encode → validate → outbox → deliver), and the same pipeline on files with no network.

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
    * a :class:`~neuroread.node.jobs.store.WorkerPool` runs each job: :func:`~neuroread.node.infer.runner.load_series` for
      every slot, :meth:`ModelRunner.run` on {slot: volume}, :func:`~neuroread.node.encode.encode_result`
      with every slot's sources, :func:`~neuroread.node.encode.validate` on every object (one error: the
      job fails, nothing is sent), then :meth:`Outbox.add` to the destinations its routes name
      (the union over its slots, in slot order; every configured destination when none names
      any) and an ``outbox`` audit event (every slot's series → model, version, weights →
      outputs → destinations);
    * a :class:`~neuroread.node.deliver.Deliverer` thread sends the outbox;
    * with ``config.dicomweb`` set, a :class:`~neuroread.node.receive.stow.StowReceiver` takes STOW-RS pushes into
      the same spool (:attr:`Node.stow_port`; ``web_port`` overrides the configured port).

    ``listen=False`` (the Orthanc plugin): no DIMSE or STOW-RS listener and no assembler; the
    caller decides when a series or study is complete and calls :meth:`Node.route_series` /
    :meth:`Node.route_study` itself (:class:`neuroread.node.intake.orthanc.OrthancIntake` does, from
    Orthanc's change log). ``extra_destinations`` join the configured ones (the plugin's
    in-process Orthanc destination).

    Restart: the embedded queue has one node process per database, so at start-up every job
    left ``running`` belonged to a dead process and is put back to ``queued`` at once
    (:meth:`JobStore.recover` with a time past any lease); the spool is rescanned so series
    and studies received before a kill are assembled again (a done job is found by its key,
    not re-run).

Multi-series models (a spec with several input slots, e.g. T1 + STIR) get one job per study
and model; which series fills which slot, and what happens when one is missing or arrives
late, is :mod:`neuroread.node.route.study_slots`. An incomplete study is recorded in the ``study_routing`` table
(:meth:`Node.study_routing`).

Threshold overrides (``models: {name: {thresholds: {label: t}}}``) are applied by the
:class:`~neuroread.node.infer.runner.ModelRunner` (:func:`make_runner`); results are encoded with its spec, so
the findings' ``present`` flags, the SR and the report page carry the configured thresholds.

The same route → infer → encode → validate path on files, without a network, is
:func:`neuroread.node.app.run_files.run_files` (``neuroread run``); it shares this module's building blocks
(:func:`build_routes`, :func:`make_runner`, :func:`decide`, :func:`process_inputs`).
"""
from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
import sqlalchemy as sa

from neuroread.models import ModelRegistry, ModelResult, ModelSpec

from neuroread.node.assemble.assembler import Assembler, CompleteSeries, CompleteStudy
from neuroread.node.config import Config, TLSConfig
from neuroread.node.deliver import Backoff, Deliverer, Outbox, destination_from_dict
from neuroread.node.deliver.destinations import Destination
from neuroread.node.encode import EncodeInfo, encode_result, find_dciodvfy, validate
from neuroread.node.encode.tolerant import Withheld, fill_series_level, withhold_invalid_all
from neuroread.node.infer.runner import ModelRunner, SeriesError, load_series
from neuroread.node.jobs.store import Job, JobError, JobOutcome, JobStore, WorkerPool, utc_now
from neuroread.node.spool.quarantine import Quarantine
from neuroread.node.malformed import MAX_SEQUENCE_DEPTH, PARSE_ERRORS, sequence_too_deep
from neuroread.node.receive.dimse import Peer, StorageSCP
from neuroread.node.redact import describe_error, redact
from neuroread.node.redact import install as install_log_redaction
from neuroread.node.assemble.consensus import read_header_or_none, series_consensus
from neuroread.node.route.rules import Route, RouteDecision, default_routes, load_routes, match_series
from neuroread.node.route.study_slots import Candidate, fill_slots
from neuroread.node.spool.store import InstanceRecord, SeriesStudyConflictError, Spool, validate_uid
from neuroread.node.receive.stow import StowReceiver

logger = logging.getLogger(__name__)

_routing_metadata = sa.MetaData()
routing_table = sa.Table(
    "routing", _routing_metadata,
    sa.Column("series_uid", sa.String(64), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # routed | unrouted
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
study_routing_table = sa.Table(
    "study_routing", _routing_metadata,
    sa.Column("study_uid", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # routed (job_id set) | incomplete
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("job_id", sa.Integer, nullable=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


def routing_records(engine: sa.Engine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What did not become a job, newest first: series recorded ``unrouted`` and (study, model)
    pairs recorded ``incomplete``, each with its reason (``neuroread jobs unrouted``)."""
    if not sa.inspect(engine).has_table(routing_table.name):
        return [], []  # a database the node has not run on yet
    with engine.connect() as conn:
        series = conn.execute(routing_table.select().where(routing_table.c.state == "unrouted")
                              .order_by(routing_table.c.at.desc())).mappings().all()
        studies = conn.execute(study_routing_table.select().where(study_routing_table.c.state == "incomplete")
                               .order_by(study_routing_table.c.at.desc())).mappings().all()
    return [dict(r) for r in series], [dict(r) for r in studies]


class PipelineError(Exception):
    """One job that could not go through the pipeline; the message says why (UIDs, no names)."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


# -- routing and slot filling, shared by the node and run_files --------------------------------------
def build_routes(config: Config, registry: ModelRegistry) -> tuple[Route, ...]:
    """Configured routes first (checked against the registry and destinations), then each
    registry model's default routes (sorted by priority in :func:`match_series`)."""
    specs = {name: registry.spec(name) for name in registry.names()}
    routes = load_routes(list(config.routes), specs, destinations=list(config.destinations))
    for spec in specs.values():
        routes += default_routes(spec)
    return routes


def build_destinations(config: Config) -> list[Destination]:
    """The configured destinations as deliver-stage objects (config keys mapped to theirs)."""
    out = []
    for name, raw in config.destinations.items():
        cfg = {k: v for k, v in raw.items()}
        cfg["name"] = name
        if cfg.get("type") == "dicom":
            if "ae_title" in cfg and "called_ae" not in cfg:  # older configuration key
                cfg["called_ae"] = cfg.pop("ae_title")
            cfg.setdefault("calling_ae", config.node.ae_title)
        elif cfg.get("type") == "folder":
            cfg["path"] = Path(cfg["path"])
        out.append(destination_from_dict(cfg, f"destinations.{name}"))
    return out


def make_runner(config: Config, registry: ModelRegistry) -> ModelRunner:
    """A runner with each configured model's weights, device and threshold overrides."""
    return ModelRunner(registry, weights={n: m.weights for n, m in config.models.items()},
                       device={n: m.device for n, m in config.models.items()},
                       torch_threads=config.queue.torch_threads,
                       thresholds={n: m.thresholds for n, m in config.models.items()})


def decide(header: pydicom.Dataset, instances: int, routes: Iterable[Route],
           registry: ModelRegistry) -> tuple[RouteDecision, list[Route], list[Route]]:
    """The route decision and its assignments split by kind of model: single-series models
    (a job per series) and multi-series ones (slots filled per study)."""
    decision = match_series(header, instances, routes)
    single = [r for r in decision.assignments if len(registry.spec(r.model).slots) == 1]
    multi = [r for r in decision.assignments if len(registry.spec(r.model).slots) > 1]
    return decision, single, multi


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
    spec = runner.spec(model)
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



def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server-side TLS context (DICOM-TLS or HTTPS) from ``tls``; ``ca`` set: peers must
    present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    if tls.ca is not None:
        context.load_verify_locations(tls.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def encode_info(config: Config) -> EncodeInfo:
    return EncodeInfo(device_name=f"neuroread node {config.node.ae_title}")


def multi_series_specs(registry: ModelRegistry) -> list[ModelSpec]:
    return [registry.spec(n) for n in registry.names() if len(registry.spec(n).slots) > 1]


# -- the node -------------------------------------------------------------------------------------
class _Unusable(ValueError):
    """A spool file that is readable but cannot be assembled; the message says why (no values)."""


@dataclass(frozen=True)
class _Inputs:
    study_uid: str
    paths: list[Path]


class Node:
    """The whole node (see the module docstring). ``start``/``stop`` or a ``with`` block.

    ``tick_s``: how often the assembler is ticked; ``poll_s``: how often idle workers look for
    jobs; ``deliver_interval_s``: how often the outbox is tried without a wake-up (default:
    ``config.deliver.interval_s``; retries follow ``config.deliver``'s back-off); ``lease_s``:
    a running job's lease; ``port``: overrides ``config.node.port`` (0: a free port, see
    :attr:`port`); ``web_port``: overrides ``config.dicomweb.port`` of the STOW-RS receiver
    (built when ``config.dicomweb`` is set; 0: a free port, see :attr:`stow_port`).
    """

    def __init__(self, config: Config, registry: ModelRegistry, *, tick_s: float = 1.0, poll_s: float = 0.5,
                 deliver_interval_s: float | None = None, lease_s: float = 60.0, port: int | None = None,
                 listen: bool = True, extra_destinations: Sequence[Destination] = (),
                 web_port: int | None = None) -> None:
        if not isinstance(config, Config):
            raise ValueError(f"Node.config must be a Config, got {type(config).__name__}")
        if not isinstance(registry, ModelRegistry):
            raise ValueError(f"Node.registry must be a ModelRegistry, got {type(registry).__name__}")
        for name, value in (("tick_s", tick_s), ("poll_s", poll_s), ("lease_s", lease_s),
                            *((("deliver_interval_s", deliver_interval_s),) if deliver_interval_s is not None else ())):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"Node.{name} must be a positive number, got {value!r}")
        config.check_models({n: registry.spec(n) for n in registry.names()})
        install_log_redaction()  # no element value of an input in the log (neuroread.node.redact)
        self.config, self.registry = config, registry
        self.tick_s, self.lease_s = float(tick_s), float(lease_s)
        self.routes = build_routes(config, registry)
        self.destinations = build_destinations(config) + list(extra_destinations)
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"Node destinations: names must be unique, got {names}")
        self.listen = bool(listen)
        self.info = encode_info(config)
        self.dciodvfy = find_dciodvfy()
        Path(config.storage.root).mkdir(parents=True, exist_ok=True)  # the default database lives there
        self.store = JobStore(config.queue.database)
        _routing_metadata.create_all(self.store.engine)
        d = config.deliver
        self.outbox = Outbox(self.store.engine, config.storage.outbox, self.destinations,
                             backoff=Backoff(d.retry_base_s, d.retry_cap_s, d.retry_factor))
        self.deliverer = Deliverer(self.outbox, interval=d.interval_s if deliver_interval_s is None else deliver_interval_s)
        self.assembler = Assembler(self._on_complete, quiet_s=config.assemble.stable_age_s,
                                   early=config.assemble.early_completion, store=self.store)
        # Without listeners (inside Orthanc) completeness comes from outside: the intake calls
        # route_series / route_study itself, so the assembler never sees the spool.
        self.spool = Spool(config.storage.spool, on_stored=self.assembler.add if self.listen else None)
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
        self.pool = WorkerPool(self.store, self._run_job, n_workers=config.queue.workers, poll_s=poll_s,
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
        # embedded queue: one node process per database, so a job still running belongs to a dead one
        leases = [j.lease_expires for j in self.store.list("running") if j.lease_expires is not None]
        recovered = self.store.recover(now=max([utc_now(), *leases]) + timedelta(seconds=1))
        if recovered:
            logger.info("recovered %d jobs left running by a previous run: %s", len(recovered), recovered)
        self.spool.remove_stale_temp_files()
        if self.listen:
            self._rescan_spool()
        self.deliverer.start()
        self.pool.start()
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
        if self.stow is not None:
            self.stow.stop()
        if self.listen:
            self.scp.stop()
        self._started = False
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(30)
            self._ticker = None
        self.pool.stop(timeout)
        self.deliverer.stop()
        self.store.close()

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

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
        for path in sorted(root.glob("*/*/*.dcm")):
            try:
                record = self._spooled_record(path)
                self.spool.check_series(record.study_uid, record.series_uid)
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
            logger.warning("series %s unrouted (%d instances): %s", series.series_uid, len(series.instances),
                           redact(reason))
            self._record_routing(series, "unrouted", reason)
            return []
        jobs, notes = [], []
        for route in single:
            spec = self.registry.spec(route.model)
            job = self.store.enqueue(spec.name, spec.version, {route.slot: series.series_uid},
                                     {route.slot: series.sop_instance_uids})
            jobs.append(job)
            notes.append(f"{route.name} → job {job.id}")
            logger.info("series %s → %s/%s: job %d (%s)", series.series_uid, route.model, route.slot, job.id, job.state)
        for route in multi:
            notes.append(f"{route.name} → slot {route.slot} of {route.model}, filled when study {series.study_uid} "
                         "is complete (see its study routing)")
            logger.info("series %s → %s/%s: waits for study %s", series.series_uid, route.model, route.slot,
                        series.study_uid)
        self._record_routing(series, "routed", ", ".join(notes))
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
        for spec in specs:
            filling = fill_slots(spec, candidates)
            if not filling.chosen:
                continue
            if filling.missing:
                logger.warning("study %s incomplete for %s: %s", study.study_uid, spec.name, filling.describe())
                self._record_study(study.study_uid, spec.name, "incomplete", filling.describe(), None)
                continue
            job = self.store.enqueue(spec.name, spec.version,
                                     {slot: c.series_uid for slot, c in filling.chosen.items()},
                                     {slot: members[c.series_uid].sop_instance_uids for slot, c in filling.chosen.items()},
                                     ready=False)
            if job.state == "received":  # new (or left unreleased by a node killed here): audit, then release
                self.store.audit(job.id, "slots", filling.audit(study.study_uid))
                job = self.store.release(job.id)
            jobs.append(job)
            self._record_study(study.study_uid, spec.name, "routed", f"job {job.id}: {filling.describe()}", job.id)
            logger.info("study %s → %s: job %d (%s)", study.study_uid, spec.name, job.id, job.state)
        return jobs

    def _record_routing(self, series: CompleteSeries, state: str, reason: str) -> None:
        values = dict(study_uid=series.study_uid, state=state, reason=reason, at=utc_now())
        with self.store.engine.begin() as conn:
            n = conn.execute(routing_table.update().where(routing_table.c.series_uid == series.series_uid)
                             .values(**values)).rowcount
            if n == 0:
                conn.execute(routing_table.insert().values(series_uid=series.series_uid, **values))
        row = self.store.series(series.series_uid)
        if row is not None and state == "unrouted":
            self.store.record_series(row["study_uid"], series.series_uid, row["instances"], row["first_received"],
                                     row["last_received"], "unrouted")

    def routing(self, series_uid: str) -> dict[str, Any] | None:
        """The routing record of a series: state (routed/unrouted) and reason; None if not seen."""
        with self.store.engine.connect() as conn:
            row = conn.execute(routing_table.select().where(routing_table.c.series_uid == series_uid)).mappings().first()
        return dict(row) if row else None

    def _record_study(self, study_uid: str, model: str, state: str, reason: str, job_id: int | None) -> None:
        values = dict(state=state, reason=reason, job_id=job_id, at=utc_now())
        key = (study_routing_table.c.study_uid == study_uid) & (study_routing_table.c.model == model)
        with self.store.engine.begin() as conn:
            if conn.execute(study_routing_table.update().where(key).values(**values)).rowcount == 0:
                conn.execute(study_routing_table.insert().values(study_uid=study_uid, model=model, **values))

    def study_routing(self, study_uid: str) -> dict[str, dict[str, Any]]:
        """Per multi-series model, the study's last slot filling: state (routed/incomplete),
        reason (each slot's series, or what is missing) and job id; empty if none was made."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(study_routing_table.select()
                                .where(study_routing_table.c.study_uid == study_uid)).mappings().all()
        return {row["model"]: dict(row) for row in rows}

    # -- jobs ---------------------------------------------------------------------------------------
    def _runner(self) -> ModelRunner:
        runner = getattr(self._runners, "runner", None)
        if runner is None:
            runner = self._runners.runner = make_runner(self.config, self.registry)
        return runner

    def _inputs(self, series_uid: str, sop_uids: Sequence[str]) -> _Inputs:
        row = self.store.series(series_uid)
        if row is not None:
            study = row["study_uid"]
        else:
            found = list(Path(self.config.storage.spool).glob(f"*/{series_uid}"))
            if not found:
                raise JobError(f"series {series_uid} is not in the spool")
            study = found[0].parent.name
        paths = [self.spool.path_for(study, series_uid, uid) for uid in sop_uids]
        missing = [p.stem for p in paths if not p.exists()]
        if missing:
            raise JobError(f"series {series_uid}: {len(missing)} instances missing from the spool "
                           f"(e.g. {missing[0]})")
        return _Inputs(study, paths)

    def _run_job(self, job: Job) -> JobOutcome:
        spec = self.registry.spec(job.model)
        if spec.version != job.model_version:
            raise JobError(f"job for {job.model} {job.model_version}, registry has {spec.version}")
        slots = [s.name for s in spec.slots]
        if set(job.inputs) != set(slots):
            raise JobError(f"job {job.id}: inputs for slots {sorted(job.inputs)}, {spec.name} {spec.version} "
                           f"has slots {sorted(slots)}")
        inputs = {slot: self._inputs(job.inputs[slot], job.instances[slot]) for slot in slots}
        studies = sorted({i.study_uid for i in inputs.values()})
        if len(studies) != 1:
            raise JobError(f"job {job.id}: its series come from studies {studies}; one study per job")
        try:
            result, objects, withheld, headers = process_inputs({slot: i.paths for slot, i in inputs.items()},
                                                                spec.name, self._runner(), self.info, self.dciodvfy)
        except PipelineError as exc:
            raise JobError(exc.reason, retryable=exc.retryable) from exc
        if withheld:
            self.store.audit(job.id, "withheld", {"attributes": [w.as_dict() for w in withheld],
                                                  "why": "what the results copy from the sources, changed: values "
                                                         "not valid for their VR left out, series-level values "
                                                         "missing in some instances filled (no value recorded)"})
            logger.warning("job %d: %d source attributes changed in the results: %s", job.id, len(withheld),
                           "; ".join(str(w) for w in withheld))
        names = self._destination_names(job.model, headers, {slot: len(i.paths) for slot, i in inputs.items()})
        output_uids = [str(ds.SOPInstanceUID) for ds in objects]
        added = self.outbox.add(str(job.id), objects, names) if names else 0
        self.store.audit(job.id, "outbox", {
            "inputs": {slot: {"series": job.inputs[slot], "instances": len(job.instances[slot])} for slot in slots},
            "study": studies[0], "model": spec.name, "version": spec.version,
            "weights_sha256": result.card.weights_sha256, "demo_weights": result.card.demo,
            "outputs": output_uids, "destinations": names, "new_rows": added,
        })
        if not names:
            logger.warning("job %d: no destination configured; %d objects kept only in the outbox audit",
                           job.id, len(objects))
        self.deliverer.wake()
        logger.info("job %d: %s %s on %s → %d objects → %s", job.id, spec.name, spec.version,
                    [job.inputs[slot] for slot in slots], len(objects), names)
        return JobOutcome({"sop_instance_uids": output_uids, "destinations": names}, result.card.weights_sha256)

    def _destination_names(self, model: str, headers: Mapping[str, pydicom.Dataset],
                           counts: Mapping[str, int]) -> list[str]:
        """The destinations named by the first route matching each slot's series (its routing
        header and instance count; in slot order, without repeats); every configured
        destination when none names any."""
        names: list[str] = []
        for slot, header in headers.items():
            routes = [r for r in self.routes if r.model == model and r.slot == slot]
            decision = match_series(header, counts[slot], routes)
            for name in decision.matched[0].destinations if decision.matched else ():
                if name not in names:
                    names.append(name)
        return names or [d.name for d in self.destinations]
