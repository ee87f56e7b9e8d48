"""FLAIR routing through ``neuroread serve`` and dcmtk ``storescu``: the MR sequence classifier,
not the SeriesDescription, sends a series to ms-csvd.

One node (tiny ms-csvd weights trained on the session's phantoms) receives: two FLAIR phantoms,
one with an empty SeriesDescription and one whose description says T2 TSE; copies of a FLAIR
rewritten as T1, T2 (described "FLAIR_tra"), SWI and DWI acquisitions; and a FLAIR cut to its
eight top slices, which has enough instances to route but too few slices through the brain.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import pydicom
import pytest
import sqlalchemy as sa
import yaml

from neuroread.models.ms_csvd.preprocess import MIN_BRAIN_SLICES, brain_slices
from neuroread.models.volume import load_series
from neuroread.node.app.routing import RoutingRecords
from support.node_checks import RESULT_KINDS
from support.node_process import ResultSCP, ServeNode, all_sent, copy_series, storescu, uids, wait_done, wait_for


def _acquisition(**values):
    """A ``copy_series`` modifier that makes a FLAIR another acquisition: the inversion pulse
    removed (its time, its scan option), the given attributes set (``None`` deletes one)."""
    def modify(ds: pydicom.Dataset) -> None:
        for keyword in ("InversionTime", "ScanOptions"):
            if keyword in ds:
                delattr(ds, keyword)
        for keyword, value in values.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return modify


def _describe(text: str):
    def modify(ds: pydicom.Dataset) -> None:
        ds.SeriesDescription = text
        ds.ProtocolName = text or "routine"
    return modify


@pytest.fixture(scope="module")
def results():
    scp = ResultSCP().start()
    yield scp
    scp.stop()


@pytest.mark.slow
def test_flair_goes_to_ms_csvd_by_its_acquisition_and_other_sequences_do_not(tmp_path, phantom_sets,
                                                                           ms_csvd_weights, results):
    studies = sorted(p.parent for p in phantom_sets["ms-csvd"].glob("*/truth.json"))
    flair = [sorted((s / "S01").glob("*.dcm")) for s in studies[:2]]
    node = ServeNode(tmp_path / "node", destination_port=results.port)
    node.config["models"] = {"ct-hemorrhage": {"enabled": False}, "cmb-svd": {"enabled": False},
                             "ms-csvd": {"weights": str(ms_csvd_weights)}}
    node.config_path.write_text(yaml.safe_dump(node.config), encoding="utf-8")

    sent = {
        "flair, no description": copy_series(flair[0], tmp_path / "f0", modify=_describe("")),
        "flair described as T2 TSE": copy_series(flair[1], tmp_path / "f1", modify=_describe("t2_tse_tra")),
        "T1": copy_series(flair[0], tmp_path / "t1", modify=_acquisition(
            ScanningSequence="SE", SequenceVariant="SP", RepetitionTime=500, EchoTime=12, FlipAngle=90,
            SequenceName="*se2d1", SeriesDescription="")),
        "T2 described as FLAIR": copy_series(flair[0], tmp_path / "t2", modify=_acquisition(
            ScanningSequence="SE", SequenceVariant="SK", RepetitionTime=4000, EchoTime=100, FlipAngle=150,
            SequenceName="*tse2d1_15", SeriesDescription="FLAIR_tra")),
        "SWI": copy_series(flair[0], tmp_path / "swi", modify=_acquisition(
            ScanningSequence="GR", SequenceVariant="SP", RepetitionTime=28, EchoTime=20, FlipAngle=15,
            MRAcquisitionType="3D", SequenceName="*swi3d1r", SeriesDescription="")),
        "DWI": copy_series(flair[0], tmp_path / "dwi", modify=_acquisition(
            ScanningSequence="EP", SequenceVariant="SK", RepetitionTime=5000, EchoTime=90, FlipAngle=90,
            DiffusionBValue=1000, SequenceName="*ep_b1000t", SeriesDescription="")),
    }
    # the eight top slices of a FLAIR: instances enough to route, too few slices through the brain
    volume = load_series(flair[1])
    top = set(volume.sop_instance_uids[-8:])
    cut = dataclasses.replace(volume, array=volume.array[-8:], sop_instance_uids=volume.sop_instance_uids[-8:])
    assert len(brain_slices(cut, min_slices=0)[0]) < MIN_BRAIN_SLICES
    sent["flair, top of the head only"] = copy_series(
        [p for p in flair[1] if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID in top],
        tmp_path / "top")

    node.start()
    try:
        for files in sent.values():
            storescu(node.port, files)
        series = {name: uids(files)[1] for name, files in sent.items()}
        for name in ("flair, no description", "flair described as T2 TSE"):
            job = wait_done(node, series[name], timeout=120)
            assert job.model == "ms-csvd", name
            items = wait_for(lambda j=job: all_sent(node, j.id), 60, f"the results of {name} delivered", node)
            # the outputs the issue names: SR (measurement and text report), KOS, SC overlays and report page, PM
            kinds = Counter(RESULT_KINDS.get(i.sop_class_uid, i.sop_class_uid) for i in items)
            assert kinds["SR"] == 2 and kinds["KOS"] == 1 and kinds["SC"] >= 2 and kinds["PM"] == 2, (name, kinds)
            assert {i.sop_instance_uid for i in items} <= set(results.counts(uids(sent[name])[0])), name
        failed = wait_done(node, series["flair, top of the head only"], timeout=120, state="failed")
        assert failed.model == "ms-csvd"
        assert "go through the brain" in failed.reason and "needs at least 6 axial FLAIR slices" in failed.reason

        engine = sa.create_engine(node.database)
        try:
            records = RoutingRecords(engine)
            for name in ("T1", "T2 described as FLAIR", "SWI", "DWI"):
                record = wait_for(lambda s=series[name]: records.series(s), 60, f"the routing record of {name}", node)
                assert record["state"] == "unrouted", (name, record)
                assert not node.jobs_for(series[name]), name
            said = {name: records.series(series[name])["reason"] for name in ("T2 described as FLAIR", "DWI")}
        finally:
            engine.dispose()
        assert "T2" in said["T2 described as FLAIR"] and "DWI" in said["DWI"], said
        assert {j.model for j in node.jobs()} == {"ms-csvd"} and len(node.jobs()) == 3
    finally:
        node.stop()
