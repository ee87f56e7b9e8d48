"""Which weights a model runs with and what they are: the resolution order, the typed view of a
file, the catalog the node shares between threads, and the checkpoint details they rest on
(float16 storage, card thresholds).

Every file is a tiny ct-hemorrhage checkpoint written here; the committed demo weights are
never needed (an entry's committed file is replaced by one in a temporary folder).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from neuroread.models import ModelRegistry
from neuroread.models.checkpoint import load_checkpoint, save_checkpoint, state_dict_sha256
from neuroread.models.ct_hemorrhage.model import ENTRY, ENTRY_CQ500, SPEC
from neuroread.models.ct_hemorrhage.network import DrCT2, DrCT2Config
from neuroread.models.weights import (
    WEIGHTS_ENV,
    MissingWeights,
    Weights,
    WeightsCatalog,
    built_demo_path,
    resolve_weights,
)

NAME = SPEC.name
CONFIG = DrCT2Config(n_labels=6, slices=4, key_slices=2, input_size=16, zoom_size=16, backbone=(4, "M"),
                     gru_hidden=4, aps_fc=4, head=(4, 4), name="test")


# Wide enough that the tensors, not the file's bookkeeping, make most of its size.
WIDE = dataclasses.replace(CONFIG, backbone=(8, "M"), gru_hidden=32, aps_fc=32, head=(32, 16))


def _state(seed: int, config: DrCT2Config = CONFIG) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return DrCT2(config).state_dict()


def _save(path: Path, *, seed: int = 0, model: str = NAME, thresholds=None, demo: bool = True, half: bool = False,
          config: DrCT2Config = CONFIG) -> str:
    return save_checkpoint(path, model=model, config=config.to_dict(), labels=[lb.name for lb in SPEC.labels],
                           state_dict=_state(seed, config), architecture=config.to_dict(),
                           training_data="none: random weights (test)", demo=demo, thresholds=thresholds, half=half)


@pytest.fixture
def committed(tmp_path) -> Path:
    """The entry's committed demo weights, stood in for by a file of ours."""
    path = tmp_path / "committed" / f"{NAME}-demo.pt"
    _save(path, seed=1)
    return path


@pytest.fixture
def entry(committed):
    return dataclasses.replace(ENTRY, demo_weights=committed)


@pytest.fixture
def rebuilt(tmp_path, monkeypatch) -> Path:
    """A ``$NEUROREAD_WEIGHTS`` folder (conftest points it at an empty one) holding rebuilt demo weights."""
    folder = tmp_path / "rebuilt"
    _save(folder / f"{NAME}-demo.pt", seed=2)
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    return folder / f"{NAME}-demo.pt"


# -- resolution order ---------------------------------------------------------------------------------


def test_a_configured_file_comes_first(tmp_path, entry, rebuilt):
    configured = tmp_path / "site.pt"
    _save(configured, seed=3)
    assert resolve_weights(entry, configured) == configured
    with pytest.raises(MissingWeights, match=rf"model {NAME}: the configured weights file .*gone\.pt does not exist "
                                             rf"\(models\.{NAME}\.weights\)"):
        resolve_weights(entry, tmp_path / "gone.pt")  # a configured file never falls back to demo weights


