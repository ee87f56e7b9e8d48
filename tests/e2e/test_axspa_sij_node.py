"""The two-series model axspa-sij through ``neuroread serve`` and dcmtk ``storescu``: one job per
study once both its T1 and its fat-suppressed series are in, whatever their order; a study
with the T1 alone is recorded incomplete, and its STIR arriving after that makes the job.

One node (tiny axspa-sij weights trained on the session's phantoms, the other models off)
receives three phantom studies: A, its T1 then (2 s later, within the study quiet period) its
STIR; B, its T2 SPAIR then its T1; C, its T1 alone, and once the node has recorded C
incomplete, its STIR.

Each series is complete after :data:`SERIES_QUIET_S` of silence, the study after
:data:`STUDY_QUIET_S` (``assemble.study_quiet_s``); the pause between A's series is longer than
the first and shorter than the second, so A's T1 is a complete series, alone, when its STIR
comes.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
import yaml

from neuroread.models.axspa_sij.model import DIAGNOSIS
from neuroread.node.app.routing import RoutingRecords
from neuroread.training.phantoms.baseline import load_truth
from support.node_checks import RESULT_KINDS, referenced_uids
from support.node_process import ResultSCP, ServeNode, all_sent, storescu, uids, wait_done, wait_for

SERIES_QUIET_S = 1.5
STUDY_QUIET_S = 8.0
PAUSE_S = 4.0  # between a study's two series in scenario 1: the T1 complete, the study not yet
JOB_S = 180


@pytest.fixture(scope="module")
def results():
    scp = ResultSCP().start()
    yield scp
    scp.stop()


def _files(study: Path, truth: dict, slot: str) -> list[Path]:
    return sorted((study / truth["series"][slot]["folder"]).glob("*.dcm"))


def _codes(ds: pydicom.Dataset) -> set[str]:
    """Every CodeValue anywhere in ``ds``."""
    return {str(e.value) for e in ds.iterall() if e.keyword == "CodeValue"}


def _check_results(node: ServeNode, job, series: dict[str, str], results: ResultSCP, study_uid: str, name: str):
    """The job's results all sent and received by the SCP: SR with the diagnosis, KOS, SC, a PM on each series."""
    items = wait_for(lambda: all_sent(node, job.id), 90, f"the results of {name} delivered", node)
    kinds = Counter(RESULT_KINDS.get(i.sop_class_uid, i.sop_class_uid) for i in items)
    # SR (measurement report, text report), KOS, SC (overlays, report page), PM (Grad-CAM: a branch's and the fused)
    assert kinds["SR"] == 2 and kinds["KOS"] == 1 and kinds["SC"] >= 2 and kinds["PM"] == 4, (name, kinds)
    assert set(kinds) == {"SR", "KOS", "SC", "PM"}, (name, kinds)
    assert {i.study_uid for i in items} == {study_uid}, name
    assert {i.sop_instance_uid for i in items} <= set(results.counts(study_uid)), name
    datasets = {i.sop_instance_uid: (RESULT_KINDS[i.sop_class_uid], pydicom.dcmread(i.path)) for i in items}
    srs = [ds for kind, ds in datasets.values() if kind == "SR"]
    classes = {c.code.value for c in DIAGNOSIS.classes}
    assert any(DIAGNOSIS.concept.value in _codes(ds) and _codes(ds) & classes for ds in srs), \
        (name, [sorted(_codes(ds)) for ds in srs])
    both = set(series.values())
    assert any(both <= referenced_uids(ds) for ds in srs), name
    (kos,) = [ds for kind, ds in datasets.values() if kind == "KOS"]
    assert series["t1"] in referenced_uids(kos), name
    # Grad-CAM on the T1's geometry and on the fat-suppressed series' geometry: two PMs on each, each on one series
    on = Counter(tuple(sorted(both & referenced_uids(ds))) for kind, ds in datasets.values() if kind == "PM")
    assert on == {(series["t1"],): 2, (series["fs"],): 2}, (name, on)
    return kinds


