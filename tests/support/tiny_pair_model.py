"""A small real two-input network that honours the model contract, for multi-series jobs.

Two slots as the sacroiliac model has them: ``t1`` (MR T1) and ``fs`` (MR fat-suppressed:
STIR, or T2 with SPAIR/SPIR, which the node's classifier calls T2FS). Each series goes
through its own branch (tiny_model's per-slice CNN with slice attention, seeded random
weights, committed as ``tests/data/tiny-pair-test.pt``); the two pooled feature vectors are
joined into one sigmoid output. Each branch gives its series a heatmap and two key slices; the
brightest 1% of the ``fs`` branch's map is a lesion (so a SEG is made on one of the two
series). The ``fs`` slot must share the T1's frame of reference. Not a product model, never trained.
"""
from __future__ import annotations

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
    MultiLabel,
    SeriesVolume,
)
from neuroread.models.checkpoint import load_checkpoint
from support.tiny_model import _Net, write_weights

SPEC = ModelSpec(
    name="tiny-pair-test",
    version="0.1.0",
    summary="test network: two per-slice CNN branches (T1, fat-suppressed) joined (random weights)",
    slots=(InputSlot("t1", "MR", ("T1",), min_slices=3, description="T1 of the sacroiliac joints"),
           InputSlot("fs", "MR", ("STIR", "T2FS"), min_slices=3, description="fat-suppressed STIR or T2 SPAIR",
                     same_frame_of_reference_as="t1")),
    outcomes=(MultiLabel((Label("finding", Code("404684003", "SCT", "Clinical finding"), 0.5),)),),
    explanations=("attention", "mask"),
)
KEY_SLICES_PER_BRANCH = 2
WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "tiny-pair-test.pt"


class _PairNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.t1, self.fs = _Net(), _Net()
        self.out = nn.Linear(8, 1)

    @staticmethod
    def _branch(net: _Net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = net.features(x)
        pooled = maps.amax(dim=(2, 3))
        attention = torch.softmax(net.score(pooled).squeeze(1), dim=0)
        return (attention[:, None] * pooled).sum(dim=0), attention, maps.mean(dim=1)

    def forward(self, t1: torch.Tensor, fs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """t1, fs: (slices, 1, H, W) in [0, 1], each its own size → (probability (), [attention
        (slices,) per branch], [maps (slices, H, W) per branch]), branches in the order t1, fs."""
        f1, a1, m1 = self._branch(self.t1, t1)
        f2, a2, m2 = self._branch(self.fs, fs)
        return torch.sigmoid(self.out(torch.cat([f1, f2]))).squeeze(), [a1, a2], [m1, m2]


def _scaled(vol: SeriesVolume) -> torch.Tensor:
    """MR values divided by the volume's 99th percentile, clipped to [0, 1], as (slices, 1, H, W)."""
    x = vol.array.astype(np.float32)
    top = float(np.percentile(x, 99)) or 1.0
    return torch.from_numpy(np.clip(x / top, 0, 1))[:, None]


class TinyPairModel:
    spec = SPEC

    def __init__(self) -> None:
        self.net: _PairNet | None = None
        self.card: ModelCard | None = None

    def load(self, weights: Path, device: str = "cpu") -> None:
        ckpt = load_checkpoint(Path(weights), SPEC.name)
        net = _PairNet()
        net.load_state_dict(ckpt.state_dict)
        self.net, self.card = net.eval(), ckpt.card

    def predict(self, inputs: dict[str, SeriesVolume]) -> ModelResult:
        """inputs: {"t1": volume, "fs": volume} (any grids, ≥ 3 slices each) → one finding, two
        key slices and one attention heatmap per input, one lesion on ``fs``."""
        if self.net is None or self.card is None:
            raise RuntimeError("TinyPairModel.predict before load")
        vols = [inputs["t1"], inputs["fs"]]
        with torch.no_grad():
            prob, attentions, maps = self.net(*(_scaled(v) for v in vols))
        picks = []  # (score, series volume, slice index), both branches
        for vol, att in zip(vols, attentions):
            att = att.numpy()
            picks += [(float(att[k]), vol, int(k)) for k in np.argsort(-att, kind="stable")[:KEY_SLICES_PER_BRANCH]]
        picks.sort(key=lambda p: -p[0])
        key = tuple(KeySlice(vol.series_instance_uid, k, vol.sop_instance_uids[k], score, rank + 1)
                    for rank, (score, vol, k) in enumerate(picks))
        heat = [m.numpy().astype(np.float32) / max(float(m.max()), 1e-12) for m in maps]
        fs = vols[1]
        mask = heat[1] >= np.quantile(heat[1], 0.99)
        centroid = fs.index_to_lps(np.argwhere(mask).mean(axis=0))
        lb = SPEC.labels[0]
        return ModelResult(
            model=SPEC.name, version=SPEC.version, card=self.card,
            findings=(Finding(lb.name, lb.code, float(prob), lb.threshold),),
            key_slices=key,
            heatmaps=tuple(Heatmap(v.series_instance_uid, "attention", h, explains=lb.name, value_range=(0.0, 1.0),
                                   branch=slot, description=f"{slot} branch mean feature map")
                           for slot, v, h in zip(("t1", "fs"), vols, heat)),
            lesions=(Lesion(fs.series_instance_uid, lb.name, lb.code, mask, float(mask.sum()) * float(np.prod(fs.spacing)),
                            tuple(float(v) for v in centroid)),),
        )


ENTRY = ModelEntry(SPEC, TinyPairModel, demo_weights=WEIGHTS)

if __name__ == "__main__":  # python -m support.tiny_pair_model (from tests/): write the committed weights again
    torch.manual_seed(1)
    print(write_weights(WEIGHTS, SPEC.name, net=_PairNet()))