def test_a_configured_path_may_start_at_home(tmp_path, entry, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _save(tmp_path / "w" / "site.pt", seed=3)
    assert resolve_weights(entry, Path("~/w/site.pt")) == tmp_path / "w" / "site.pt"


def test_then_rebuilt_weights_in_the_environment_folder(entry, rebuilt, committed):
    assert resolve_weights(entry) == rebuilt
    rebuilt.unlink()  # the folder without this model's file: the committed weights
    assert resolve_weights(entry) == committed


def test_then_the_committed_demo_weights(entry, committed, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert resolve_weights(entry) == committed
    monkeypatch.setenv(WEIGHTS_ENV, "")  # set but empty: as if unset
    assert resolve_weights(entry) == committed


def test_else_missing_weights_saying_how_to_get_some(tmp_path, committed):
    committed.unlink()
    with pytest.raises(MissingWeights, match=rf"model {NAME} has no weights: none configured and no demo weights at "
                                             rf".*{NAME}-demo\.pt; run `neuroread train-demo {NAME}` and set "
                                             rf"models\.{NAME}\.weights to the file it writes"):
        resolve_weights(dataclasses.replace(ENTRY, demo_weights=committed))
    with pytest.raises(MissingWeights, match=r"model ct-hemorrhage-cq500 has no weights: none configured and no demo "
                                             r"weights come with it; set models\.ct-hemorrhage-cq500\.weights to a "
                                             r"weights file"):
        resolve_weights(ENTRY_CQ500)
    assert issubclass(MissingWeights, ValueError)


def test_built_demo_path_is_where_train_demo_writes(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "cache"))
    assert built_demo_path("ct-hemorrhage-cq500") == tmp_path / "cache" / "ct-hemorrhage-cq500-demo.pt"
    monkeypatch.delenv(WEIGHTS_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert built_demo_path(NAME) == tmp_path / ".cache" / "neuroread" / "weights" / f"{NAME}-demo.pt"


# -- one file: Weights ---------------------------------------------------------------------------------


def test_weights_read_the_files_metadata(tmp_path):
    path = tmp_path / "w.pt"
    sha = _save(path, thresholds={"any": 0.3})
    weights = Weights.read(path, NAME)
    assert weights.path == path and weights.sha256 == sha
    meta = weights.meta
    assert (meta.model, meta.outputs) == (NAME, tuple(lb.name for lb in SPEC.labels))
    assert DrCT2Config.from_dict(meta.config) == CONFIG
    assert meta.card.weights_sha256 == sha and meta.card.demo and meta.card.thresholds == {"any": 0.3}
    with pytest.raises(ValueError, match=f"holds weights for {NAME!r}, not 'ct-hemorrhage-cq500'"):
        Weights.read(path, "ct-hemorrhage-cq500")


def test_effective_spec_takes_card_thresholds_then_overrides(tmp_path):
    path = tmp_path / "w.pt"
    sha = _save(path, thresholds={"any": 0.3, "sah": 0.4})
    weights = Weights.read(path, NAME)
    card = weights.effective_spec(SPEC)
    assert [card.label(k).threshold for k in ("any", "iph", "sah")] == [0.3, 0.5, 0.4]
    overridden = weights.effective_spec(SPEC, {"any": 0.6, "iph": 0.2})
    assert [overridden.label(k).threshold for k in ("any", "iph", "sah")] == [0.6, 0.2, 0.4]
    assert weights.identity(overridden) == f"{sha}|any=0.6,iph=0.2,ivh=0.5,sdh=0.5,edh=0.5,sah=0.4"
    with pytest.raises(ValueError, match=r"thresholds for unknown labels \['fracture'\]"):
        weights.effective_spec(SPEC, {"fracture": 0.5})
    plain = tmp_path / "plain.pt"
    _save(plain)
    assert Weights.read(plain, NAME).effective_spec(SPEC) == SPEC


# -- the catalog ---------------------------------------------------------------------------------------


def _catalog(entry, configured=None, thresholds=None) -> WeightsCatalog:
    return WeightsCatalog(ModelRegistry([entry, ENTRY_CQ500]), configured, thresholds)


def test_catalog_reads_once_and_identity_follows_weights_and_thresholds(tmp_path, entry, committed):
    catalog = _catalog(entry)
    assert catalog.path(NAME) == committed
    first = catalog.weights(NAME)
    assert catalog.weights(NAME) is first  # read once while the file stays as it is
    assert catalog.spec(NAME) == SPEC and catalog.identity(NAME) == first.identity(SPEC)

    other = tmp_path / "other.pt"
    _save(other, seed=5)
    by_weights = _catalog(entry, configured={NAME: other})
    assert by_weights.identity(NAME).split("|")[0] != catalog.identity(NAME).split("|")[0]
    assert by_weights.identity(NAME).split("|")[1] == catalog.identity(NAME).split("|")[1]

    tuned = tmp_path / "tuned.pt"
    _save(tuned, seed=1, thresholds={"any": 0.3})  # the committed weights, with a card threshold
    by_card = _catalog(entry, configured={NAME: tuned})
    assert by_card.identity(NAME).split("|")[0] == catalog.identity(NAME).split("|")[0]
    assert by_card.identity(NAME) != catalog.identity(NAME) and by_card.spec(NAME).label("any").threshold == 0.3

    by_config = _catalog(entry, configured={NAME: tuned}, thresholds={NAME: {"any": 0.7}})
    assert by_config.spec(NAME).label("any").threshold == 0.7  # the configuration overrides the card
    assert len({by_config.identity(NAME), by_card.identity(NAME), catalog.identity(NAME)}) == 3


def test_catalog_reads_a_replaced_file_again(entry, committed):
    catalog = _catalog(entry)
    before = catalog.weights(NAME)
    mtime = committed.stat().st_mtime_ns
    _save(committed, seed=9)  # retrained in place
    os.utime(committed, ns=(mtime + 10**9, mtime + 10**9))  # a later modification time, however coarse the clock
    after = catalog.weights(NAME)
    assert after is not before and after.sha256 != before.sha256
    assert after.sha256 == state_dict_sha256(_state(9))
    assert catalog.identity(NAME).startswith(after.sha256)


def test_catalog_status_says_what_runs_or_why_not(tmp_path, entry, committed):
    catalog = _catalog(entry)
    ok, text = catalog.status(NAME)
    assert ok and text == f"demo weights (synthetic phantoms) {committed} (sha256 {catalog.weights(NAME).sha256[:12]})"
    site = tmp_path / "site.pt"
    sha = _save(site, demo=False)
    assert _catalog(entry, configured={NAME: site}).status(NAME) == (True, f"weights {site} (sha256 {sha[:12]})")

    ok, text = catalog.status("ct-hemorrhage-cq500")
    assert not ok and "no demo weights come with it; set models.ct-hemorrhage-cq500.weights" in text
    foreign = tmp_path / "foreign.pt"
    _save(foreign, model="ct-hemorrhage-cq500")
    ok, text = _catalog(entry, configured={NAME: foreign}).status(NAME)
    assert not ok and text.startswith(f"model {NAME}: weights unusable: ") and "holds weights for" in text
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    ok, text = _catalog(entry, configured={NAME: junk}).status(NAME)
    assert not ok and "not a readable checkpoint" in text
    with pytest.raises(MissingWeights):
        catalog.weights("ct-hemorrhage-cq500")


def test_catalog_refuses_unknown_models_and_labels_when_built(entry, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'ct-hemorage'.*Did you mean ct-hemorrhage"):
        _catalog(entry, configured={"ct-hemorage": tmp_path / "w.pt"})
    with pytest.raises(ValueError, match=r"thresholds for unknown labels \['bleed'\]"):
        _catalog(entry, thresholds={NAME: {"bleed": 0.5}})
    assert _catalog(entry, configured={NAME: None}).configured == {}  # None: not configured


# -- the checkpoint details the catalog rests on ---------------------------------------------------------


def test_half_checkpoints_are_smaller_and_load_back_as_float32(tmp_path):
    state = _state(0, WIDE)
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    full_sha = _save(full, config=WIDE)
    half_sha = _save(half, config=WIDE, half=True)
    assert any(not v.is_floating_point() for v in state.values())  # batch norm's counters stay integers
    assert half.stat().st_size < 0.6 * full.stat().st_size
    stored = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    assert half_sha == state_dict_sha256(stored) != full_sha  # the hash is of the tensors stored
    loaded = load_checkpoint(half, NAME)
    assert loaded.card.weights_sha256 == half_sha
    for name, value in state.items():
        back = loaded.state_dict[name]
        assert back.dtype == value.dtype, name  # float32 again; integer buffers untouched
        if value.is_floating_point():
            assert torch.equal(back, value.half().float()), name
            torch.testing.assert_close(back, value, rtol=1e-3, atol=1e-4)  # float16's precision
        else:
            assert torch.equal(back, value), name
    assert _save(tmp_path / "again.pt", config=WIDE, half=True) == half_sha


def test_card_thresholds_round_trip(tmp_path):
    path = tmp_path / "w.pt"
    _save(path, thresholds={"any": 0.25, "sah": 0.4})
    assert load_checkpoint(path, NAME).card.thresholds == {"any": 0.25, "sah": 0.4}
    _save(path)
    assert load_checkpoint(path, NAME).card.thresholds == {}


def test_a_card_threshold_outside_the_unit_interval_is_not_read(tmp_path):
    bad = tmp_path / "bad.pt"
    _save(bad, thresholds={"any": 0.3})
    blob = torch.load(bad, weights_only=True)
    blob["card"]["thresholds"]["any"] = 1.5
    torch.save(blob, bad)
    with pytest.raises(ValueError, match=r"its card is not valid: ModelCard\.thresholds\['any'\] must be in \(0, 1\), "
                                         r"got 1\.5"):
        load_checkpoint(bad, NAME)


def test_a_card_threshold_outside_the_unit_interval_is_not_written(tmp_path):
    """Strict when writing: a file load_checkpoint would refuse is never made."""
    for value in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"thresholds\['any'\] must be in \(0, 1\), got {value}"):
            _save(tmp_path / "never.pt", thresholds={"any": value})
        assert not (tmp_path / "never.pt").exists()
