"""MSFANet: a 3D multi-sequence relation attention network on sacroiliac T1 and fat-suppressed MRI.

After the paper (``../shared/papers/axspa-sij-msfanet.txt``, sections 1.3.1-1.3.4):

- **Shallow shared module** (:class:`MSFANet.shared`): the stem and two residual blocks of
  3×3×3 convolution + batch norm + ReLU, one set of weights run on each sequence.
- **Class-aware module**: a T1 branch and an FS branch of two residual blocks each (their own
  weights), and a **Fuse branch** of one residual block and two MSFA modules. The paper's
  figure is not in its text; the wiring chosen here::

      s1, s2 = shared(T1), shared(FS)
      t1 = T1.block1(s1);  fs = FS.block1(s2)          # 1/8 in-plane
      z  = MSFA_1(t1, fs)                              # T1 queries the FS features
      z  = Fuse.block(z)                               # residual with MSFA_1's output
      t2 = T1.block2(t1);  f2 = FS.block2(fs)
      zf = MSFA_2(z, f2)                               # the fused features query the FS again

  so each MSFA's output has its input's size, as the paper requires, and the Fuse branch's
  residual block sits between the two (its residual connection with MSFA's output, 1.3.3).
  The paper does not say which sequence is ``Z_1`` (the query, and the residual path):
  ``MSFAConfig.query`` picks it. Above is ``query="t1"``; with ``query="fs"`` the FS
  features query the T1's, ``z = Fuse.block(MSFA_1(fs, t1))`` and ``zf = MSFA_2(z, t2)``.
- **MSFA** (:class:`MSFA`): ``Q = W_q Z_1``, ``K = W_k Z_2``, ``V = W_v Z_2`` by 1×1×1
  convolutions over ``N = D·H·W`` tokens, ``A_2 = softmax(Q Kᵀ / √d) V``, ``Z_f = α·A_2 + Z_1``
  with a learned scalar ``α`` (zero at the start, so the block begins as the identity and
  learns how much attention to add, as DANet's position attention does). Training and
  inference go through :func:`torch.nn.functional.scaled_dot_product_attention`: the explicit
  ``N × N`` matrix at the paper's size (26 880 tokens) with its backward pass needs more than
  8 GB; the fused kernel keeps it to tens of MB. The explicit weights are computed only when an
  explanation asks for them (:meth:`MSFA.attention_weights`, for chosen queries).
- **Heads**: each branch global-average-pools its last features, dropout, a linear layer. The
  Fuse head decides; the T1 and FS heads are the paper's deep supervision.
  With ``MSFAConfig.evidence`` (not the paper's) each linear layer also reads its branch's
  lesion evidence (:meth:`MSFANet.evidence`): a 1×1×1 convolution to one map per lesion kind,
  shared by the branches and trained by deep supervision from lesion masks, summed per kind
  as a soft count ``log(1 + Σ sigmoid)`` and its peak. A global average over a crop of the
  whole pelvis dilutes a 10 mm lesion; the count keeps it.
- **Hybrid loss** (:class:`HybridLoss`): ``L = β_f L_f + β_1 L_1 + β_2 L_2``, each a
  cross-entropy, the weights learned. Learned weights minimised with the loss would go to zero;
  here they are uncertainty weights (Kendall, Gal and Cipolla, CVPR 2018): ``β_i = exp(-s_i)``
  with learned log-variances ``s_i`` and ``+ s_i`` added to the loss, so a weight can shrink
  only by paying for it, and stays positive.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LESION_KINDS, MSFAConfig

IN_PLANE = (1, 2, 2)
BRANCHES = ("t1", "fs", "fuse")


class ResidualBlock3d(nn.Module):
    """Two 3×3×3 convolutions with batch norm and ReLU, and the shortcut (a 1×1×1 convolution
    with batch norm where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.shortcut = (nn.Identity() if cin == cout and stride == (1, 1, 1) else
                         nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout)))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q kᵀ / √d) v`` for ``q, k [B, N, d]`` and ``v [B, N, C]`` through
    :func:`~torch.nn.functional.scaled_dot_product_attention`, never forming the ``N × N``
    matrix. PyTorch's fused CPU kernel wants one width for ``q``, ``k`` and ``v`` and contiguous
    rows, so the narrower side is zero-padded (zeros change neither ``q kᵀ`` nor the values kept),
    the scale stays ``1/√d``, and the tokens are made contiguous. Measured on this CPU at the
    paper's 26 880 tokens (d 16, C 64), forward and backward of one MSFA: 118 MB above the
    process's start (11 s, one thread); when a condition is missed PyTorch silently falls back
    to the explicit matrix and the same step took 8.9 GB (a test watches this at 12 000 tokens).
    """
    d, c = q.shape[-1], v.shape[-1]
    width = max(d, c)
    q, k, v = (F.pad(t, (0, width - t.shape[-1]))[:, None].contiguous() for t in (q, k, v))  # fused: stride 1
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(d))
    return out[:, 0, :, :c]


class MSFA(nn.Module):
    """Multi-sequence fusion attention (module docstring): ``forward(z1, z2)``, both ``[B, C, D, H, W]``,
    returns ``α·softmax(Q₁K₂ᵀ/√d)V₂ + z1`` of ``z1``'s shape."""

    def __init__(self, channels: int, attention_dim: int) -> None:
        super().__init__()
        self.query = nn.Conv3d(channels, attention_dim, 1)
        self.key = nn.Conv3d(channels, attention_dim, 1)
        self.value = nn.Conv3d(channels, channels, 1)
        self.alpha = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _tokens(x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)  # [B, N, C]

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        if z1.shape != z2.shape:
            raise ValueError(f"MSFA: both inputs must have one shape, got {list(z1.shape)} and {list(z2.shape)}")
        q, k, v = self._tokens(self.query(z1)), self._tokens(self.key(z2)), self._tokens(self.value(z2))
        return self.alpha * attend(q, k, v).transpose(1, 2).reshape(z1.shape) + z1

    @torch.no_grad()
    def attention_weights(self, z1: Tensor, z2: Tensor, queries: Tensor) -> Tensor:
        """The explicit attention ``softmax(Q Kᵀ/√d)`` of the query tokens ``queries`` (flat
        indices into ``D·H·W``): ``[B, len(queries), N]``, each row summing to 1. Only for
        explanations: the full ``N × N`` matrix is never formed."""
        q = self._tokens(self.query(z1))[:, queries]
        k = self._tokens(self.key(z2))
        return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)


