"""The pipeline on files, no network (``neuroread run``): route → infer → encode → validate →
a folder, with the node's own building blocks (:mod:`neuroread.node.app.node`).

Single-series models run per series, multi-series models per study with the node's slot rules
(:mod:`neuroread.node.route.study_slots`; an incomplete study is logged and skipped).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from neuroread.models import ModelRegistry
from neuroread.node.assemble import series_consensus
from neuroread.node.config import Config
from neuroread.node.encode import find_dciodvfy
from neuroread.node.route import Candidate, fill_slots

from .build import build_routes, decide, encode_info, make_runner, multi_series_specs
from .job import PipelineError, Processed, process_inputs

logger = logging.getLogger(__name__)


def _series_files(paths: Iterable[Path]) -> dict[str, tuple[pydicom.Dataset, list[Path]]]:
    """Series UID → (the header routing reads, its files), from files or folders; the header is
    the series' consensus (:func:`neuroread.node.assemble.consensus.series_consensus`), or its first instance by
    InstanceNumber when its instances disagree on Modality or SOP class."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    series: dict[str, list[tuple[pydicom.Dataset, Path]]] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            uid = str(ds.SeriesInstanceUID)
        except (OSError, InvalidDicomError, AttributeError):
            logger.debug("skipping %s: not a DICOM instance", f)
            continue
        series.setdefault(uid, []).append((ds, f))
    out = {}
    for uid, items in series.items():
        items.sort(key=lambda t: int(t[0].get("InstanceNumber", 0) or 0))
        unique = {str(ds.SOPInstanceUID): f for ds, f in items}
        by_uid = {str(ds.SOPInstanceUID): ds for ds, _ in items}
        consensus = series_consensus(by_uid[k] for k in sorted(by_uid))  # routing reads what most agree on
        out[uid] = (consensus.header if not consensus.problem else items[0][0], list(unique.values()))
    return out


def _write(objects: Iterable[pydicom.Dataset], out_dir: Path) -> list[Path]:
    written = []
    for ds in objects:
        target = Path(out_dir) / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def process_files(paths: Iterable[Path], config: Config, registry: ModelRegistry) -> Iterator[tuple[str, str, Processed]]:
    """Route, infer, encode and validate every series under ``paths`` (single-series models) and
    every study (multi-series models, slots filled as in the module docstring); yield (what ran:
    ``series <uid>`` or ``study <uid>``, the model, its :class:`Processed`: result and objects).

    A series that is unrouted or unusable, or a study missing a slot, is logged (with the
    reason) and skipped.
    """
    config.check_models({n: registry.spec(n) for n in registry.names()})
    routes = build_routes(config, registry)
    runner, info, dciodvfy = make_runner(config, registry), encode_info(config), find_dciodvfy()
    studies: dict[str, dict[str, tuple[pydicom.Dataset, list[Path]]]] = {}
    for uid, (header, files) in _series_files(paths).items():
        studies.setdefault(str(header.get("StudyInstanceUID", "")), {})[uid] = (header, files)

    def run(model: str, inputs: dict[str, list[Path]], what: str) -> Processed | None:
        try:
            processed = process_inputs(inputs, model, runner, info, dciodvfy)
        except PipelineError as exc:
            logger.error("%s, %s: %s", what, model, exc.reason)
            return None
        for w in processed.withheld:
            logger.warning("%s, %s: source attribute left out of the results: %s", what, model, w)
        return processed

    for study_uid, series in sorted(studies.items()):
        candidates = []
        for uid, (header, files) in sorted(series.items()):
            decision, single, multi = decide(header, len(files), routes, registry)
            if not decision.routed:
                logger.warning("series %s unrouted: %s", uid, decision.reason)
            for route in single:
                if (done := run(route.model, {route.slot: files}, f"series {uid}")) is not None:
                    yield f"series {uid}", route.model, done
            candidates += [Candidate.of(uid, route, header, len(files)) for route in multi]
        for spec in multi_series_specs(registry):
            filling = fill_slots(spec, candidates)
            if filling.missing:
                if filling.chosen:
                    logger.warning("study %s incomplete, skipped: %s", study_uid, filling.describe())
                continue
            logger.info("study %s: %s", study_uid, filling.describe())
            inputs = {slot: series[c.series_uid][1] for slot, c in filling.chosen.items()}
            if (done := run(spec.name, inputs, f"study {study_uid}")) is not None:
                yield f"study {study_uid}", spec.name, done


def run_files(paths: Iterable[Path], out_dir: Path, config: Config, registry: ModelRegistry) -> list[Path]:
    """:func:`process_files`, with the results written to
    ``out_dir/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``; the files written."""
    written: list[Path] = []
    for what, model, processed in process_files(paths, config, registry):
        written.extend(_write(processed.objects, out_dir))
        logger.info("%s → %s: %d objects written", what, model, len(processed.objects))
    return written
