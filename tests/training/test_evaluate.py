"""neuroread.training.evaluate: any model's ``predict`` run over study records as the node runs it,
measured from the typed result. The tiny test model (committed random weights) over the session's
phantoms for the findings and key-slice metrics; a hand-made model whose heatmaps point where
the test says for the pointing game; a hand-made model returning the lesions and class
probabilities the test gives it for lesion detection and the multi-class metrics."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neuroread.models import (
    UCUM_RATIO,
    Classification,
    ClassLabel,
    Code,
    Finding,
    Heatmap,
    InputSlot,
    KeySlice,
    Label,
    Lesion,
    ModelCard,
    ModelResult,
    ModelSpec,
    MultiClass,
    MultiLabel,
    SeriesVolume,
    SliceScores,
)
from neuroread.training.datasets import StudyRecord, read_phantoms
from neuroread.training.evaluate import evaluate
from neuroread.training.metrics import classification_metrics
from support.tiny_model import ENTRY


def _as_finding(record: StudyRecord) -> StudyRecord:
    """A phantom record read with the single label ``any``, renamed to the tiny model's ``finding``."""
    return dataclasses.replace(record, label_names=("finding",))


@pytest.fixture(scope="module")
def records(phantom_sets) -> list[StudyRecord]:
    return [_as_finding(r) for r in read_phantoms(phantom_sets["ct-hemorrhage"], labels=("any",))]


@pytest.fixture(scope="module")
def tiny():
    model = ENTRY.factory()
    model.load(ENTRY.demo_weights)
    return model


def test_evaluate_runs_predict_and_measures_what_it_returns(tiny, records):
    m = evaluate(tiny, records, progress=False)
    for key in ("n_studies", "f1_macro", "auc_macro", "f1.finding", "auc.finding", "threshold.finding",
                "support.finding", "key_slice.n_studies", "key_slice.top3_lesion_fraction",
                "key_slice.positive_studies"):
        assert key in m, key
    assert m["n_studies"] == 4.0 and m["support.finding"] == 2.0 and m["key_slice.positive_studies"] == 2.0
    assert all(isinstance(v, float) and np.isfinite(v) for v in m.values())

    # the same numbers from the model's own results, worked out here
    probs, truth, hits = [], [], []
    for record in records:
        volume, slice_labels = record.load()
        result = tiny.predict({"ct": volume})
        probs.append([result.findings[0].probability])
        truth.append(record.labels.tolist())
        if record.labels[0]:
            hits += [slice_labels[k.slice_index, 0] for k in result.key_slices]
    expected = classification_metrics(np.array(probs), np.array(truth), ("finding",), thresholds=[0.5]).to_dict()
    assert m["f1.finding"] == pytest.approx(expected["f1.finding"])
    assert m["auc.finding"] == pytest.approx(expected["auc.finding"])
    assert m["key_slice.top3_lesion_fraction"] == pytest.approx(np.mean(hits))  # 3 key slices per study


# --- the pointing game on hand-made maps ------------------------------------------------------

FINDING = Code("404684003", "SCT", "Clinical finding")
OTHER = Code("OTHER", "99TEST", "Other finding")
SCORE = Code("SCORE", "99TEST", "Slice score")


class PointingModel:
    """A model that returns the heatmaps it was given: the main map (explaining ``finding``), a
    map explaining ``other`` listed first and a branch map of ``finding``, which the pointing game
    must both ignore, and five key slices."""

    def __init__(self, main: np.ndarray, decoys: np.ndarray, keys: list[int]) -> None:
        self.spec = ModelSpec(name="pointer-test", version="1.0.0", summary="returns hand-made heatmaps",
                              slots=(InputSlot("ct", "CT"),),
                              outcomes=(MultiLabel((Label("finding", FINDING), Label("other", OTHER))),),
                              explanations=("attention",))
        self.main, self.decoys, self.keys = main, decoys, keys
        self.card = ModelCard({}, "0" * 64, "hand-made maps", demo=True)
        self.probabilities = {"finding": 0.9, "other": 0.1}

    def predict(self, inputs: dict[str, SeriesVolume]) -> ModelResult:
        vol = inputs["ct"]
        uid = vol.series_instance_uid
        n = vol.array.shape[0]
        return ModelResult(
            model=self.spec.name, version=self.spec.version, card=self.card,
            findings=tuple(Finding(lb.name, lb.code, self.probabilities[lb.name], lb.threshold)
                           for lb in self.spec.labels),
            key_slices=tuple(KeySlice(uid, k, vol.sop_instance_uids[k], 1.0 - r / 10, r + 1)
                             for r, k in enumerate(self.keys)),
            slice_scores=(SliceScores(uid, SCORE, tuple(range(n)),
                                      tuple(1.0 if k in self.keys else 0.0 for k in range(n)), UCUM_RATIO),),
            heatmaps=(Heatmap(uid, "attention", self.decoys, explains="other", value_range=(0.0, 1.0)),
                      Heatmap(uid, "attention", self.decoys, explains="finding", value_range=(0.0, 1.0),
                              branch="aps"),
                      Heatmap(uid, "attention", self.main, explains="finding", value_range=(0.0, 1.0))),
        )


