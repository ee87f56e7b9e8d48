"""The model contract: specs and results refuse what is malformed, and every registered model honours it.

The tests of the second half are parametrized over the registry (the product models from the
entry points, plus the test models), as torchvision's ``test_models.py`` runs every test for
every model: a new model gets them for free.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from neuroread.models import (
    UCUM_MM,
    UCUM_RATIO,
    Classification,
    ClassLabel,
    Code,
    Column,
    Heatmap,
    InputSlot,
    Label,
    Lesion,
    Measurement,
    ModelRegistry,
    ModelSpec,
    MultiClass,
    MultiLabel,
    SliceScores,
    Table,
    TableRow,
    default_registry,
)
from neuroread.models.registry import load_plugin
from neuroread.models.weights import MissingWeights, Weights, resolve_weights
from neuroread.training.bench import synthetic_volume
from support import tiny_model, tiny_pair_model
from support.tiny_model import ENTRY, SPEC

CODE = Code("1", "SCT", "x")
SLOT = InputSlot("t1", "MR", sequences=("T1",))
DIAGNOSIS = MultiClass("diagnosis", Code("439401001", "SCT", "Diagnosis"),
                       (ClassLabel("ms", Code("24700007", "SCT", "Multiple sclerosis")),
                        ClassLabel("csvd", Code("CSVD", "99NEUROREAD", "Cerebral small vessel disease"))))


# -- specs ------------------------------------------------------------------------------------------

def test_spec_refuses_bad_values_naming_them():
    findings = MultiLabel((Label("a", CODE),))
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        ModelSpec("m", "1", "s", (SLOT,), (findings,))
    with pytest.raises(ValueError, match="unknown sequence classes"):
        InputSlot("x", "MR", sequences=("T7",))
    with pytest.raises(ValueError, match="MR only"):
        InputSlot("x", "CT", sequences=("T1",))
    with pytest.raises(ValueError, match=r"InputSlot 'x': unknown image components \['REAL'\]"):
        InputSlot("x", "MR", sequences=("SWI",), image_components=("MAGNITUDE", "REAL"))
    with pytest.raises(ValueError, match="threshold"):
        Label("a", CODE, threshold=1.5)
    with pytest.raises(ValueError, match="duplicate label or class"):
        ModelSpec("m", "1.0.0", "s", (SLOT,), (MultiLabel((Label("a", CODE), Label("a", CODE))),))
    with pytest.raises(ValueError, match="duplicate label or class"):  # a label and a class share one namespace
        ModelSpec("m", "1.0.0", "s", (SLOT,), (MultiLabel((Label("ms", CODE),)), DIAGNOSIS))
    with pytest.raises(ValueError, match="outcomes must be MultiLabel or MultiClass"):
        ModelSpec("m", "1.0.0", "s", (SLOT,), (Label("a", CODE),))
    with pytest.raises(ValueError, match="at least two classes"):
        MultiClass("d", CODE, (ClassLabel("a", CODE),))
    with pytest.raises(ValueError, match="64 characters"):
        Code("1", "SCT", "x" * 65)


def test_slot_constraints_name_an_earlier_slot():
    t1 = InputSlot("t1", "MR", ("T1",))
    fs = InputSlot("fs", "MR", ("STIR",), same_frame_of_reference_as="t1")
    ModelSpec("m", "1.0.0", "s", (t1, fs), (DIAGNOSIS,))
    with pytest.raises(ValueError, match="tied to 't1', which is not an earlier slot"):
        ModelSpec("m", "1.0.0", "s", (fs, t1), (DIAGNOSIS,))
    with pytest.raises(ValueError, match="names the slot itself"):
        InputSlot("fs", "MR", same_frame_of_reference_as="fs")


def test_thresholds_replace_labels_and_say_themselves_canonically():
    spec = ModelSpec("m", "1.0.0", "s", (SLOT,), (MultiLabel((Label("a", CODE), Label("b", CODE, 0.3))), DIAGNOSIS))
    assert spec.thresholds_text() == "a=0.5,b=0.3"
    moved = spec.with_thresholds({"a": 0.25})
    assert moved.label("a").threshold == 0.25 and moved.label("b").threshold == 0.3 and spec.label("a").threshold == 0.5
    assert moved.thresholds_text() == "a=0.25,b=0.3" and moved.multi_class == spec.multi_class
    with pytest.raises(ValueError, match="unknown labels"):
        spec.with_thresholds({"ms": 0.4})  # a class has no threshold: exactly one is decided
    assert spec.targets == ("a", "b", "ms", "csvd")


# -- results --------------------------------------------------------------------------------------

def test_a_classification_decides_exactly_the_most_probable_class():
    c = Classification.of(DIAGNOSIS, [0.3, 0.7])
    assert c.decided == "csvd" and c.decided_class.code.meaning == "Cerebral small vessel disease"
    with pytest.raises(ValueError, match="sum to"):
        Classification.of(DIAGNOSIS, [0.6, 0.6])  # two exclusive classes cannot both be likely
    with pytest.raises(ValueError, match="not the most probable"):
        dataclasses.replace(c, decided="ms")
    with pytest.raises(ValueError, match="1 probabilities for 2 classes"):
        Classification.of(DIAGNOSIS, [1.0])
    tie = Classification.of(DIAGNOSIS, [0.5, 0.5])
    assert tie.decided == "ms"  # a tie goes to the first class: still exactly one


def test_measurements_tables_and_slice_scores_carry_codes_and_units():
    with pytest.raises(ValueError, match="unit must be a UCUM code"):
        Measurement(CODE, 1.0, Code("mm", "DCM", "mm"))
    with pytest.raises(ValueError, match="finite"):
        Measurement(CODE, float("nan"), UCUM_MM)
    col = Column("density", Code("D", "99NEUROREAD", "Relevance density"), UCUM_RATIO)
    with pytest.raises(ValueError, match="row 0 has 2 values for 1 columns"):
        Table("regions", CODE, (col,), (TableRow(Code("h", "SCT", "Hippocampus"), (1.0, 2.0)),))
    with pytest.raises(ValueError, match="distinct codes"):
        Table("regions", CODE, (col,), (TableRow(CODE, (1.0,)), TableRow(CODE, (2.0,))))
    with pytest.raises(ValueError, match="distinct, ascending"):
        SliceScores("1.2", CODE, (3, 1), (0.1, 0.2), UCUM_RATIO)


def test_heatmaps_say_what_they_explain_with_sign_and_range():
    a = np.zeros((2, 4, 4), np.float32)
    a[0, 1, 1] = 0.8
    Heatmap("1.2", "attention", a, explains="a", value_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="outside its value_range"):
        Heatmap("1.2", "attention", a * 2, explains="a", value_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="unsigned"):
        Heatmap("1.2", "lrp", a - 0.5, explains="a", value_range=(-1.0, 1.0))
    signed = Heatmap("1.2", "lrp", a - 0.5, explains="a", value_range=(-1.0, 1.0), signed=True, branch="fuse")
    assert signed.signed and signed.branch == "fuse"
    with pytest.raises(ValueError, match="name the label or class"):
        Heatmap("1.2", "attention", a, explains="", value_range=(0.0, 1.0))


def test_a_lesion_location_is_coded():
    mask = np.zeros((2, 4, 4), bool)
    mask[0, 1, 1] = True
    with pytest.raises(ValueError, match="location must be a Code"):
        Lesion("1.2", "cmb", CODE, mask, 1.0, (0.0, 0.0, 0.0), location="lobar")
    with pytest.raises(ValueError, match="probability"):
        Lesion("1.2", "cmb", CODE, mask, 1.0, (0.0, 0.0, 0.0), probability=1.5)


def test_check_names_what_breaks_the_contract(ct_case):
    vol = ct_case[0]
    model = ENTRY.factory()
    model.load(ENTRY.demo_weights)
    result = model.predict({"ct": vol})
    h = result.heatmaps[0]
    wrong_grid = dataclasses.replace(result, heatmaps=(dataclasses.replace(h, array=h.array[:-1]),))
    with pytest.raises(ValueError, match="is not its series' grid"):
        wrong_grid.check(SPEC, {"ct": vol})
    object.__setattr__(wrong_target := dataclasses.replace(h), "explains", "tumour")
    with pytest.raises(ValueError, match="explains 'tumour', not a label or class"):
        dataclasses.replace(result, heatmaps=(wrong_target,)).check(SPEC, {"ct": vol})
    k = result.key_slices[0]
    wrong_sop = dataclasses.replace(result, key_slices=(dataclasses.replace(k, sop_instance_uid="1.2.3"),) + result.key_slices[1:])
    with pytest.raises(ValueError, match="wrong SOP instance"):
        wrong_sop.check(SPEC, {"ct": vol})
    with pytest.raises(ValueError, match="do not match labels"):
        dataclasses.replace(result, findings=()).check(SPEC, {"ct": vol})
    with pytest.raises(ValueError, match="do not match multi-class outcomes"):
        dataclasses.replace(result, classifications=(Classification.of(DIAGNOSIS, [0.2, 0.8]),)).check(SPEC, {"ct": vol})


# -- the registry ----------------------------------------------------------------------------------

def test_registry_finds_models_and_suggests_names():
    reg = ModelRegistry([ENTRY])
    assert reg.names() == ["tiny-test"] and reg.spec("tiny-test") is SPEC
    with pytest.raises(ValueError, match="Did you mean tiny-test"):
        reg.spec("tiny-tset")
    with pytest.raises(ValueError, match="registered twice"):
        reg.with_model(ENTRY)
    assert default_registry().names() == ["ad-lrp", "axspa-sij", "cmb-svd", "ct-hemorrhage", "ms-csvd"]  # the product models, each with its issue


def test_plugins_add_models_and_bad_references_say_why():
    assert default_registry(["support.tiny_model:ENTRY"]).names() == ["ad-lrp", "axspa-sij", "cmb-svd", "ct-hemorrhage", "ms-csvd",
                                                                      "tiny-test"]
    assert default_registry(["neuroread.models.ct_hemorrhage.model:ENTRY_CQ500"]).names() == [
        "ad-lrp", "axspa-sij", "cmb-svd", "ct-hemorrhage", "ct-hemorrhage-cq500", "ms-csvd"]
    assert load_plugin("support.tiny_model:ENTRY") == [ENTRY]
    for ref, message in [("no_such_module_here:ENTRY", "cannot import no_such_module_here"),
                         ("support.tiny_model:NOPE", "has no 'NOPE'"),
                         ("support.tiny_model:SPEC", "must be a neuroread.models.ModelEntry or a list of them, got ModelSpec"),
                         ("tiny_model", "expected 'package.module:NAME'")]:
        with pytest.raises(ValueError, match=message):
            load_plugin(ref)
    with pytest.raises(ValueError, match="registered twice"):
        default_registry(["support.tiny_model:ENTRY", "support.tiny_model:ENTRY"])


def test_a_model_without_weights_says_how_to_get_some(tmp_path):
    bare = dataclasses.replace(ENTRY, demo_weights=None)
    with pytest.raises(MissingWeights, match="set models.tiny-test.weights"):
        resolve_weights(bare)
    gone = dataclasses.replace(ENTRY, demo_weights=tmp_path / "gone.pt")
    with pytest.raises(MissingWeights, match="neuroread train-demo tiny-test"):
        resolve_weights(gone)
    with pytest.raises(MissingWeights, match="models.tiny-test.weights"):
        resolve_weights(ENTRY, tmp_path / "missing.pt")


# -- every registered model -------------------------------------------------------------------------

REGISTRY = default_registry().with_model(tiny_model.ENTRY).with_model(tiny_pair_model.ENTRY)
MODELS = REGISTRY.names()


def _inputs(spec: ModelSpec) -> dict:
    """A small synthetic series per slot (one frame of reference for all), as the benchmark makes them."""
    return {slot.name: synthetic_volume(slot, max(slot.min_slices, 12), 64, f"2.25.{i + 11}")
            for i, slot in enumerate(spec.slots)}


@pytest.fixture(scope="module", params=MODELS)
def loaded(request):
    name = request.param
    model = REGISTRY.create(name)
    path = resolve_weights(REGISTRY.entry(name))
    model.load(path, "cpu")
    return name, model, path


def test_every_model_has_committed_weights_with_a_card_of_its_own(loaded):
    name, model, path = loaded
    entry = REGISTRY.entry(name)
    assert entry.demo_weights is not None and entry.demo_weights.is_file(), f"{name}: no committed weights"
    assert entry.demo_weights.stat().st_size <= 5 * 2 ** 20, f"{name}: committed weights over 5 MB"
    weights = Weights.read(path, name)
    assert weights.meta.model == name and weights.meta.card == model.card
    assert weights.meta.outputs == tuple(lb.name for lb in model.spec.labels) + tuple(
        c.name for o in model.spec.multi_class for c in o.classes)
    assert model.card.demo and ("phantom" in model.card.training_data or "random weights" in model.card.training_data)
    effective = weights.effective_spec(model.spec)
    assert set(model.card.thresholds) <= {lb.name for lb in model.spec.labels}
    assert all(effective.label(k).threshold == v for k, v in model.card.thresholds.items())


def test_every_model_honours_the_contract_deterministically(loaded):
    name, model, _ = loaded
    spec = REGISTRY.spec(name)
    assert model.spec == spec and REGISTRY.create(name).spec == spec
    inputs = _inputs(spec)
    result = model.predict(inputs)
    result.check(spec, inputs)
    assert result.model == name and result.card is model.card
    assert result.findings or result.classifications
    for h in result.heatmaps:
        assert h.kind in spec.explanations, f"{name}: a {h.kind} map, not among its declared explanations"
    again = model.predict(inputs)
    assert again.findings == result.findings and again.classifications == result.classifications
    assert [k.slice_index for k in again.key_slices] == [k.slice_index for k in result.key_slices]
    assert all(np.array_equal(a.array, b.array) for a, b in zip(again.heatmaps, result.heatmaps))


def test_every_model_refuses_inputs_that_do_not_fill_its_slots(loaded):
    name, model, _ = loaded
    with pytest.raises((ValueError, KeyError)):
        model.predict({"no_such_slot": next(iter(_inputs(model.spec).values()))})


def test_a_network_is_left_as_found_by_predict(loaded):
    name, model, _ = loaded
    net = getattr(model, "net", None)
    if not isinstance(net, torch.nn.Module):
        pytest.skip(f"{name} exposes no torch network")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in net.modules())
    model.predict(_inputs(model.spec))
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert hooks == sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
                        for m in net.modules())


# -- shared modules know no particular model -------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
MODEL_PACKAGES = {"neuroread.models.ct_hemorrhage", "neuroread.training.recipes.ct_hemorrhage",
                  "neuroread.models.cmb_svd", "neuroread.training.recipes.cmb_svd",
                  "neuroread.models.ms_csvd", "neuroread.training.recipes.ms_csvd"}


def _shared_modules():
    """Every module of the shared layers: the contract and pieces in models/, the node, the training
    loop and its shared modules (not a model's package, a model's recipe, nor the phantom generators)."""
    for folder, package in (("models", "neuroread.models"), ("node", "neuroread.node"),
                            ("training", "neuroread.training")):
        for path in sorted((REPO / folder).rglob("*.py")):
            dotted = package + "." + ".".join(path.relative_to(REPO / folder).with_suffix("").parts)
            if any(dotted.startswith(p) for p in MODEL_PACKAGES) or dotted.startswith("neuroread.training.phantoms"):
                continue
            yield path, dotted


def test_no_shared_module_imports_a_model_or_names_one():
    import ast

    offences = []
    for path, dotted in _shared_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against the module's package
                    parent = dotted.rsplit(".", node.level)[0]
                    base = f"{parent}.{base}" if base else parent
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                targets = []
            offences += [f"{path.relative_to(REPO)} imports {t}" for t in targets
                         if any(t == p or t.startswith(p + ".") for p in MODEL_PACKAGES)]
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Name)):
                name = node.name if not isinstance(node, ast.Name) else node.id
                if any(word in name.lower() for word in ("drct2", "hemorrhage", "slice_attention", "msc", "csvd", "microbleed")):
                    offences.append(f"{path.relative_to(REPO)} names {name}")
    assert not offences, "shared modules that know a particular model:\n" + "\n".join(offences)