@pytest.mark.slow
def test_axspa_sij_one_job_per_study_from_both_series_and_a_late_stir(tmp_path, phantom_sets, axspa_weights,
                                                                      results):
    studies = [(p.parent, load_truth(p.parent)) for p in sorted(phantom_sets["axspa-sij"].glob("*/truth.json"))]
    (a, truth_a), (b, truth_b), (c, truth_c) = studies[:3]
    assert truth_a["fat_suppression"] == "STIR" and truth_c["fat_suppression"] == "STIR", \
        [t["fat_suppression"] for _, t in studies]
    node = ServeNode(tmp_path / "node", destination_port=results.port)
    node.config["models"] = {"ct-hemorrhage": {"enabled": False}, "ms-csvd": {"enabled": False},
                             "cmb-svd": {"enabled": False}, "axspa-sij": {"weights": str(axspa_weights)}}
    node.config["assemble"] = {"stable_age_s": SERIES_QUIET_S, "study_quiet_s": STUDY_QUIET_S}
    node.config_path.write_text(yaml.safe_dump(node.config), encoding="utf-8")

    files = {(name, slot): _files(study, truth, slot)
             for name, (study, truth) in (("A", (a, truth_a)), ("B", (b, truth_b)), ("C", (c, truth_c)))
             for slot in ("t1", "fs")}
    series = {key: uids(paths)[1] for key, paths in files.items()}
    study_uid = {name: uids(files[(name, "t1")])[0] for name in "ABC"}
    assert len(set(study_uid.values())) == 3 and all(uids(files[(n, "fs")])[0] == study_uid[n] for n in "ABC")

    node.start()
    try:
        # 1. both series of a study, one after the other (either order), paused for less than the quiet period
        for name, first, second in (("A", "t1", "fs"), ("B", "fs", "t1")):
            sent = storescu(node.port, files[(name, first)])
            assert sent.returncode == 0, sent.stderr[-2000:]
            time.sleep(PAUSE_S)
            assert not node.jobs_for(series[(name, first)]), (name, node.jobs())  # nothing from one series
            sent = storescu(node.port, files[(name, second)])
            assert sent.returncode == 0, sent.stderr[-2000:]
        # 2. a study with the T1 alone
        sent = storescu(node.port, files[("C", "t1")])
        assert sent.returncode == 0, sent.stderr[-2000:]

        engine = sa.create_engine(node.database)
        try:
            records = RoutingRecords(engine)
            for name in "AB":
                job = wait_done(node, series[(name, "t1")], timeout=JOB_S)
                assert job.model == "axspa-sij", name
                assert job.inputs == {"t1": series[(name, "t1")], "fs": series[(name, "fs")]}, (name, job.inputs)
                assert job.instances == {slot: sorted(uids(files[(name, slot)])[2]) for slot in ("t1", "fs")}, name
                _check_results(node, job, {s: series[(name, s)] for s in ("t1", "fs")}, results, study_uid[name], name)
                record = records.study(study_uid[name])["axspa-sij"]
                assert (record["state"], record["job_id"]) == ("routed", job.id), (name, record)
                for slot in ("t1", "fs"):
                    routed = records.series(series[(name, slot)])
                    assert routed["state"] == "routed" and f"slot {slot} of axspa-sij" in routed["reason"], routed

            record = wait_for(lambda: records.study(study_uid["C"]).get("axspa-sij"), 60,
                              "study C recorded for axspa-sij", node)
            assert record["state"] == "incomplete" and record["job_id"] is None, record
            assert "fs: missing (no series of the study fits it: MR STIR/T2FS)" in record["reason"], record["reason"]
            assert f"t1: series {series[('C', 't1')]}" in record["reason"], record["reason"]
            assert not node.jobs_for(series[("C", "t1")])

            # 3. the STIR arrives after the T1's study had completed: the study reopens, the job is made
            sent = storescu(node.port, files[("C", "fs")])
            assert sent.returncode == 0, sent.stderr[-2000:]
            job = wait_done(node, series[("C", "fs")], timeout=JOB_S)
            assert job.model == "axspa-sij"
            assert job.inputs == {"t1": series[("C", "t1")], "fs": series[("C", "fs")]}, job.inputs
            _check_results(node, job, {s: series[("C", s)] for s in ("t1", "fs")}, results, study_uid["C"], "C")
            record = records.study(study_uid["C"])["axspa-sij"]
            assert (record["state"], record["job_id"]) == ("routed", job.id), record
        finally:
            engine.dispose()
        # A and B completed once, with both series (never recorded incomplete); C once before its STIR came
        log = node.log_text()
        said = {n: log.count(f"study {study_uid[n]} incomplete for axspa-sij") for n in "ABC"}
        assert said == {"A": 0, "B": 0, "C": 1}, (said, node.log_tail())
        # one job per study, each from both of its series, and nothing else
        jobs = node.jobs()
        assert sorted((j.model, j.state, tuple(sorted(j.inputs))) for j in jobs) == \
            [("axspa-sij", "done", ("fs", "t1"))] * 3, jobs
        assert sorted(j.inputs["t1"] for j in jobs) == sorted(series[(n, "t1")] for n in "ABC")
    finally:
        node.stop()