def test_pointing_game_on_hand_made_maps(phantom_sets):
    base = read_phantoms(phantom_sets["ct-hemorrhage"], labels=("any",))[1]  # the EDH, slices 16-20
    record = dataclasses.replace(base, label_names=("finding", "other"), labels=np.array([1, 0], np.float32),
                                 slice_labels=np.concatenate([base.slice_labels, 0 * base.slice_labels], axis=1))
    volume, _ = record.load()
    lesion = record.load_mask(volume) > 0
    assert np.flatnonzero(lesion.any(axis=(1, 2))).tolist() == [16, 17, 18, 19, 20]
    main = np.zeros(volume.array.shape, np.float32)
    decoys = np.zeros(volume.array.shape, np.float32)
    # slice 16: the peak inside the lesion (a hit; all the map's mass is in the lesion)
    r, c = np.argwhere(lesion[16])[0]
    main[16, r, c] = 1.0
    # slice 17: the peak on the pixel just right of the lesion's edge, 1.9 mm away (a hit within 5 mm; no mass inside)
    rows, cols = np.nonzero(lesion[17])
    edge = int(np.argmax(cols))
    assert not lesion[17, rows[edge], cols[edge] + 1]
    main[17, rows[edge], cols[edge] + 1] = 1.0
    # slice 18: the peak in a corner, far from the lesion (a miss); slice 19: an empty map (a miss)
    main[18, 0, 0] = 1.0
    # slice 3: a key slice without lesion (not played)
    main[3, 10, 10] = 1.0
    for k in (16, 17, 18, 19):  # the decoys point inside the lesion every time
        decoys[k][lesion[k]] = 1.0
    model = PointingModel(main, decoys, keys=[16, 17, 18, 19, 3])

    m = evaluate(model, [record], progress=False)
    assert m["pointing.n"] == 4.0
    assert m["pointing.hit_rate"] == pytest.approx(2 / 4)
    assert m["pointing.mass_in_lesion"] == pytest.approx((1 + 0 + 0) / 3)  # the empty map has no mass to place
    tissue = (volume.array > -100) & (volume.array < 100)
    share = [lesion[k].sum() / (tissue[k] | lesion[k]).sum() for k in (16, 17, 18, 19)]  # every played slice
    assert m["pointing.lesion_share"] == pytest.approx(np.mean(share))
    assert 0 < m["pointing.lesion_share"] < 0.2
    assert m["key_slice.top5_lesion_fraction"] == pytest.approx(4 / 5)

    # a tolerance below the pixel's 1.9 mm makes slice 17 a miss
    assert volume.spacing[0] > 1.5
    strict = evaluate(model, [record], progress=False, tolerance_mm=1.0)
    assert strict["pointing.hit_rate"] == pytest.approx(1 / 4)
    # without a lesion mask there is no pointing game, the rest stays
    bare = evaluate(model, [dataclasses.replace(record, mask=None, mask_types=())], progress=False)
    assert not any(k.startswith("pointing.") for k in bare) and bare["key_slice.top5_lesion_fraction"] == 0.8


