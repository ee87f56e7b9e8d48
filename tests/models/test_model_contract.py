"""The model contract: specs refuse bad values, results are checked against their spec."""
from __future__ import annotations

import dataclasses

import pytest

from neuroread.models import Code, InputSlot, Label, ModelRegistry, ModelSpec, default_registry
from neuroread.models.registry import load_plugin
from support.tiny_model import ENTRY, SPEC


def test_spec_refuses_bad_values_naming_them():
    code = Code("1", "SCT", "x")
    slot = InputSlot("t1", "MR", sequences=("T1",))
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        ModelSpec("m", "1", "s", (slot,), (Label("a", code),))
    with pytest.raises(ValueError, match="unknown sequence classes"):
        InputSlot("x", "MR", sequences=("T7",))
    with pytest.raises(ValueError, match="MR only"):
        InputSlot("x", "CT", sequences=("T1",))
    with pytest.raises(ValueError, match="threshold"):
        Label("a", code, threshold=1.5)
    with pytest.raises(ValueError, match="duplicate label"):
        ModelSpec("m", "1.0.0", "s", (slot,), (Label("a", code), Label("a", code)))
    with pytest.raises(ValueError, match="64 characters"):
        Code("1", "SCT", "x" * 65)


def test_registry_finds_models_and_suggests_names():
    reg = ModelRegistry([ENTRY])
    assert reg.names() == ["tiny-test"] and reg.spec("tiny-test") is SPEC
    with pytest.raises(ValueError, match="Did you mean tiny-test"):
        reg.spec("tiny-tset")
    with pytest.raises(ValueError, match="registered twice"):
        reg.with_model(ENTRY)
    assert default_registry().names() == ["ct-hemorrhage"]  # the product models, each with its issue


def test_tiny_model_runs_on_a_phantom_and_its_result_honours_the_contract(ct_case):
    vol = ct_case[0]
    model = ModelRegistry([ENTRY]).create("tiny-test")
    model.load(None)
    result = model.predict({"ct": vol})
    result.check(SPEC, {"ct": vol})
    assert [k.rank for k in result.key_slices] == [1, 2, 3]
    assert result.heatmaps[0].array.shape == vol.array.shape
    again = model.predict({"ct": vol})
    assert again.findings == result.findings  # deterministic


def test_check_names_what_breaks_the_contract(ct_case):
    vol = ct_case[0]
    model = ENTRY.factory()
    model.load(None)
    result = model.predict({"ct": vol})
    h = result.heatmaps[0]
    wrong_grid = dataclasses.replace(result, heatmaps=(dataclasses.replace(h, array=h.array[:-1]),))
    with pytest.raises(ValueError, match="is not its series' grid"):
        wrong_grid.check(SPEC, {"ct": vol})
    k = result.key_slices[0]
    wrong_sop = dataclasses.replace(result, key_slices=(dataclasses.replace(k, sop_instance_uid="1.2.3"),) + result.key_slices[1:])
    with pytest.raises(ValueError, match="wrong SOP instance"):
        wrong_sop.check(SPEC, {"ct": vol})
    with pytest.raises(ValueError, match="do not match labels"):
        dataclasses.replace(result, findings=()).check(SPEC, {"ct": vol})


def test_plugins_add_models_and_bad_references_say_why():
    assert default_registry(["support.tiny_model:ENTRY"]).names() == ["ct-hemorrhage", "tiny-test"]
    assert default_registry(["neuroread.models.ct_hemorrhage.model:ENTRY_CQ500"]).names() == ["ct-hemorrhage",
                                                                                    "ct-hemorrhage-cq500"]
    assert load_plugin("support.tiny_model:ENTRY") == [ENTRY]
    for ref, message in [("no_such_module_here:ENTRY", "cannot import no_such_module_here"),
                         ("support.tiny_model:NOPE", "has no 'NOPE'"),
                         ("support.tiny_model:SPEC", "must be a neuroread.models.ModelEntry or a list of them, got ModelSpec"),
                         ("tiny_model", "expected 'package.module:NAME'")]:
        with pytest.raises(ValueError, match=message):
            load_plugin(ref)
    with pytest.raises(ValueError, match="registered twice"):
        default_registry(["support.tiny_model:ENTRY", "support.tiny_model:ENTRY"])
