"""SWI routing through ``neuroread serve`` and dcmtk ``storescu``: the magnitude of a 3D SWI goes to
cmb-svd whatever the vendor calls it; its phase images and minimum intensity projections do not;
a thick-slice SWI fails its job with the reason.

One node (cmb-svd on its committed demo weights, the other models off) receives a full-size SWI
phantom as Siemens writes it (ImageType ...\\SWI), copies of it as GE (SWAN) and Philips (M_SWI)
write theirs, its phase images (ImageType ...\\P), its minIP (...\\MNIP) and every third slice
of it (a 2D-like SWI with 4.5-7.5 mm between slices).
"""
from __future__ import annotations

from collections import Counter

import pydicom
import pytest
import sqlalchemy as sa
import yaml

from neuroread.models.cmb_svd.model import MAX_SLICE_MM
from neuroread.node.app.routing import RoutingRecords
from support.node_checks import RESULT_KINDS
from support.node_process import ResultSCP, ServeNode, all_sent, copy_series, storescu, uids, wait_done, wait_for


def _vendor(manufacturer: str, image_type: list[str], description: str):
    def modify(ds: pydicom.Dataset) -> None:
        ds.Manufacturer = manufacturer
        ds.ImageType = image_type
        ds.SeriesDescription = description
    return modify


def _image_type(image_type: list[str]):
    def modify(ds: pydicom.Dataset) -> None:
        ds.ImageType = image_type
    return modify


@pytest.fixture(scope="module")
def results():
    scp = ResultSCP().start()
    yield scp
    scp.stop()


@pytest.mark.slow
def test_swi_magnitude_goes_to_cmb_svd_and_phase_and_minip_do_not(tmp_path, phantom_sets, results):
    study = sorted(p.parent for p in phantom_sets["cmb-svd"].glob("*/truth.json"))[0]
    swi = sorted((study / "S01").glob("*.dcm"))
    order = sorted(swi, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    node = ServeNode(tmp_path / "node", destination_port=results.port)
    node.config["models"] = {"ct-hemorrhage": {"enabled": False}, "ms-csvd": {"enabled": False}}
    node.config_path.write_text(yaml.safe_dump(node.config), encoding="utf-8")

    sent = {
        "Siemens SWI": copy_series(swi, tmp_path / "siemens", modify=_vendor(
            "SIEMENS", ["DERIVED", "PRIMARY", "SWI", "NORM", "DIS2D"], "SWI_Images")),
        "GE SWAN": copy_series(swi, tmp_path / "ge", modify=_vendor(
            "GE MEDICAL SYSTEMS", ["ORIGINAL", "PRIMARY", "SWAN", "NONE"], "Ax SWAN")),
        "Philips SWIp": copy_series(swi, tmp_path / "philips", modify=_vendor(
            "Philips", ["ORIGINAL", "PRIMARY", "M_SWI", "M", "SWI"], "SWIp")),
        "phase": copy_series(swi, tmp_path / "phase", modify=_image_type(["ORIGINAL", "PRIMARY", "P", "ND"])),
        "minIP": copy_series(swi, tmp_path / "minip", modify=_image_type(["DERIVED", "SECONDARY", "MNIP", "DIS2D"])),
        "every third slice": copy_series(order[::3], tmp_path / "thick"),
    }
    node.start()
    try:
        for files in sent.values():
            storescu(node.port, files)
        series = {name: uids(files)[1] for name, files in sent.items()}
        for name in ("Siemens SWI", "GE SWAN", "Philips SWIp"):
            job = wait_done(node, series[name], timeout=240)
            assert job.model == "cmb-svd", name
            items = wait_for(lambda j=job: all_sent(node, j.id), 90, f"the results of {name} delivered", node)
            kinds = Counter(RESULT_KINDS.get(i.sop_class_uid, i.sop_class_uid) for i in items)
            # SR (measurement report, text report), KOS, SEG of the microbleeds, SC overlays and report page, PM
            assert kinds["SR"] == 2 and kinds["KOS"] == 1 and kinds["SEG"] == 1 and kinds["SC"] >= 2, (name, kinds)
            assert kinds["PM"] == 1, (name, kinds)
            assert {i.sop_instance_uid for i in items} <= set(results.counts(uids(sent[name])[0])), name
        failed = wait_done(node, series["every third slice"], timeout=240, state="failed")
        assert failed.model == "cmb-svd"
        assert f"at most {MAX_SLICE_MM:g} mm apart" in failed.reason, failed.reason

        engine = sa.create_engine(node.database)
        try:
            records = RoutingRecords(engine)
            for name, component in (("phase", "PHASE"), ("minIP", "PROJECTION")):
                record = wait_for(lambda s=series[name]: records.series(s), 60, f"the routing record of {name}", node)
                assert record["state"] == "unrouted", (name, record)
                assert f"image_component is '{component}'" in record["reason"], (name, record["reason"])
                assert not node.jobs_for(series[name]), name
        finally:
            engine.dispose()
        assert {j.model for j in node.jobs()} == {"cmb-svd"} and len(node.jobs()) == 4
    finally:
        node.stop()
