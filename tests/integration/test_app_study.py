"""Multi-series models in the node: one job per study with every slot filled (axspa phantoms:
T1 + STIR or T2 SPAIR), the missing-slot and two-candidate rules, late series, idempotence;
and the configuration's threshold overrides reaching the findings and the SR."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from neuroread.models import ModelRegistry
from neuroread.node.app.node import Node
from neuroread.node.app.offline import run_files
from neuroread.node.assemble.assembler import CompleteSeries, CompleteStudy
from neuroread.node.config import parse_config
from neuroread.node.encode import probability_of, validate
from neuroread.node.infer.runner import ModelRunner
from neuroread.node.route.rules import Route, default_routes, parse_condition
from neuroread.node.route.study_slots import Candidate, fill_slots
from neuroread.training.phantoms.baseline import load_truth
from support.node_checks import (
    KINDS,
    KO,
    PM,
    SEG,
    SR,
    TEXT_SR,
    code_value,
    content_items,
    referenced_uids,
    storescu,
    wait_for,
)
from support.peers import StoreSCP
from support.tiny_model import ENTRY as TINY
from support.tiny_pair_model import ENTRY as PAIR
from support.tiny_pair_model import SPEC as PAIR_SPEC

REGISTRY = ModelRegistry([TINY, PAIR])
FINDING = PAIR_SPEC.label("finding").code  # the same finding in both test models


@pytest.fixture(scope="module")
def axspa(phantom_sets) -> list[tuple[Path, dict]]:
    """The axspa studies: (folder, truth series {"t1": ..., "fs": ...}), sorted."""
    return [(p.parent, load_truth(p.parent)["series"]) for p in sorted(phantom_sets["axspa-sij"].glob("*/truth.json"))]


@pytest.fixture
def storescp(tmp_path):
    scp = StoreSCP(tmp_path / "storescp")
    yield scp
    scp.stop()


def files_of(study: Path, info: dict) -> list[Path]:
    return sorted((study / info["folder"]).glob("*.dcm"))


def make_config(tmp_path: Path, destinations: dict, models: dict | None = None):
    return parse_config({
        "node": {"ae_title": "NEUROREAD"},
        "storage": {"root": str(tmp_path / "node")},
        "assemble": {"stable_age_s": 0.5},
        "models": models or {},
        "destinations": destinations,
    }, tmp_path)


def folder(tmp_path: Path) -> dict:
    return {"archive": {"type": "folder", "path": str(tmp_path / "results")}}


def finding_states(sr: pydicom.Dataset) -> list[str]:
    """The Present/Absent code value of every qualitative evaluation of the finding in an SR."""
    return [code_value(item.ConceptCodeSequence[0]) for item in content_items(sr)
            if item.ValueType == "CODE" and code_value(item.ConceptNameCodeSequence[0]) == FINDING.value]


def texts(sr: pydicom.Dataset) -> set[str]:
    return {str(item.TextValue) for item in content_items(sr) if item.ValueType == "TEXT"}


def numbers(sr: pydicom.Dataset, meaning: str) -> list[float]:
    """The value of every NUM item of the SR whose concept's meaning is ``meaning``."""
    return [float(item.MeasuredValueSequence[0].NumericValue) for item in content_items(sr)
            if item.ValueType == "NUM" and str(item.ConceptNameCodeSequence[0].CodeMeaning) == meaning]


def probabilities(sr: pydicom.Dataset) -> list[float]:
    """The NUM "Probability of <finding>" of the finding group (its concept derived from the finding's code)."""
    concept = probability_of(FINDING)
    return [float(item.MeasuredValueSequence[0].NumericValue) for item in content_items(sr)
            if item.ValueType == "NUM" and code_value(item.ConceptNameCodeSequence[0]) == concept.value]


def decision_thresholds(sr: pydicom.Dataset) -> list[float]:
    return numbers(sr, "Decision threshold")


