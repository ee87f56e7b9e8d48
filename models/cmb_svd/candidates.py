"""The second stage of microbleed detection: a learned false-positive filter over 3D candidates.

Computer-aided microbleed detection is done in two stages in the field: a sensitive screening
stage proposes candidates, and a discrimination stage tells true microbleeds from the mimics
that look like them (Barnes et al. 2011 with an SVM, Fazlollahi et al. 2015 and van den Heuvel
et al. 2016 with random forests, Dou et al. 2016 with a 3D CNN). Here Mask R-CNN is the first
stage (every merged 3D detection above the configuration's ``score_floor`` that the anatomical
screen keeps is a candidate) and gradient-boosted trees over each candidate's shape,
intensity, detector score and template position are the second (:data:`CANDIDATE_FEATURES`).
What the trees learn on the phantoms is what a reader knows: pallidal and choroid plexus
calcifications are larger than most microbleeds and sit in known places, flow voids of the
basal arteries lie by the cisterns, a vein crossing the slice has a neighbour above or below.

Training (``neuroread.training.recipes.cmb_svd.stages.tune``) fits scikit-learn's
:class:`~sklearn.ensemble.HistGradientBoostingClassifier` on the candidates of the validation
studies; :meth:`CandidateFilter.from_sklearn` copies its trees into tensors, so the filter lives
in the network's state dict (one weights-only checkpoint) and inference needs no pickled
estimator. A filter that was never fitted passes the detector's score through.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from .merge import Microbleed3D

CANDIDATE_FEATURES = (
    "detector_score",  # the best slice detection's Mask R-CNN score
    "log_volume_mm3",
    "extent_z_mm",  # through the slices
    "extent_long_mm",  # in-plane bounding box, longer side
    "extent_short_mm",
    "slice_detections",  # how many slice detections merged into it
    "mean_signal",  # in the mask, the series scaled by its white matter (1 = white matter)
    "min_signal",
    "ring_signal",  # a 2-voxel shell around the mask in its slices, same scale
    "template_abs_x",  # template position (mm, LPS): distance from the midline, front-back, up-down
    "template_y",
    "template_z",
)
IN_PLANE_SQUARE = np.ones((1, 3, 3), bool)  # 8-connected in the slice, never across slices
_NODE_FIELDS = ("feature", "threshold", "left", "right", "value", "leaf")


def candidate_features(found: Sequence[Microbleed3D], scaled: np.ndarray, spacing: tuple[float, float, float],
                       template_lps: np.ndarray) -> np.ndarray:
    """``[n, len(CANDIDATE_FEATURES)]`` float32 for the candidates ``found`` of one series.

    ``scaled`` is the series divided by its white matter (:func:`.preprocess.normalise`),
    ``spacing`` its (column, row, slice) spacing in mm, ``template_lps`` the candidates'
    centroids in template space."""
    rows = []
    column_mm, row_mm, slice_mm = spacing
    for m, q in zip(found, np.asarray(template_lps, float).reshape(-1, 3)):
        idx = m.indices
        extent = [(np.ptp(idx[:, 1]) + 1) * row_mm, (np.ptp(idx[:, 2]) + 1) * column_mm]
        inside = scaled[idx[:, 0], idx[:, 1], idx[:, 2]]
        lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
        box = tuple(slice(max(int(a) - p, 0), int(b) + p) for a, b, p in zip(lo, hi, (0, 2, 2)))
        sub = m.mask[box]
        shell = ndimage.binary_dilation(sub, IN_PLANE_SQUARE, iterations=2) & ~sub  # two voxels out, in-plane only
        ring = scaled[box][shell]
        rows.append([
            m.score, float(np.log(max(m.voxels, 1) * column_mm * row_mm * slice_mm)),
            float((np.ptp(idx[:, 0]) + 1) * slice_mm), float(max(extent)), float(min(extent)), float(m.members),
            float(inside.mean()), float(inside.min()), float(ring.mean()) if ring.size else float(inside.mean()),
            float(abs(q[0])), float(q[1]), float(q[2]),
        ])
    return np.asarray(rows, np.float32).reshape(-1, len(CANDIDATE_FEATURES))


class CandidateFilter(nn.Module):
    """A boosted tree ensemble as tensors (module docstring): ``forward(features [n, F]) ->
    probability [n]`` that a candidate is a microbleed.

    Nodes of all trees are stored flat (``feature``, ``threshold``, ``left``, ``right``,
    ``value``, ``leaf``), each tree's root in ``roots``; a sample goes left where its feature
    is at most the threshold, as scikit-learn's trees decide. The raw score is ``baseline``
    plus the leaf values; the probability is its logistic. The buffers take their sizes from
    the state dict they are loaded from."""

    def __init__(self, n_features: int = len(CANDIDATE_FEATURES)) -> None:
        super().__init__()
        self.n_features = n_features
        for name, dtype in (("feature", torch.int64), ("threshold", torch.float64), ("left", torch.int64),
                            ("right", torch.int64), ("value", torch.float64), ("leaf", torch.bool),
                            ("roots", torch.int64)):
            self.register_buffer(name, torch.zeros(0, dtype=dtype))
        self.register_buffer("baseline", torch.zeros((), dtype=torch.float64))
        self.register_buffer("depth", torch.zeros((), dtype=torch.int64))

    @property
    def fitted(self) -> bool:
        return self.roots.numel() > 0

    def forward(self, features: Tensor) -> Tensor:
        x = features.to(torch.float32).to(torch.float64)  # scikit-learn compares float32 inputs
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"candidate features must be [n, {self.n_features}], got {list(x.shape)}")
        node = self.roots[None, :].expand(x.shape[0], -1).clone()  # [n, trees]
        rows = torch.arange(x.shape[0])[:, None]
        for _ in range(int(self.depth)):
            at_leaf = self.leaf[node]
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = torch.where(at_leaf, node, torch.where(go_left, self.left[node], self.right[node]))
        raw = self.baseline + self.value[node].sum(dim=1)
        return torch.sigmoid(raw)

    def probabilities(self, features: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The filter's probability per candidate, or ``scores`` (the detector's) if never fitted."""
        if not self.fitted or len(features) == 0:
            return np.asarray(scores, float)
        with torch.inference_mode():
            return self(torch.from_numpy(np.asarray(features, np.float32))).cpu().numpy()

    @torch.no_grad()
    def load_sklearn(self, estimator) -> None:
        """Copy a fitted binary :class:`~sklearn.ensemble.HistGradientBoostingClassifier` (numeric
        features, no missing values) into this module's buffers."""
        if getattr(estimator, "n_trees_per_iteration_", None) != 1 or estimator.n_features_in_ != self.n_features:
            raise ValueError(f"need a binary classifier on {self.n_features} features")
        parts = {k: [] for k in _NODE_FIELDS}
        roots, depth, offset = [], 1, 0
        for (tree,) in estimator._predictors:  # the fitted trees (scikit-learn 1.9 layout; tested against it)
            nodes = tree.nodes
            roots.append(offset)
            parts["feature"].append(nodes["feature_idx"].astype(np.int64))
            parts["threshold"].append(nodes["num_threshold"].astype(np.float64))
            parts["left"].append(nodes["left"].astype(np.int64) + offset)
            parts["right"].append(nodes["right"].astype(np.int64) + offset)
            parts["value"].append(np.where(nodes["is_leaf"], nodes["value"], 0.0).astype(np.float64))
            parts["leaf"].append(nodes["is_leaf"].astype(bool))
            depth = max(depth, int(nodes["depth"].max()) + 1)
            offset += len(nodes)
        for name, values in parts.items():
            setattr(self, name, torch.from_numpy(np.concatenate(values)))
        self.roots = torch.tensor(roots, dtype=torch.int64)
        self.baseline = torch.tensor(float(np.ravel(estimator._baseline_prediction)[0]), dtype=torch.float64)
        self.depth = torch.tensor(depth, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, _ in self.named_buffers(recurse=False):
            value = state_dict.get(prefix + name)
            if value is not None:
                setattr(self, name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
