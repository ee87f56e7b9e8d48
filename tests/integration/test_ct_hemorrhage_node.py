"""The head-CT hemorrhage model through the whole node, with the product's model registry.

Tiny DrCT2 weights, trained here by the shared training loop (:func:`neuroread.training.loop.fit`
with the model's recipe) on the session's phantoms (so the checkpoint is a real one, marked
demo), are configured for ``ct-hemorrhage``: the test does not depend on the demo weights
committed with the model. dcmtk ``storescu`` sends a phantom head CT,
dcmtk ``storescp`` receives the SR, KOS, Secondary Captures (key-slice overlays and the report
page), the Parametric Map and the text report, each valid for dciodvfy, each saying the weights
are demo weights; their findings agree with the model's result.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from neuroread.models import default_registry
from neuroread.models.checkpoint import load_checkpoint
from neuroread.models.ct_hemorrhage.model import RSNA_KEYS, SPEC
from neuroread.models.places import places
from neuroread.models.volume import load_series
from neuroread.node.app.node import Node
from neuroread.node.app.offline import process_files
from neuroread.node.config import parse_config
from neuroread.node.encode import DEMO_TEXT, validate
from neuroread.node.tools.results_summary import summarize
from neuroread.training.phantoms.baseline import load_truth
from support.findings_check import check_findings_agree
from support.node_checks import KO, PM, SC, SR, TEXT_SR, delivered_outputs, referenced_uids, storescu, wait_for
from support.peers import StoreSCP


@pytest.fixture
def storescp(tmp_path):
    scp = StoreSCP(tmp_path / "storescp")
    yield scp
    scp.stop()


def _content_items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


@pytest.mark.slow
def test_a_head_ct_through_the_node_comes_back_as_sr_kos_sc_and_pm(tmp_path, phantom_sets, weights, storescp):
    study = next(p.parent for p in sorted(phantom_sets["ct-hemorrhage"].glob("*/truth.json"))
                 if load_truth(p.parent)["labels"]["any"])
    info = load_truth(study)["series"]["ct"]
    files = sorted((study / info["folder"]).glob("*.dcm"))
    config = parse_config({
        "node": {"ae_title": "NEUROREAD"},
        "storage": {"root": str(tmp_path / "node")},
        "assemble": {"stable_age_s": 1},
        "models": {"ct-hemorrhage": {"weights": str(weights)}},
        "destinations": {"pacs": {"type": "dicom", "host": "127.0.0.1", "port": storescp.port,
                                  "called_ae": "STORESCP"}},
    }, tmp_path)
    registry = default_registry()
    assert "ct-hemorrhage" in registry.names()  # ms-csvd too: it takes FLAIR, not head CT
    with Node(config, registry, port=0, tick_s=0.2, deliver_interval_s=0.5) as node:
        storescu(node.port, files)

        def delivered():
            jobs = node.store.list()
            if jobs and jobs[0].state == "failed":
                pytest.fail(f"the job failed: {node.store.audit_trail(jobs[0].id)[-1].detail}")
            return delivered_outputs(node, storescp)

        received = wait_for(delivered, 90, "every output of the ct-hemorrhage job at storescp")
        jobs = node.store.list()
        assert [(j.model, j.state) for j in jobs] == [("ct-hemorrhage", "done")]
        outbox = next(e for e in node.store.audit_trail(jobs[0].id) if e.event == "outbox")
        assert outbox.detail["weights_sha256"] == load_checkpoint(weights, "ct-hemorrhage").card.weights_sha256

    by_class: dict[str, list[pydicom.Dataset]] = {}
    for ds in received:
        assert validate(ds) == [], ds.SOPClassUID.name
        by_class.setdefault(str(ds.SOPClassUID), []).append(ds)

    # the node's objects are those the pipeline makes offline from the same files (same UIDs), and
    # their findings agree with the model's result: Measurement Report, text report, regions, KOS
    ((_, _, processed),) = process_files(files, config, registry)
    assert sorted(ds.SOPInstanceUID for ds in processed.objects) == sorted(ds.SOPInstanceUID for ds in received)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in files)}
    volume = [by_uid[u] for u in load_series(files).sop_instance_uids]
    check_findings_agree(processed.result, received, {info["series_instance_uid"]: volume})
    # the Measurement Report holds the findings placed on an image: with the session's small
    # weights "any" may be judged absent, and then nothing has a place and no report is written
    placed = bool(places(processed.result, {info["series_instance_uid"]: [str(ds.SOPInstanceUID) for ds in volume]}))
    assert set(by_class) == {TEXT_SR, KO, SC, PM} | ({SR} if placed else set())

    text, = by_class[TEXT_SR]
    items = list(_content_items(text))
    concepts = {(str(i.ConceptNameCodeSequence[0].CodeValue), str(i.ConceptNameCodeSequence[0].CodingSchemeDesignator))
                for i in items if i.ValueType == "CODE"}
    for label in SPEC.labels:  # one finding per RSNA label, with its code, said present or absent
        assert (label.code.value, label.code.scheme) in concepts, label.name
    assert len(SPEC.labels) == len(RSNA_KEYS) == 6
    for ds in received:  # every object says the weights are demo weights
        processing = [e for e in ds.ContributingEquipmentSequence  # highdicom adds itself as well
                      if e.PurposeOfReferenceCodeSequence[0].CodeValue == codes.DCM.ProcessingEquipment.value
                      and e.ManufacturerModelName != "highdicom"]
        assert len(processing) == 1 and processing[0].ManufacturerModelName == "ct-hemorrhage", ds.SOPClassUID.name
        assert DEMO_TEXT in str(processing[0].ContributionDescription), ds.SOPClassUID.name

    ko, = by_class[KO]
    key_uids = [str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for item in ko.ContentSequence
                if item.ValueType == "IMAGE"]
    assert len(set(key_uids)) == 5 and set(key_uids) <= set(info["sop_instance_uids"])  # the five key slices
    assert str(ko.ConceptNameCodeSequence[0].CodeMeaning) == "Of Interest"

    overlays = [ds for ds in by_class[SC] if "report page" not in str(ds.DerivationDescription)]
    pages = [ds for ds in by_class[SC] if "report page" in str(ds.DerivationDescription)]
    assert len(overlays) == 5 and len(pages) == 1
    assert {uid for ds in overlays for uid in referenced_uids(ds)} >= set(key_uids)
    page = pages[0].pixel_array
    assert page.ndim == 3 and page.shape[2] == 3 and page.shape[1] >= 1000 and np.ptp(page) > 0

    pm, = by_class[PM]
    assert info["series_instance_uid"] in referenced_uids(pm)
    assert int(pm.NumberOfFrames) == len(files)

    # what `neuroread results` makes of the PACS folder: the same study, objects, findings
    studies = summarize(storescp.out)
    assert len(studies) == 1
    study = studies[0]
    assert study.study_uid == str(text.StudyInstanceUID) and study.models == {"ct-hemorrhage"}
    assert dict(study.kinds) == {**({"SR": 1} if placed else {}), "report": 1, "KOS": 1, "SC": 6, "PM": 1}
    assert study.demo
    meanings = [f.meaning for _, f in study.findings]
    assert meanings == [lb.code.meaning for lb in SPEC.labels]
    assert all(0.0 <= f.probability <= 1.0 and f.present == (f.probability >= 0.5) for _, f in study.findings)
    assert study.tables == [] and study.segmentations == []  # ct-hemorrhage gives no table and no lesion mask
    res = subprocess.run([sys.executable, "-m", "neuroread.cli", "results", str(storescp.out)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    sr_count = "1 SR, " if placed else ""
    assert f"study {study.study_uid}: ct-hemorrhage - {sr_count}1 report, 1 KOS, 6 SC, 1 PM" in res.stdout
    assert DEMO_TEXT in res.stdout and ("may have:" in res.stdout) and str(storescp.out) in res.stdout
    assert "SEG:" not in res.stdout


def test_results_says_when_a_folder_holds_none_and_refuses_a_missing_one(tmp_path, phantom_sets):
    assert summarize(phantom_sets["ct-hemorrhage"]) == []  # source images and masks only: no results
    res = subprocess.run([sys.executable, "-m", "neuroread.cli", "results", str(phantom_sets["ct-hemorrhage"])],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("no result objects under")
    res = subprocess.run([sys.executable, "-m", "neuroread.cli", "results", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "is not a folder" in res.stderr
