"""Which models a node runs, with which weights and thresholds, through the whole node: dcmtk
``storescu`` sends phantom series, the test models are plugins (``support.tiny_model``,
``support.tiny_pair_model``) and the ``neuroread`` command reads the same configuration.

- a model switched off (``models: {name: {enabled: false}}``) gets no route and no job;
- a model without weights (a configured file that does not exist, or no demo weights) gets no
  job: its series are recorded ``skipped`` with the reason and ``neuroread jobs unrouted`` lists
  them; nothing fails;
- a job is keyed by the weights and thresholds it runs with: the same series twice makes one
  job, new weights or a new threshold make a new job whose results have new UIDs;
- the fat-suppressed slot of the pair model takes only a series in the T1's Frame of Reference.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

from neuroread.models import ModelRegistry
from neuroread.node.app.node import Node
from neuroread.node.assemble.assembler import CompleteSeries
from neuroread.node.config import load_config
from neuroread.node.tools.dcmtk import DcmtkMissing, dcmtk_tool
from neuroread.training.phantoms.baseline import load_truth
from support.node_checks import neuroread, storescu, wait_for
from support.tiny_model import ENTRY as TINY
from support.tiny_model import write_weights
from support.tiny_pair_model import ENTRY as PAIR

PLUGIN = "support.tiny_model:ENTRY"


@pytest.fixture(scope="module", autouse=True)
def _tools():
    try:
        dcmtk_tool("storescu")
    except DcmtkMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def ct(head_ct) -> tuple[str, list[Path]]:
    """The first small phantom head CT: its series UID and files."""
    return str(pydicom.dcmread(head_ct[0], stop_before_pixels=True).SeriesInstanceUID), head_ct


def write_config(tmp_path: Path, models: dict, routes: tuple = ()) -> Path:
    """A node configuration file (the node and the ``neuroread`` command read the same one):
    the tiny model as a plugin, no destination (results stay in the outbox audit)."""
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"root": str(tmp_path / "node")},
        "assemble": {"stable_age_s": 0.5},
        "plugins": [PLUGIN],
        "models": models,
        "routes": list(routes),
    }))
    return path


def start(config: Path, registry: ModelRegistry) -> Node:
    return Node(load_config(config), registry, port=0, tick_s=0.1, poll_s=0.1)


def routed(node: Node, series_uid: str) -> dict:
    return wait_for(lambda: node.routing(series_uid), 30, f"the routing record of series {series_uid}")


def test_a_model_switched_off_gets_no_job_and_the_models_command_says_so(tmp_path, ct, caplog):
    series_uid, files = ct
    site = {"name": "site-ct", "match": {"modality": "CT"}, "model": "tiny-test", "slot": "ct"}
    config = write_config(tmp_path, {"tiny-test": {"enabled": False}}, routes=(site,))
    with caplog.at_level(logging.WARNING, logger="neuroread.node.app.build"):
        node = start(config, ModelRegistry([TINY]))
    with node:
        assert node.routes == ()  # its default route left out, the configured one dropped, with a warning
        assert any("'site-ct' names model tiny-test, which is switched off" in r.getMessage() for r in caplog.records)
        storescu(node.port, files)
        record = routed(node, series_uid)
        assert record["state"] == "unrouted", record
        assert node.store.list() == []
    res = neuroread("models", "-c", str(config))
    assert res.returncode == 0, res.stderr
    assert "tiny-test 0.1.0 [switched off]" in res.stdout, res.stdout


def test_configured_weights_that_do_not_exist_skip_the_series_with_the_reason(tmp_path, ct):
    series_uid, files = ct
    missing = tmp_path / "not-there.pt"
    config = write_config(tmp_path, {"tiny-test": {"weights": str(missing)}})
    with start(config, ModelRegistry([TINY])) as node:
        storescu(node.port, files)
        record = routed(node, series_uid)
        assert record["state"] == "skipped", record
        assert f"the configured weights file {missing} does not exist (models.tiny-test.weights)" in record["reason"]
        assert node.store.list() == []  # no job, so no failed job per series
    res = neuroread("jobs", "unrouted", "-c", str(config))
    assert res.returncode == 0, res.stderr
    (line,) = [line for line in res.stdout.splitlines() if f"series {series_uid}" in line]
    assert f"series {series_uid}  skipped: " in line and str(missing) in line, line
    res = neuroread("models", "-c", str(config))
    assert res.returncode == 0, res.stderr
    assert "tiny-test 0.1.0 [NO WEIGHTS: its series are skipped]" in res.stdout, res.stdout
    assert f"the configured weights file {missing} does not exist" in res.stdout


def test_a_model_without_demo_weights_skips_its_series(tmp_path, ct):
    """As the product model does until its demo weights are committed (a stand-in entry, so the
    test holds once they are)."""
    series_uid, files = ct
    gone = tmp_path / "none.pt"
    registry = ModelRegistry([dataclasses.replace(TINY, demo_weights=gone)])
    with start(write_config(tmp_path, {}), registry) as node:
        storescu(node.port, files)
        record = routed(node, series_uid)
        assert record["state"] == "skipped", record
        assert f"model tiny-test has no weights: none configured and no demo weights at {gone}" in record["reason"]
        assert "neuroread train-demo tiny-test" in record["reason"]  # and how to get some
        assert node.store.list() == []


def jobs_done(node: Node, n: int) -> list:
    """The node's jobs once there are ``n``, all done (a failed one fails the test at once)."""
    def check():
        jobs = node.store.list()
        failed = [j for j in jobs if j.state == "failed"]
        if failed:
            pytest.fail(f"job {failed[0].id} failed: {failed[0].reason}")
        return jobs if len(jobs) == n and all(j.state == "done" for j in jobs) else None
    return wait_for(check, 60, f"{n} jobs done")


