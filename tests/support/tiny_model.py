"""A small real network that honours the model contract, for exercising the pipeline.

Random weights (seeded, written by :func:`write_weights` to ``tests/data/tiny-test.pt``, the
entry's committed weights: ``python -m support.tiny_model`` from ``tests/`` writes them again,
byte for byte), a real forward pass: a per-slice CNN, attention over slices, one sigmoid
output; the attention picks key slices and gives the slice scores, the last feature map
(scaled to [0, 1]) is the heatmap, its brightest 1% a lesion. Not a product model and never
trained.

Fault tests can hold a running node inside ``predict``: when the environment variable
``TINY_MODEL_HOLD`` names a file that exists, ``predict`` writes ``<that file>.running``
(holding the series UID) and waits, polling, until the file is removed. Unset (the default),
``predict`` never waits. When ``TINY_MODEL_FAIL`` names a file that exists, ``predict`` raises
``RuntimeError`` (a model failure, e.g. out of memory) instead. When ``TINY_MODEL_CRASH`` names
a file that holds the series UID being predicted, ``predict`` kills its own process with SIGKILL
(a model that crashes its worker: a segfault, the kernel's OOM killer).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neuroread.models import (
    UCUM_RATIO,
    Code,
    Finding,
    Heatmap,
    InputSlot,
    KeySlice,
    Label,
    Lesion,
    Measurement,
    ModelCard,
    ModelEntry,
    ModelResult,
    ModelSpec,
    MultiLabel,
    SeriesVolume,
    SliceScores,
)
from neuroread.models.checkpoint import load_checkpoint, save_checkpoint

SPEC = ModelSpec(
    name="tiny-test",
    version="0.1.0",
    summary="test network: per-slice CNN with slice attention (random weights)",
    slots=(InputSlot("ct", "CT", min_slices=3, description="any CT"),),
    outcomes=(MultiLabel((Label("finding", Code("404684003", "SCT", "Clinical finding"), 0.5),)),),
    explanations=("attention",),
)
WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "tiny-test.pt"
ATTENTION = Code("TINYATTENTION", "99NEUROREAD", "Tiny slice attention")
BRIGHTEST = Code("TINYMEAN", "99NEUROREAD", "Mean feature in lesion")
SITE = Code("12738006", "SCT", "Brain")
HOLD_ENV = "TINY_MODEL_HOLD"
FAIL_ENV = "TINY_MODEL_FAIL"
CRASH_ENV = "TINY_MODEL_CRASH"


def _hold(series_uid: str) -> None:
    """Wait while the file named by ``$TINY_MODEL_HOLD`` exists (see the module docstring)."""
    name = os.environ.get(HOLD_ENV)
    if not name or not Path(name).exists():
        return
    hold = Path(name)
    hold.with_name(hold.name + ".running").write_text(series_uid)
    while hold.exists():
        time.sleep(0.05)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.score = nn.Linear(4, 1)
        self.out = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (slices, 1, H, W) in [0, 1] → (probability (), attention (slices,), maps (slices, H, W))."""
        maps = self.features(x)
        pooled = maps.amax(dim=(2, 3))
        attention = torch.softmax(self.score(pooled).squeeze(1), dim=0)
        merged = (attention[:, None] * pooled).sum(dim=0)
        return torch.sigmoid(self.out(merged)).squeeze(), attention, maps.mean(dim=1)


def write_weights(path: Path = WEIGHTS, model: str = SPEC.name, seed: int = 0, net: nn.Module | None = None) -> str:
    """Save seeded random weights of the network (or ``net``'s) as ``model``'s checkpoint; returns their SHA-256."""
    if net is None:
        torch.manual_seed(seed)
        net = _Net()
    return save_checkpoint(path, model=model, config={"layers": 2}, labels=["finding"], state_dict=net.state_dict(),
                           architecture={"layers": 2}, training_data="none: seeded random weights", demo=True)


class TinyModel:
    spec = SPEC

    def __init__(self) -> None:
        self.net: _Net | None = None
        self.card: ModelCard | None = None

    def load(self, weights: Path, device: str = "cpu") -> None:
        ckpt = load_checkpoint(Path(weights), SPEC.name)
        net = _Net()
        net.load_state_dict(ckpt.state_dict)
        self.net, self.card = net.eval(), ckpt.card

    def predict(self, inputs: dict[str, SeriesVolume]) -> ModelResult:
        if self.net is None or self.card is None:
            raise RuntimeError("TinyModel.predict before load")
        vol = inputs["ct"]
        fail = os.environ.get(FAIL_ENV)
        if fail and Path(fail).exists():
            raise RuntimeError(f"injected model failure ({FAIL_ENV})")
        crash = os.environ.get(CRASH_ENV)
        if crash and Path(crash).exists() and Path(crash).read_text().strip() == vol.series_instance_uid:
            os.kill(os.getpid(), signal.SIGKILL)
        _hold(vol.series_instance_uid)
        x = torch.from_numpy(np.clip((vol.array.astype(np.float32) + 0.0) / 80.0, 0, 1))[:, None]
        with torch.no_grad():
            prob, attention, maps = self.net(x)
        att = attention.numpy()
        order = np.argsort(-att, kind="stable")[:3]
        uid = vol.series_instance_uid
        key = tuple(KeySlice(uid, int(k), vol.sop_instance_uids[k], float(att[k]), r + 1) for r, k in enumerate(order))
        heat = maps.numpy().astype(np.float32)
        heat = heat / max(float(heat.max()), 1e-12)
        mask = heat >= np.quantile(heat, 0.99)
        voxel = float(np.prod(vol.spacing))
        centroid = vol.index_to_lps(np.argwhere(mask).mean(axis=0))
        lb = SPEC.labels[0]
        return ModelResult(
            model=SPEC.name, version=SPEC.version, card=self.card,
            findings=(Finding(lb.name, lb.code, float(prob), lb.threshold),),
            key_slices=key,
            slice_scores=(SliceScores(uid, ATTENTION, tuple(range(len(att))), tuple(float(a) for a in att), UCUM_RATIO),),
            heatmaps=(Heatmap(uid, "attention", heat, explains=lb.name, value_range=(0.0, 1.0),
                              description="mean feature map"),),
            lesions=(Lesion(uid, lb.name, lb.code, mask, float(mask.sum()) * voxel, tuple(float(v) for v in centroid),
                            location=SITE, measurements=(Measurement(BRIGHTEST, float(heat[mask].mean()), UCUM_RATIO),),
                            probability=float(prob)),),
        )


ENTRY = ModelEntry(SPEC, TinyModel, demo_weights=WEIGHTS)

if __name__ == "__main__":  # python -m support.tiny_model (from tests/): write the committed weights again
    print(write_weights())