class MSFAOutput(NamedTuple):
    """Logits of the three branches ``[B, n_classes]`` each; ``fusion_logits`` decides."""

    fusion_logits: Tensor
    t1_logits: Tensor
    fs_logits: Tensor

    @property
    def probabilities(self) -> Tensor:
        return torch.softmax(self.fusion_logits, dim=1)


class _Branch(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block1 = ResidualBlock3d(cin, cout, IN_PLANE)
        self.block2 = ResidualBlock3d(cout, cout)


class _Fuse(nn.Module):
    def __init__(self, channels: int, attention_dim: int, fusion: str) -> None:
        super().__init__()
        self.msfa1 = MSFA(channels, attention_dim) if fusion == "msfa" else _Concat(channels)
        self.block = ResidualBlock3d(channels, channels)
        self.msfa2 = MSFA(channels, attention_dim) if fusion == "msfa" else _Concat(channels)


class _Concat(nn.Module):
    """The ablation's fusion (the paper's Baseline): concatenation, then a 1×1×1 convolution back
    to the input's width with batch norm and ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Conv3d(2 * channels, channels, 1, bias=False), nn.BatchNorm3d(channels),
                                     nn.ReLU(inplace=True))

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return self.project(torch.cat([z1, z2], dim=1))


class MSFANet(nn.Module):
    """MSFANet (module docstring): ``forward(x [B, 2, D, H, W])`` with channel 0 the T1 and
    channel 1 the fat-suppressed series on one grid, intensities in [0, 1] → :class:`MSFAOutput`.

    The configuration's ablations: ``fusion="concat"`` puts :class:`_Concat` where the MSFA
    modules were; ``sequences=("t1",)`` (or ``("fs",)``) feeds that channel to both paths."""

    def __init__(self, config: MSFAConfig) -> None:
        super().__init__()
        self.config = config
        w0, w1, w2 = config.widths
        self.shared = nn.Sequential(
            nn.Conv3d(1, w0, 3, stride=IN_PLANE, padding=1, bias=False), nn.BatchNorm3d(w0), nn.ReLU(inplace=True),
            ResidualBlock3d(w0, w1, IN_PLANE), ResidualBlock3d(w1, w1))
        self.t1 = _Branch(w1, w2)
        self.fs = _Branch(w1, w2)
        self.fuse = _Fuse(w2, config.attention_dim, config.fusion)
        self.dropout = nn.Dropout(config.dropout)
        pooled = 2 * w2 if config.pooling == "avgmax" else w2
        self.lesion = nn.Conv3d(w2, len(LESION_KINDS), 1) if config.evidence else None
        evidence = 2 * len(LESION_KINDS) if config.evidence else 0
        self.heads = nn.ModuleDict({b: nn.Linear(pooled + evidence, config.n_classes) for b in BRANCHES})

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Each branch's last features ``[B, C, D, H/8, W/8]`` (``t1``, ``fs``, ``fuse``)."""
        if x.ndim != 5 or x.shape[1] != 2:
            raise ValueError(f"MSFANet takes [B, 2, D, H, W] (T1 and fat-suppressed), got {list(x.shape)}")
        batch = x.shape[0]
        channels = [0 if s == "t1" else 1 for s in self.config.sequences] * (3 - len(self.config.sequences))
        shared = self.shared(torch.cat([x[:, c:c + 1] for c in channels], dim=0))  # the shared weights, both at once
        s1, s2 = shared[:batch], shared[batch:]
        t1, fs = self.t1.block1(s1), self.fs.block1(s2)
        first, other = (t1, fs) if self.config.query == "t1" else (fs, t1)
        z = self.fuse.block(self.fuse.msfa1(first, other))
        t2, f2 = self.t1.block2(t1), self.fs.block2(fs)
        zf = self.fuse.msfa2(z, f2 if self.config.query == "t1" else t2)
        return {"t1": t2, "fs": f2, "fuse": zf}

    def pool(self, features: Tensor) -> Tensor:
        """Global pooling of ``[B, C, D, H, W]`` features to ``[B, C]`` (or ``[B, 2C]`` for avgmax)."""
        mode = self.config.pooling
        if mode == "avg":
            return features.mean(dim=(2, 3, 4))
        peak = features.amax(dim=(2, 3, 4))
        return peak if mode == "max" else torch.cat([features.mean(dim=(2, 3, 4)), peak], dim=1)

    def evidence(self, features: Tensor) -> Tensor:
        """The lesion evidence of ``[B, C, D, H, W]`` features (``MSFAConfig.evidence``):
        ``[B, 2K]``, per lesion kind ``log(1 + Σ sigmoid)`` over the cells, then per kind the
        largest sigmoid."""
        if self.lesion is None:
            raise ValueError("MSFANet.evidence needs a network with a lesion head (MSFAConfig.evidence)")
        p = torch.sigmoid(self.lesion(features))
        return torch.cat([torch.log1p(p.sum(dim=(2, 3, 4))), p.amax(dim=(2, 3, 4))], dim=1)

    def classify(self, features: dict[str, Tensor]) -> MSFAOutput:
        """Each branch's logits from its :meth:`features` (and, with ``MSFAConfig.evidence``,
        their :meth:`evidence`)."""
        logits = {}
        for b in BRANCHES:
            pooled = self.dropout(self.pool(features[b]))
            if self.lesion is not None:
                pooled = torch.cat([pooled, self.evidence(features[b])], dim=1)
            logits[b] = self.heads[b](pooled)
        return MSFAOutput(logits["fuse"], logits["t1"], logits["fs"])

    def forward(self, x: Tensor) -> MSFAOutput:
        return self.classify(self.features(x))


class HybridLoss(nn.Module):
    """``L = Σ_b exp(-s_b)·CE_b + s_b`` over the branches (module docstring): the paper's
    ``β_f L_f + β_1 L_1 + β_2 L_2`` with learned weights ``β_b = exp(-s_b) > 0``.
    ``weights`` reads the current β. ``learned=False`` is the paper's cross-entropy-only
    ablation (the Fuse branch's cross-entropy alone)."""

    def __init__(self, learned: bool = True) -> None:
        super().__init__()
        self.learned = learned
        self.log_variance = nn.Parameter(torch.zeros(len(BRANCHES)))

    @property
    def weights(self) -> dict[str, float]:
        return {b: float(torch.exp(-s.detach())) for b, s in zip(BRANCHES, self.log_variance)}

    def forward(self, out: MSFAOutput, target: Tensor) -> dict[str, Tensor]:
        parts = {"fuse": F.cross_entropy(out.fusion_logits, target), "t1": F.cross_entropy(out.t1_logits, target),
                 "fs": F.cross_entropy(out.fs_logits, target)}
        if not self.learned:
            return {"total": parts["fuse"], **{f"ce_{b}": v for b, v in parts.items()}}
        total = sum(torch.exp(-s) * parts[b] + s for b, s in zip(BRANCHES, self.log_variance))
        return {"total": total, **{f"ce_{b}": v for b, v in parts.items()}}
