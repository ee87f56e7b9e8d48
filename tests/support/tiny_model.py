"""A small real network that honours the model contract, for exercising the pipeline.

Random weights (seeded), a real forward pass: a per-slice CNN, attention over slices, one
sigmoid output; the attention picks key slices and the last feature map is the heatmap.
Not a product model and never trained.

Fault tests can hold a running node inside ``predict``: when the environment variable
``TINY_MODEL_HOLD`` names a file that exists, ``predict`` writes ``<that file>.running``
(holding the series UID) and waits, polling, until the file is removed. Unset (the default),
``predict`` never waits. When ``TINY_MODEL_FAIL`` names a file that exists, ``predict`` raises
``RuntimeError`` (a model failure, e.g. out of memory) instead.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neuroread.models import (
    Code,
    Finding,
    Heatmap,
    InputSlot,
    KeySlice,
    Label,
    Lesion,
    ModelCard,
    ModelEntry,
    ModelResult,
    ModelSpec,
    SeriesVolume,
)

SPEC = ModelSpec(
    name="tiny-test",
    version="0.1.0",
    summary="test network: per-slice CNN with slice attention (random weights)",
    slots=(InputSlot("ct", "CT", min_slices=3, description="any CT"),),
    labels=(Label("finding", Code("404684003", "SCT", "Clinical finding"), 0.5),),
    explanations=("attention",),
)
HOLD_ENV = "TINY_MODEL_HOLD"
FAIL_ENV = "TINY_MODEL_FAIL"


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


class TinyModel:
    spec = SPEC

    def __init__(self) -> None:
        self.net: _Net | None = None
        self.card: ModelCard | None = None

    def load(self, weights: Path | None, device: str = "cpu") -> None:
        torch.manual_seed(0)
        self.net = _Net().eval()
        blob = b"".join(p.detach().numpy().tobytes() for p in self.net.parameters())
        self.card = ModelCard({"layers": 2}, hashlib.sha256(blob).hexdigest(), "none: random weights", demo=True)

    def predict(self, inputs: dict[str, SeriesVolume]) -> ModelResult:
        if self.net is None or self.card is None:
            raise RuntimeError("TinyModel.predict before load")
        vol = inputs["ct"]
        fail = os.environ.get(FAIL_ENV)
        if fail and Path(fail).exists():
            raise RuntimeError(f"injected model failure ({FAIL_ENV})")
        _hold(vol.series_instance_uid)
        x = torch.from_numpy(np.clip((vol.array.astype(np.float32) + 0.0) / 80.0, 0, 1))[:, None]
        with torch.no_grad():
            prob, attention, maps = self.net(x)
        att = attention.numpy()
        order = np.argsort(-att, kind="stable")[:3]
        key = tuple(KeySlice(vol.series_instance_uid, int(k), vol.sop_instance_uids[k], float(att[k]), r + 1)
                    for r, k in enumerate(order))
        heat = maps.numpy().astype(np.float32)
        mask = heat >= np.quantile(heat, 0.99)
        voxel = float(np.prod(vol.spacing))
        idx = np.argwhere(mask).mean(axis=0)
        centroid = np.asarray(vol.origin) + np.asarray(vol.direction) @ (idx[::-1] * np.asarray(vol.spacing))
        lb = SPEC.labels[0]
        return ModelResult(
            model=SPEC.name, version=SPEC.version, card=self.card,
            findings=(Finding(lb.name, lb.code, float(prob), lb.threshold),),
            key_slices=key,
            heatmaps=(Heatmap(vol.series_instance_uid, "attention", heat, "mean feature map"),),
            lesions=(Lesion(vol.series_instance_uid, lb.name, lb.code, mask, float(mask.sum()) * voxel,
                            tuple(float(v) for v in centroid), location="brightest 1%"),),
        )


ENTRY = ModelEntry(SPEC, TinyModel)
