"""A real brain the project never made through ``neuroread serve``: the MNI152 template written
as a sagittal 3D T1 with the head pitched by 12 degrees, sent with dcmtk ``storescu``, runs
ad-lrp (its committed demo weights): the registration succeeds, the report is produced, and the
LRP Parametric Map lines up with the anatomy.

How "lines up" is measured: the series was written from the template through a known turn,
so the map the node should deliver is known too: the same network's relevance on the series
registered by the true transform, taken back onto the series by it
(:func:`support.mni_series.true_transform`). The delivered PM must correlate with it (r ≥ 0.9)
and put its positive relevance's centre within 3 mm of it. The same map made without the
pitch (the identity transform) is the measure's negative control: it must fail it (r < 0.7).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import yaml

from neuroread.models.ad_lrp.model import DEMO_WEIGHTS, DIAGNOSIS, RELEVANCE_GAIN, ADModel
from neuroread.models.ad_lrp.preprocess import prepare, to_series
from neuroread.models.atlas import Registration
from neuroread.models.volume import load_series
from support.mni_series import PIXEL_MM, true_transform, write_mni_series
from support.node_checks import RESULT_KINDS, referenced_uids
from support.node_process import ResultSCP, ServeNode, all_sent, storescu, uids, wait_done, wait_for

PITCH_DEG = 12.0


def _codes(ds: pydicom.Dataset) -> set[str]:
    return {str(e.value) for e in ds.iterall() if e.keyword == "CodeValue"}


def _pm_on_series(pm: pydicom.Dataset, sops: list[str]) -> np.ndarray:
    """The PM's float frames stacked in the series' slice order (by each frame's source instance)."""
    frames = pm.pixel_array.astype(np.float32)
    out = np.zeros((len(sops), *frames.shape[1:]), np.float32)
    where = {uid: k for k, uid in enumerate(sops)}
    for frame, group in zip(frames, pm.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[where[source]] = frame
    return out


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Pearson r over the voxels where either map is nonzero, distance in mm between the centres
    of their positive relevance)."""
    either = (a != 0) | (b != 0)
    r = float(np.corrcoef(a[either], b[either])[0, 1])

    def centre(m: np.ndarray) -> np.ndarray:
        w = np.clip(m, 0.0, None)
        return (np.argwhere(w > 0) * w[w > 0][:, None]).sum(0) / w.sum() * PIXEL_MM

    return r, float(np.linalg.norm(centre(a) - centre(b)))


@pytest.mark.slow
def test_the_mni_template_pitched_runs_end_to_end_and_its_relevance_lines_up(tmp_path):
    study = write_mni_series(tmp_path / "mni", PITCH_DEG)
    files = sorted((study / "S01").glob("*.dcm"))
    study_uid, series_uid, sops = uids(files)
    results = ResultSCP().start()
    node = ServeNode(tmp_path / "node", destination_port=results.port)
    node.config["models"] = {"ct-hemorrhage": {"enabled": False}, "ms-csvd": {"enabled": False},
                             "cmb-svd": {"enabled": False}, "axspa-sij": {"enabled": False}}
    node.config_path.write_text(yaml.safe_dump(node.config), encoding="utf-8")
    node.start()
    try:
        sent = storescu(node.port, files)
        assert sent.returncode == 0, sent.stderr[-2000:]
        job = wait_done(node, series_uid, timeout=180)
        assert job.model == "ad-lrp"
        items = wait_for(lambda: all_sent(node, job.id), 90, "the results delivered", node)
    finally:
        node.stop()
        results.stop()
    kinds = Counter(RESULT_KINDS.get(i.sop_class_uid, i.sop_class_uid) for i in items)
    assert kinds["PM"] == 2 and kinds["KOS"] == 1 and kinds["SC"] >= 2 and kinds["SR"] >= 1, kinds
    datasets = [(RESULT_KINDS[i.sop_class_uid], pydicom.dcmread(i.path)) for i in items]
    # the report: diagnosis with its coded classes, the regions coded with their relevance gain, on this series
    srs = [ds for kind, ds in datasets if kind == "SR"]
    assert any(DIAGNOSIS.concept.value in _codes(ds) and RELEVANCE_GAIN.value in _codes(ds)
               and any(c.startswith("NMM") for c in _codes(ds)) and series_uid in referenced_uids(ds) for ds in srs)
    assert any("ad-lrp report page" in str(ds.get("DerivationDescription", "")) for kind, ds in datasets if kind == "SC")

    volume = load_series(files)
    assert sorted(volume.sop_instance_uids) == sorted(sops)
    (pm,) = [ds for kind, ds in datasets if kind == "PM" and "LRP" in str(ds.ContentDescription)]
    delivered = _pm_on_series(pm, list(volume.sop_instance_uids))

    # what the map should be: the same network's relevance through the true transform
    model = ADModel()
    model.load(DEMO_WEIGHTS, "cpu")
    step = model.net.config.step

    def through(transform: sitk.Transform) -> np.ndarray:
        prep = prepare(volume, step, registration=Registration(transform, 0.0))
        _, relevance, _ = model.explain(prep)
        return to_series(relevance, volume, prep)

    expected = through(true_transform(PITCH_DEG))
    r, offset = _agreement(delivered, expected)
    assert r >= 0.9 and offset <= 3.0, (r, offset)
    unpitched, _ = _agreement(through(sitk.AffineTransform(3)), expected)
    assert unpitched < 0.7, unpitched  # the measure tells a map that ignores the pitch