def test_findings_are_measured_at_the_result_thresholds(phantom_sets):
    """F1 and the reported threshold follow the thresholds the results carry (the spec's) or the
    ones given, and a result that breaks the model's contract is refused, naming what is wrong."""
    base = read_phantoms(phantom_sets["ct-hemorrhage"], labels=("any",))[1]
    record = dataclasses.replace(base, label_names=("finding", "other"), labels=np.array([1, 0], np.float32),
                                 slice_uids=None, slice_labels=None)  # no per-slice labels: findings only
    empty = np.zeros((24, 128, 128), np.float32)
    model = PointingModel(empty, empty, keys=[16])
    m = evaluate(model, [record], progress=False)  # 0.9 >= 0.5: the finding is called
    assert m["f1.finding"] == 1.0 and m["threshold.finding"] == 0.5 and m["recall.finding"] == 1.0
    assert not any(k.startswith(("key_slice.", "pointing.")) for k in m)
    model.spec = model.spec.with_thresholds({"finding": 0.95})  # 0.9 < 0.95: missed
    m = evaluate(model, [record], progress=False)
    assert m["threshold.finding"] == 0.95 and m["recall.finding"] == 0.0 and m.get("f1.finding", 0.0) == 0.0
    # thresholds given to evaluate decide instead, as the node applies a card's or a configuration's
    model.spec = model.spec.with_thresholds({"finding": 0.5})
    m = evaluate(model, [record], thresholds={"finding": 0.95}, progress=False)
    assert m["threshold.finding"] == 0.95 and m["recall.finding"] == 0.0
    assert evaluate(model, [record], thresholds={"finding": 0.85}, progress=False)["recall.finding"] == 1.0

    class Stale(PointingModel):  # findings at 0.5 whatever the spec says
        def predict(self, inputs):
            result = super().predict(inputs)
            return dataclasses.replace(result, findings=tuple(dataclasses.replace(f, threshold=0.5)
                                                              for f in result.findings))

    stale = Stale(empty, empty, keys=[16])
    stale.spec = model.spec.with_thresholds({"finding": 0.95})
    with pytest.raises(ValueError, match="finding 'finding' has a code or threshold other than its label's"):
        evaluate(stale, [record], progress=False)
    with pytest.raises(ValueError, match="other"):  # records without a label of the model
        evaluate(model, [dataclasses.replace(record, label_names=("finding", "else"))], progress=False)


# --- lesions and a multi-class outcome on hand-made results ---------------------------------------

MICROBLEED = Code("MICROBLEED", "99TEST", "Microbleed")
SUBTYPE = MultiClass("subtype", Code("SUBTYPE", "99TEST", "Subtype"),
                     (ClassLabel("alpha", Code("ALPHA", "99TEST", "Alpha")),
                      ClassLabel("beta", Code("BETA", "99TEST", "Beta"))))


class LesionModel:
    """A model that returns, per series, the lesions it was given (mask and probability), the
    given subtype probabilities, and a key slice with a map peaking in its corner where given."""

    def __init__(self, lesions: dict[str, list[tuple[np.ndarray, float]]], subtype: dict[str, list[float]],
                 key_slice: dict[str, int]) -> None:
        self.spec = ModelSpec(name="lesion-test", version="1.0.0", summary="returns hand-made lesions",
                              slots=(InputSlot("ct", "CT"),), outcomes=(SUBTYPE,), explanations=("attention",))
        self.card = ModelCard({}, "0" * 64, "hand-made lesions", demo=True)
        self.lesions, self.subtype, self.key_slice = lesions, subtype, key_slice

    def predict(self, inputs: dict[str, SeriesVolume]) -> ModelResult:
        vol = inputs["ct"]
        uid = vol.series_instance_uid
        k = self.key_slice.get(uid)
        heat = np.zeros(vol.array.shape, np.float32)
        if k is not None:
            heat[k, 0, 0] = 1.0
        return ModelResult(
            model=self.spec.name, version=self.spec.version, card=self.card,
            classifications=(Classification.of(SUBTYPE, self.subtype[uid]),),
            lesions=tuple(Lesion(uid, "microbleed", MICROBLEED, mask, float(mask.sum()), (0.0, 0.0, 0.0),
                                 probability=p) for mask, p in self.lesions.get(uid, [])),
            key_slices=() if k is None else (KeySlice(uid, k, vol.sop_instance_uids[k], 1.0, 1),),
            heatmaps=() if k is None else (Heatmap(uid, "attention", heat, explains="beta", value_range=(0.0, 1.0)),),
        )