def identity(node: Node, job_id: int) -> str:
    """The weights identity the job was enqueued with (``<sha256>|<thresholds>``)."""
    (event,) = [e for e in node.store.audit_trail(job_id) if e.event == "queued"]
    return event.detail["identity"]


def test_new_weights_or_thresholds_make_a_new_job_with_new_uids(tmp_path, ct):
    """One node database, restarted with each configuration; the series is sent in each run (the
    restarted node also finds it in its spool). A job per (weights, thresholds), never two."""
    series_uid, files = ct
    seed1 = tmp_path / "tiny-seed1.pt"
    seed1_sha = write_weights(seed1, seed=1)
    changed = {"tiny-test": {"weights": str(seed1)}}
    lowered = {"tiny-test": {"weights": str(seed1), "thresholds": {"finding": 0.3}}}
    runs = [({}, 1), (changed, 2), (lowered, 3), (lowered, 3)]  # the last: the same configuration again
    last_routed = None
    for models, n in runs:
        with start(write_config(tmp_path, models), ModelRegistry([TINY])) as node:
            storescu(node.port, files)
            if last_routed is None:
                storescu(node.port, files)  # the same series twice
            record = wait_for(lambda: (lambda r: r if r and (last_routed is None or r["at"] > last_routed) else None)(
                node.routing(series_uid)), 30, "the series routed in this run")
            assert record["state"] == "routed", record
            jobs = jobs_done(node, n)
            last_routed = record["at"]
            identities = [identity(node, j.id) for j in jobs]
    first, second, third = jobs
    committed_sha = identities[0].split("|")[0]
    assert len(committed_sha) == 64 and committed_sha != seed1_sha
    assert identities == [f"{committed_sha}|finding=0.5", f"{seed1_sha}|finding=0.5", f"{seed1_sha}|finding=0.3"]
    assert all(j.inputs == {"ct": series_uid} for j in jobs)
    uids = [set(j.outputs["sop_instance_uids"]) for j in jobs]
    assert all(len(u) >= 5 for u in uids)
    assert not uids[0] & uids[1] and not uids[1] & uids[2] and not uids[0] & uids[2]  # new objects, never replaced


def test_weights_replaced_while_the_node_runs_are_those_the_next_job_runs_with(tmp_path, ct):
    """The catalog reads a weights file again when it changes (``neuroread train-demo`` writes over
    ``$NEUROREAD_WEIGHTS/<name>-demo.pt``): a job keyed by the new weights must run with them."""
    series_uid, files = ct
    weights = tmp_path / "tiny.pt"
    old_sha = write_weights(weights, seed=0)
    with start(write_config(tmp_path, {"tiny-test": {"weights": str(weights)}}), ModelRegistry([TINY])) as node:
        storescu(node.port, files)
        (first,) = jobs_done(node, 1)
        new_sha = write_weights(weights, seed=1)  # in place, while the node runs
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        spooled = {uid: node.spool.path_for(study_uid, series_uid, uid) for uid in first.instances["ct"]}
        node.route_series(CompleteSeries(study_uid, series_uid, spooled, 2, "quiet"))  # as after a restart
        second = jobs_done(node, 2)[1]
        assert identity(node, first.id).startswith(old_sha) and identity(node, second.id).startswith(new_sha)
        ran = [e.detail["weights_sha256"] for j in (first, second) for e in node.store.audit_trail(j.id)
               if e.event == "outbox"]
        assert ran == [old_sha, new_sha]