def copy_series(src: list[Path], out: Path, series_number: int) -> tuple[str, list[Path]]:
    """``src`` as a new series of the same study (new series and instance UIDs, another SeriesNumber)."""
    out.mkdir(parents=True)
    uid = generate_uid()
    paths = []
    for i, path in enumerate(src):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesNumber = uid, series_number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(out / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return uid, paths


def events(node: Node, job_id: int, name: str) -> list[dict]:
    return [e.detail for e in node.store.audit_trail(job_id) if e.event == name]


def test_pair_study_one_job_both_slots_valid_results_idempotent(tmp_path, axspa, storescp):
    study, series = axspa[0]
    t1, fs = series["t1"], series["fs"]
    config = make_config(tmp_path, {"pacs": {"type": "dicom", "host": "127.0.0.1", "port": storescp.port,
                                             "called_ae": "STORESCP"}},
                         models={"tiny-pair-test": {"thresholds": {"finding": 0.3}}})
    with Node(config, REGISTRY, port=0, tick_s=0.1, poll_s=0.1, deliver_interval_s=0.3) as node:
        storescu(node.port, files_of(study, fs) + files_of(study, t1))  # order does not matter
        job = wait_for(lambda: next((j for j in node.store.list("done")), None), 60, "the pair job done")
        outputs = events(node, job.id, "outbox")[0]["outputs"]
        # storescp answers a C-STORE once its file is written: "sent" means the file is whole
        wait_for(lambda: [i.state for i in node.outbox.status(str(job.id))] == ["sent"] * len(outputs), 30,
                 f"{len(outputs)} objects sent to storescp")

        assert [(j.model, j.state) for j in node.store.list()] == [("tiny-pair-test", "done")]
        assert job.inputs == {"t1": t1["series_instance_uid"], "fs": fs["series_instance_uid"]}
        assert job.instances == {"t1": sorted(t1["sop_instance_uids"]), "fs": sorted(fs["sop_instance_uids"])}
        audit = events(node, job.id, "outbox")[0]
        assert audit["inputs"] == {"t1": {"series": t1["series_instance_uid"], "instances": len(t1["sop_instance_uids"])},
                                   "fs": {"series": fs["series_instance_uid"], "instances": len(fs["sop_instance_uids"])}}
        (slots,) = events(node, job.id, "slots")
        assert {s: v["chosen"] for s, v in slots["slots"].items()} == job.inputs
        record = node.study_routing(audit["study"])["tiny-pair-test"]
        assert (record["state"], record["job_id"]) == ("routed", job.id)
        for info in (t1, fs):
            routing = node.routing(info["series_instance_uid"])
            assert routing["state"] == "routed" and "tiny-pair-test" in routing["reason"], routing

        received = [pydicom.dcmread(p) for p in storescp.files()]
        assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(outputs)
        assert {str(ds.StudyInstanceUID) for ds in received} == {audit["study"]}
        for ds in received:
            assert validate(ds) == [], ds.SOPClassUID.name
        by_class = {}
        for ds in received:
            by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
        both = {t1["series_instance_uid"], fs["series_instance_uid"]}
        (sr,), (ko,), (seg,) = by_class[SR], by_class[KO], by_class[SEG]
        assert both <= referenced_uids(sr) and both <= referenced_uids(ko)
        # the lesion is on the fs series: the SEG references it and not the T1
        assert fs["series_instance_uid"] in referenced_uids(seg) and t1["series_instance_uid"] not in referenced_uids(seg)
        # one parametric map per input series, each on its own series
        assert sorted(len(both & referenced_uids(pm)) for pm in by_class[PM]) == [1, 1]
        assert set().union(*(both & referenced_uids(pm) for pm in by_class[PM])) == both
        # threshold override: the probability (about 0.45) is under the spec's 0.5 but over the configured 0.3
        assert len(probabilities(sr)) == 1 and 0.3 < probabilities(sr)[0] < 0.5, probabilities(sr)
        assert finding_states(sr) == [codes.SCT.Present.value]
        assert decision_thresholds(sr) == [pytest.approx(0.3)]  # the NUM beside the probability
        assert "threshold_finding=0.3" in texts(sr)

        # the same study again: no new job, no new objects
        count = len(storescp.files())
        storescu(node.port, files_of(study, t1) + files_of(study, fs))
        time.sleep(2.0)  # quiet period 0.5 s + ticks + a delivery round
        assert len(storescp.files()) == count and len(node.store.list()) == 1
        # even reported complete again (as after a restart), the study finds the same job
        spooled = {}
        for info in (t1, fs):
            uid = info["series_instance_uid"]
            spooled[uid] = CompleteSeries(audit["study"], uid, {s: node.spool.path_for(audit["study"], uid, s)
                                                               for s in info["sop_instance_uids"]}, 2, "quiet")
        again = node.route_study(CompleteStudy(audit["study"], tuple(spooled.values()), 2))
        assert [(j.id, j.state) for j in again] == [(job.id, "done")]
        assert len(events(node, job.id, "slots")) == 1
        time.sleep(0.5)
        assert len(storescp.files()) == count


def test_missing_slot_is_recorded_then_the_late_series_makes_the_job(tmp_path, axspa):
    study, series = axspa[1]  # T1 + T2 SPAIR (classified T2FS)
    t1, fs = series["t1"], series["fs"]
    config = make_config(tmp_path, folder(tmp_path))
    with Node(config, REGISTRY, port=0, tick_s=0.1, poll_s=0.1, deliver_interval_s=0.3) as node:
        storescu(node.port, files_of(study, t1))
        study_uid = str(pydicom.dcmread(files_of(study, t1)[0], stop_before_pixels=True).StudyInstanceUID)
        record = wait_for(lambda: node.study_routing(study_uid).get("tiny-pair-test"), 30,
                          "the study recorded for the pair model")
        assert record["state"] == "incomplete" and record["job_id"] is None
        assert "fs: missing" in record["reason"] and "STIR/T2FS" in record["reason"], record["reason"]
        assert f"t1: series {t1['series_instance_uid']}" in record["reason"], record["reason"]
        assert node.store.list() == []

        storescu(node.port, files_of(study, fs))  # the missing series arrives later: the study reopens
        job = wait_for(lambda: next((j for j in node.store.list("done")), None), 60, "the pair job done")
        assert job.inputs == {"t1": t1["series_instance_uid"], "fs": fs["series_instance_uid"]}
        record = node.study_routing(study_uid)["tiny-pair-test"]
        assert (record["state"], record["job_id"]) == ("routed", job.id)
        outputs = events(node, job.id, "outbox")[0]["outputs"]
        wait_for(lambda: [i.state for i in node.outbox.status(str(job.id))] == ["sent"] * len(outputs), 30,
                 f"{len(outputs)} objects written to the folder")
        written = sorted((tmp_path / "results").rglob("*.dcm"))
        assert len(written) == len(outputs)
        srs = [ds for ds in map(pydicom.dcmread, written) if ds.SOPClassUID == SR]
        assert len(srs) == 1 and {t1["series_instance_uid"], fs["series_instance_uid"]} <= referenced_uids(srs[0])
        assert len(node.store.list()) == 1


def test_two_candidates_for_a_slot_chosen_by_the_documented_rule(tmp_path, axspa):
    study, series = axspa[2]
    t1, fs = series["t1"], series["fs"]
    fs_files = files_of(study, fs)
    repeat_uid, repeat = copy_series(fs_files, tmp_path / "repeat", series_number=3)     # as many, later number
    short_uid, short = copy_series(fs_files[:-1], tmp_path / "short", series_number=7)   # fewer, latest number
    config = make_config(tmp_path, folder(tmp_path))
    with Node(config, REGISTRY, port=0, tick_s=0.1, poll_s=0.1) as node:
        storescu(node.port, files_of(study, t1) + short + fs_files + repeat)
        job = wait_for(lambda: next((j for j in node.store.list("done")), None), 60, "the pair job done")
        assert job.inputs == {"t1": t1["series_instance_uid"], "fs": repeat_uid}
        assert len(node.store.list()) == 1
        (slots,) = events(node, job.id, "slots")
        assert slots["rule"] == "best route priority, most instances, highest SeriesNumber, highest SeriesInstanceUID"
        assert [(c["series"], c["instances"], c["series_number"]) for c in slots["slots"]["fs"]["candidates"]] == [
            (repeat_uid, len(fs_files), 3), (fs["series_instance_uid"], len(fs_files), fs["series_number"]),
            (short_uid, len(fs_files) - 1, 7)]
        assert slots["slots"]["fs"]["chosen"] == repeat_uid
        reason = node.study_routing(slots["study"])["tiny-pair-test"]["reason"]
        assert f"preferred to {fs['series_instance_uid']}, {short_uid}" in reason, reason


def test_fill_slots_prefers_a_configured_route_and_fills_a_series_once():
    default_t1, default_fs = default_routes(PAIR_SPEC)
    site_fs = Route("site-fs", "tiny-pair-test", "fs", parse_condition({"modality": "MR"}), priority=10)
    site_t1 = Route("site-t1", "tiny-pair-test", "t1", parse_condition({"modality": "MR"}), priority=5)
    frame = "1.9"  # one Frame of Reference for the whole study: the fs slot must share the T1's
    t1, many = Candidate("1.1", default_t1, 10, 1, frame), Candidate("1.2", default_fs, 30, 9, frame)
    # a configured route beats the model's default, whatever the instance count
    filling = fill_slots(PAIR_SPEC, [t1, many, Candidate("1.3", site_fs, 10, 2, frame)])
    assert {s: c.series_uid for s, c in filling.chosen.items()} == {"t1": "1.1", "fs": "1.3"}
    assert [c.series_uid for c in filling.candidates["fs"]] == ["1.3", "1.2"] and filling.missing == ()
    # "1.3" fits both slots: t1 is filled first (the spec's order) and takes it; fs gets the next one
    filling = fill_slots(PAIR_SPEC, [t1, many, Candidate("1.3", site_fs, 10, 2, frame),
                                     Candidate("1.3", site_t1, 10, 2, frame)])
    assert {s: c.series_uid for s, c in filling.chosen.items()} == {"t1": "1.3", "fs": "1.2"}
    # candidates of another model are ignored; a slot nobody fits is missing
    other = Candidate("9.9", Route("other", "tiny-test", "ct", parse_condition({"modality": "CT"})), 10, 1, frame)
    only_t1 = fill_slots(PAIR_SPEC, [t1, other])
    assert only_t1.missing == ("fs",) and {s: c.series_uid for s, c in only_t1.chosen.items()} == {"t1": "1.1"}


def test_fill_slots_takes_for_fs_only_a_series_in_the_t1_frame_of_reference():
    default_t1, default_fs = default_routes(PAIR_SPEC)
    t1 = Candidate("1.1", default_t1, 10, 1, "1.9")
    many = Candidate("1.2", default_fs, 30, 9, "1.8")  # preferred by the rule, but in another frame
    same = Candidate("1.3", default_fs, 10, 2, "1.9")
    filling = fill_slots(PAIR_SPEC, [t1, many, same])
    assert {s: c.series_uid for s, c in filling.chosen.items()} == {"t1": "1.1", "fs": "1.3"}
    # none in the T1's frame (another one, or none given): fs is missing, and the record says why
    for fs in (many, Candidate("1.4", default_fs, 10, 2)):
        filling = fill_slots(PAIR_SPEC, [t1, fs])
        assert filling.missing == ("fs",)
        reason = filling.describe()
        assert f"fs: missing (1 candidate(s) ({fs.series_uid}) but none shares the frame of reference of slot t1 " \
               "(series 1.1, FrameOfReferenceUID 1.9))" in reason, reason


def test_run_files_pairs_series_by_study(tmp_path, axspa, caplog):
    (whole, s0), (partial, s3) = axspa[0], axspa[3]
    config = make_config(tmp_path, {})
    with caplog.at_level(logging.WARNING, logger="neuroread.node.app.node"):
        written = run_files([whole, partial / s3["t1"]["folder"]], tmp_path / "out", config, REGISTRY)
    datasets = [pydicom.dcmread(p) for p in written]
    study0 = str(pydicom.dcmread(files_of(whole, s0["t1"])[0], stop_before_pixels=True).StudyInstanceUID)
    assert {str(ds.StudyInstanceUID) for ds in datasets} == {study0}
    assert {str(ds.SOPClassUID) for ds in datasets} == KINDS
    (sr,) = [ds for ds in datasets if ds.SOPClassUID == SR]
    assert {s0["t1"]["series_instance_uid"], s0["fs"]["series_instance_uid"]} <= referenced_uids(sr)
    assert any("incomplete" in r.message and "fs: missing" in r.message and s3["t1"]["series_instance_uid"] in r.message
               for r in caplog.records), [r.message for r in caplog.records]


@pytest.mark.parametrize("threshold, state", [(0.9, codes.SCT.Absent), (0.01, codes.SCT.Present)])
def test_threshold_overrides_reach_the_finding_and_the_sr(tmp_path, phantom_sets, threshold, state):
    """The tiny model gives about 0.51 on this CT (present at its spec's 0.5): absent at 0.9, present at 0.01."""
    study = sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))[0]
    models = {"tiny-test": {"thresholds": {"finding": threshold}}}
    written = run_files([study / "S01"], tmp_path / "out", make_config(tmp_path, {}, models), ModelRegistry([TINY]))
    (text,) = [ds for ds in map(pydicom.dcmread, written) if ds.SOPClassUID == TEXT_SR]
    assert finding_states(text) == [state.value]
    assert decision_thresholds(text) == [pytest.approx(threshold)]
    assert len(probabilities(text)) == 1 and 0.5 < probabilities(text)[0] < 0.9, probabilities(text)
    # the Measurement Report (the lesion is drawn) names the thresholds in its algorithm identification
    (sr,) = [ds for ds in map(pydicom.dcmread, written) if ds.SOPClassUID == SR]
    assert f"threshold_finding={threshold:g}" in texts(sr) and "threshold_finding=0.5" not in texts(sr)
    assert finding_states(sr) == ([state.value] if state == codes.SCT.Present else [])  # drawn only when present