def test_lesions_and_weighted_classes_are_measured(phantom_sets, monkeypatch):
    """Four phantoms, every one with a mask: 0 and 2 without lesion, 1 (an EDH) and 3 (an IVH) with one
    each. The model finds the EDH exactly, adds a false positive there, and misses the IVH; record 0,
    with a mask but no lesion predicted before the model's first lesion, still counts as a scan."""
    base = read_phantoms(phantom_sets["ct-hemorrhage"], labels=("any",))
    truth_class = [0, 1, 0, 1]  # alpha, beta, alpha, beta
    records = [dataclasses.replace(r, label_names=("alpha", "beta"), labels=np.eye(2, dtype=np.float32)[t],
                                   slice_labels=np.concatenate([0 * r.slice_labels, r.slice_labels], axis=1))
               for r, t in zip(base, truth_class)]
    volumes = [r.load()[0] for r in records]
    truths = [r.load_mask(v) for r, v in zip(records, volumes)]
    assert [len(np.unique(t)) - 1 for t in truths] == [0, 1, 0, 1]
    edh = truths[1] == 1
    stray = np.zeros(edh.shape, bool)
    stray[0, :2, :2] = True  # 4 voxels far from the EDH
    assert not (stray & edh).any()
    uids = [v.series_instance_uid for v in volumes]
    subtype = dict(zip(uids, ([0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9])))  # record 2 decided wrongly
    # a key slice inside each lesion, so that the pointing game reads the masks too (the map's corner: a miss)
    key_slice = {uids[i]: int(np.flatnonzero(truths[i].any(axis=(1, 2)))[0]) for i in (1, 3)}
    model = LesionModel({uids[1]: [(edh, 0.9), (stray, 0.4)]}, subtype, key_slice)
    reads: list[str] = []
    load_mask = StudyRecord.load_mask
    monkeypatch.setattr(StudyRecord, "load_mask", lambda self, volume: reads.append(self.study_id) or
                        load_mask(self, volume))

    m = evaluate(model, records, progress=False)
    assert sorted(reads) == sorted(r.study_id for r in records)  # each mask read once, pointing included
    assert m["pointing.n"] == 2 and m["pointing.hit_rate"] == 0.0
    det = {k.removeprefix("detection."): v for k, v in m.items() if k.startswith("detection.")}
    assert (det["n_scans"], det["n_lesions"], det["n_predicted"], det["n_matched"]) == (4, 2, 2, 1)
    assert det["recall"] == 0.5 and det["recall_per_scan_mean"] == 0.5 and det["fp_per_scan"] == 1 / 4
    assert (det["iou"], det["dice"], det["iou_sd"], det["dice_sd"]) == (1.0, 1.0, 0.0, 0.0)
    n = int(edh.sum())
    assert det["dice_scan"] == pytest.approx((2 * n / (n + 4 + n) + 0.0) / 2)  # records 1 and 3; 0 and 2 are empty

    # the multi-class outcome: the keys every multi-class model had, and the weighted ones beside them
    assert m["subtype.accuracy"] == 0.75 and m["subtype.balanced_accuracy"] == 0.75 and m["subtype.auc"] == 1.0
    assert m["subtype.auc_weighted"] == 1.0
    assert m["subtype.precision_weighted"] == pytest.approx((1 + 2 / 3) / 2)  # beta decided 3 times, right twice
    assert (m["subtype.confusion.alpha.alpha"], m["subtype.confusion.alpha.beta"],
            m["subtype.confusion.beta.alpha"], m["subtype.confusion.beta.beta"]) == (1, 1, 0, 2)
    for name in ("accuracy", "auc_weighted", "precision_weighted", "f1_weighted"):
        assert m[f"subtype.{name}.ci_low"] <= m[f"subtype.{name}"] <= m[f"subtype.{name}.ci_high"], name
    assert evaluate(model, records, progress=False) == m  # the bootstrap's seed is fixed

    # a model that returns no lesion at all is not scored as a detector that missed them all
    reads.clear()
    quiet = evaluate(LesionModel({}, subtype, key_slice), records, progress=False)
    assert sorted(reads) == sorted(r.study_id for r in records[1::2])  # for the pointing game alone
    assert not any(k.startswith("detection.") for k in quiet)
    assert {k: v for k, v in m.items() if not k.startswith("detection.")} == quiet
