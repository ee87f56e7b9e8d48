"""Shared fixtures (small phantom sets, tiny ct-hemorrhage, ms-csvd, axspa-sij and ad-lrp weights, made once per test session) and
the markers by folder: a test under ``tests/<kind>/`` is marked ``<kind>`` (unit, models,
training, integration, e2e), so ``pytest -m unit`` and ``pytest tests/unit`` pick the same tests."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from neuroread.training.phantoms.registry import generate_set

KINDS = ("unit", "models", "training", "integration", "e2e")
SET_SEED = 7


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).parent
    for item in items:
        kind = Path(item.fspath).relative_to(tests).parts[0]
        if kind not in KINDS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives under tests/<kind>/, kind one of {', '.join(KINDS)}")
        item.add_marker(getattr(pytest.mark, kind))
SET_N = 4
# Tasks whose model reads clinical matrices only: their session set is full-size (cmb-svd: SWI
# microbleeds of 2-10 mm need 3D slices of at most 3.5 mm; the small SWI phantoms have 5-7 mm).
FULL_SIZE = {"cmb-svd"}


class _Sets(dict):
    """Phantom sets (small but for :data:`FULL_SIZE`), made on first use per task and kept for the session."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, task: str) -> Path:
        out = self.root / task
        generate_set(task, SET_N, SET_SEED, out, size="full" if task in FULL_SIZE else "small", workers=2,
                     progress=False)
        self[task] = out
        return out


@pytest.fixture(scope="session", autouse=True)
def _no_cached_demo_weights(tmp_path_factory):
    """Demo weights rebuilt on this machine (``$NEUROREAD_WEIGHTS``) must not change what a test
    sees: every test (and every process it starts) finds that folder empty, so models run with
    their committed demo weights unless a test configures weights itself."""
    previous = os.environ.get("NEUROREAD_WEIGHTS")
    os.environ["NEUROREAD_WEIGHTS"] = str(tmp_path_factory.mktemp("no-demo-weights"))
    yield
    if previous is None:
        del os.environ["NEUROREAD_WEIGHTS"]
    else:
        os.environ["NEUROREAD_WEIGHTS"] = previous


@pytest.fixture(scope="session")
def phantom_sets(tmp_path_factory) -> dict[str, Path]:
    """Four small studies of a task (seed 7): ``phantom_sets[task]`` is the set's folder."""
    return _Sets(tmp_path_factory.mktemp("phantoms"))


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is required; .ci/run installs it")
    return path


@pytest.fixture(scope="session")
def ct_case(phantom_sets):
    """The first small ct-hemorrhage phantom read as the node reads it: (volume, source
    datasets in slice order, the tiny test model's result with a second lesion added)."""
    import dataclasses

    import numpy as np
    import pydicom

    from neuroread.models import Code, Lesion
    from neuroread.models.volume import load_series
    from support.tiny_model import ENTRY

    study = sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))[0]
    files = sorted((study / "S01").glob("*.dcm"))
    vol = load_series(files)
    by_uid = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, files)}
    sources = [by_uid[uid] for uid in vol.sop_instance_uids]
    model = ENTRY.factory()
    model.load(ENTRY.demo_weights)
    result = model.predict({"ct": vol})
    cube = np.zeros(vol.array.shape, bool)
    cube[2:4, 10:14, 20:25] = True
    extra = Lesion(vol.series_instance_uid, "finding", Code("404684003", "SCT", "Clinical finding"), cube,
                   float(cube.sum() * np.prod(vol.spacing)), (0.0, 0.0, 0.0), probability=0.25)
    return vol, sources, dataclasses.replace(result, lesions=result.lesions + (extra,))


def _tiny_checkpoint(recipe, settings, records, out: Path, training_data: str, *, thresholds: bool = False) -> Path:
    """Train ``recipe``'s network on ``records`` with ``settings`` by the shared loop and write it to
    ``out`` as demo weights with ``training_data`` (and its chosen thresholds, with ``thresholds``)."""
    from neuroread.models.checkpoint import save_checkpoint
    from neuroread.training.loop import fit

    trained = fit(recipe, settings, records, progress=False)
    config = recipe.checkpoint_config(trained.net, settings)
    save_checkpoint(out, model=recipe.model, config=config, labels=recipe.outputs(),
                    state_dict=trained.net.state_dict(), architecture=config, training_data=training_data,
                    demo=True, thresholds=trained.thresholds if thresholds else None)
    return out


TINY_DRCT2 = {"slices": 8, "key_slices": 6, "input_size": 32, "zoom_size": 64, "backbone": [4, "M", 8, "M"],
              "gru_hidden": 4, "aps_fc": 8, "head": [8, 4], "freeze_backbone": False, "name": "tiny"}