def test_runner_threshold_override_errors():
    with pytest.raises(ValueError, match=r"tiny-test: thresholds for unknown labels \['findng'\]; labels: \['finding'\]"):
        ModelRunner(ModelRegistry([TINY]), thresholds={"tiny-test": {"findng": 0.3}})
    with pytest.raises(ValueError, match=r"Label 'finding': threshold must be in \(0, 1\), got 1.0"):
        ModelRunner(ModelRegistry([TINY]), thresholds={"tiny-test": {"finding": 1.0}})
    with pytest.raises(ValueError, match="unknown model 'tiny-tset'"):
        ModelRunner(ModelRegistry([TINY]), thresholds={"tiny-tset": {"finding": 0.3}})
    runner = ModelRunner(ModelRegistry([TINY]), thresholds={"tiny-test": {"finding": 0.25}})
    assert runner.spec("tiny-test").label("finding").threshold == 0.25
    assert ModelRegistry([TINY]).spec("tiny-test").label("finding").threshold == 0.5  # the registry's stays
    # what results and jobs are keyed by: the weights' SHA-256 and the effective thresholds
    sha = ModelRunner(ModelRegistry([TINY])).identity("tiny-test").split("|")[0]
    assert runner.identity("tiny-test") == f"{sha}|finding=0.25" and len(sha) == 64