@pytest.fixture(scope="module")
def axspa(phantom_sets) -> tuple[Path, dict]:
    """The first axspa study (T1 + STIR): its folder and its truth series."""
    study = sorted(p.parent for p in phantom_sets["axspa-sij"].glob("*/truth.json"))[0]
    return study, load_truth(study)["series"]


def test_a_stir_in_another_frame_of_reference_leaves_the_study_incomplete(tmp_path, axspa):
    study, series = axspa
    t1, fs = series["t1"], series["fs"]
    t1_files = sorted((study / t1["folder"]).glob("*.dcm"))
    t1_frame = str(pydicom.dcmread(t1_files[0], stop_before_pixels=True).FrameOfReferenceUID)
    other_frame = generate_uid()
    moved = tmp_path / "fs"
    moved.mkdir()
    for i, path in enumerate(sorted((study / fs["folder"]).glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        assert str(ds.FrameOfReferenceUID) == t1_frame  # as the phantom made it: one frame per study
        ds.FrameOfReferenceUID = other_frame
        ds.save_as(moved / f"{i}.dcm", enforce_file_format=True)
    with start(write_config(tmp_path, {}), ModelRegistry([PAIR])) as node:
        storescu(node.port, t1_files + sorted(moved.glob("*.dcm")))
        study_uid = str(pydicom.dcmread(t1_files[0], stop_before_pixels=True).StudyInstanceUID)
        record = wait_for(lambda: node.study_routing(study_uid).get("tiny-pair-test"), 30,
                          "the study recorded for the pair model")
        assert (record["state"], record["job_id"]) == ("incomplete", None), record
        reason = record["reason"]
        assert f"t1: series {t1['series_instance_uid']}" in reason, reason
        assert (f"fs: missing (1 candidate(s) ({fs['series_instance_uid']}) but none shares the frame of reference "
                f"of slot t1 (series {t1['series_instance_uid']}, FrameOfReferenceUID {t1_frame}))") in reason, reason
        assert node.store.list() == []


def test_a_pair_model_without_weights_skips_the_study(tmp_path, axspa):
    study, series = axspa
    files = [f for slot in ("t1", "fs") for f in sorted((study / series[slot]["folder"]).glob("*.dcm"))]
    gone = tmp_path / "none.pt"
    registry = ModelRegistry([dataclasses.replace(PAIR, demo_weights=gone)])
    with start(write_config(tmp_path, {}), registry) as node:
        storescu(node.port, files)
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        record = wait_for(lambda: node.study_routing(study_uid).get("tiny-pair-test"), 30,
                          "the study recorded for the pair model")
        assert (record["state"], record["job_id"]) == ("skipped", None), record
        assert f"model tiny-pair-test has no weights: none configured and no demo weights at {gone}" in record["reason"]
        assert node.store.list() == []


def test_a_restart_with_new_weights_does_not_process_the_spool_again(tmp_path, ct):
    """The start-up rescan assembles the spooled series again; inputs that had a job (with other
    weights) keep it: new weights apply to what arrives after them, not to the whole spool."""
    series_uid, files = ct
    seed1 = tmp_path / "tiny-seed1.pt"
    write_weights(seed1, seed=1)
    with start(write_config(tmp_path, {}), ModelRegistry([TINY])) as node:
        storescu(node.port, files)
        (first,) = jobs_done(node, 1)
        routed_at = node.routing(series_uid)["at"]
    with start(write_config(tmp_path, {"tiny-test": {"weights": str(seed1)}}), ModelRegistry([TINY])) as node:
        record = wait_for(lambda: (lambda r: r if r and r["at"] > routed_at else None)(node.routing(series_uid)), 30,
                          "the rescanned series routed again")
        assert record["state"] == "routed" and f"job {first.id}" in record["reason"], record
        assert [j.id for j in node.store.list()] == [first.id]