@pytest.fixture(scope="session")
def weights(phantom_sets, tmp_path_factory) -> Path:
    """A tiny ct-hemorrhage checkpoint (DrCT2 at toy size) trained one epoch on the four session
    phantoms by the shared training loop and the model's recipe, marked demo: real weights for
    the product model in seconds (four phantoms are too few for a validation fifth: thresholds 0.5)."""
    from neuroread.training.datasets import RSNA_LABELS, read_phantoms
    from neuroread.training.recipes.ct_hemorrhage import RECIPE

    records = read_phantoms(phantom_sets["ct-hemorrhage"], labels=RSNA_LABELS)
    settings = RECIPE.settings(network=TINY_DRCT2, epochs=1, batch_size=2, threads=1, augment=False,
                               pretrain_epochs=0)
    return _tiny_checkpoint(RECIPE, settings, records, tmp_path_factory.mktemp("weights") / "ct-hemorrhage-tiny.pt",
                            "four test phantoms, one epoch", thresholds=True)


TINY_TAN = {"widths": [4, 8, 8, 8], "input_size": 64, "pool_hidden": 8, "max_slices": 12, "name": "tiny"}


@pytest.fixture(scope="session")
def ms_csvd_weights(phantom_sets, tmp_path_factory) -> Path:
    """A tiny ms-csvd checkpoint (the transfer attention network at toy widths) trained one epoch
    on the four session FLAIR phantoms by the shared loop and the model's recipe, marked demo."""
    from neuroread.training.recipes.ms_csvd import RECIPE

    records, _ = RECIPE.read_records(phantom_sets["ms-csvd"], "phantoms", progress=False)
    settings = RECIPE.settings("demo", network=TINY_TAN, epochs=1, batch_size=2, threads=1, pretrain_epochs=1)
    return _tiny_checkpoint(RECIPE, settings, records, tmp_path_factory.mktemp("weights") / "ms-csvd-tiny.pt",
                            "four test phantoms, one epoch")


TINY_MSFA = {"input_shape": [6, 32, 24], "voxel_mm": [10.0, 7.0, 7.0], "widths": [4, 4, 4], "attention_dim": 4,
             "localiser_width": 2, "name": "tiny"}


@pytest.fixture(scope="session")
def axspa_weights(phantom_sets, tmp_path_factory) -> Path:
    """A tiny axspa-sij checkpoint (MSFANet and its joint localiser at toy size) trained one epoch
    on the four session T1 + fat-suppressed phantoms by the shared loop and the model's recipe, marked demo."""
    from neuroread.training.recipes.axspa_sij import RECIPE

    records, _ = RECIPE.read_records(phantom_sets["axspa-sij"], "phantoms", progress=False)
    settings = RECIPE.settings("demo", network=TINY_MSFA, epochs=1, batch_size=2, localiser_epochs=1,
                               localiser_batch=2, threads=1)
    return _tiny_checkpoint(RECIPE, settings, records, tmp_path_factory.mktemp("weights") / "axspa-sij-tiny.pt",
                            "four test phantoms, one epoch")


TINY_AD = {"widths": [2, 4, 4, 4], "hidden": 8, "name": "tiny"}


@pytest.fixture(scope="session")
def ad_weights(phantom_sets, tmp_path_factory) -> Path:
    """A tiny ad-lrp checkpoint trained two epochs on the four session 3D T1 phantoms by the shared
    loop and the model's recipe (its controls' reference densities included), marked demo."""
    from neuroread.training.recipes.ad_lrp import RECIPE

    records, _ = RECIPE.read_records(phantom_sets["ad-lrp"], "phantoms", progress=False)
    settings = RECIPE.settings("demo", network=TINY_AD, epochs=2, batch_size=2, threads=1)
    return _tiny_checkpoint(RECIPE, settings, records, tmp_path_factory.mktemp("weights") / "ad-lrp-tiny.pt",
                            "four test phantoms, two epochs")


@pytest.fixture(scope="module")
def module_storescp(tmp_path_factory):
    """A dcmtk storescp shared by a module's tests (e.g. a modality Orthanc forwards to)."""
    from support.peers import StoreSCP

    scp = StoreSCP(tmp_path_factory.mktemp("storescp"))
    yield scp
    scp.stop()


@pytest.fixture(scope="session")
def head_ct(phantom_sets) -> list[Path]:
    """The first small phantom head CT: its 24 slice files, in order."""
    study = sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))[0]
    files = sorted((study / "S01").glob("*.dcm"))
    assert len(files) >= 8
    return files


@pytest.fixture(scope="module")
def results_scp():
    """A pynetdicom storage SCP that counts every C-STORE it receives (support.node_process.ResultSCP)."""
    from support.node_process import ResultSCP

    scp = ResultSCP().start()
    yield scp
    scp.stop()

