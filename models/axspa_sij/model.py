"""Axial spondyloarthritis from the sacroiliac joints' T1 and fat-suppressed MRI, as the node sees it.

``axspa-sij``: two input slots of one study, told apart by the node's MR sequence classifier
(never by the description): ``t1`` (T1-weighted) and ``fs`` (STIR, or a fat-suppressed T2:
SPAIR, SPIR, Dixon water), both of the pelvis or sacrum. They need not share a frame of
reference: a STIR from another one is registered rigidly to the T1
(:mod:`.preprocess`).

**How it reads a study** (:meth:`AxSpAModel.predict`):

1. the joint localiser (:mod:`.localiser`) finds both sacroiliac joints on the T1;
2. both series onto the crop centred between them (:func:`.preprocess.prepare`);
3. MSFANet (:mod:`.network`): the Fuse branch's softmax is the outcome;
4. Grad-CAM (captum, through :class:`neuroread.models.explain.GradCAM`, hooks removed after)
   of each branch's last convolution for the decided class, each scaled by its maximum: the
   T1 branch's map onto the T1's grid, the FS branch's onto the STIR's, the Fuse branch's (the
   whole network's decision: the heatmap's ``branch`` is empty) onto both;
5. key slices: the :data:`KEY_SLICES` T1 slices holding most of the fused map's mass.

**Outcome**: a multi-class "Axial spondyloarthritis assessment" over ``axspa`` and
``non_axspa``; no SNOMED CT identifier could be checked here, so the codes are in the node's
private scheme ``99NEUROREAD``.

``axspa-sij`` (:data:`ENTRY`) runs with its demo weights (:data:`DEMO_WEIGHTS`, trained on
phantoms by ``neuroread train-demo axspa-sij``) unless the configuration names others.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import NetworkModel
from ..explain import GradCAM
from ..registry import ModelEntry, check_ready
from ..result import Classification, Heatmap, KeySlice, ModelResult, SeriesVolume
from ..spec import ClassLabel, Code, InputSlot, ModelSpec, MultiClass
from .config import LESION_KINDS, MSFAConfig
from .localiser import JointLocaliser, locate
from .network import HybridLoss, MSFANet
from .preprocess import prepare

VERSION = "0.1.0"
DEMO_WEIGHTS = Path(__file__).parent / "weights" / "axspa-sij-demo.pt"
KEY_SLICES = 5
MIN_INSTANCES = 8
PRIVATE = "99NEUROREAD"
BODY_PARTS = ("PELVIS", "SACRUM", "SSPINE", "LSPINE", "HIP", "SIJ")

DIAGNOSIS = MultiClass("diagnosis", Code("AXSPAASSESS", PRIVATE, "Axial spondyloarthritis assessment"), (
    ClassLabel("axspa", Code("AXSPA", PRIVATE, "Axial spondyloarthritis")),
    ClassLabel("non_axspa", Code("NONAXSPA", PRIVATE, "No axial spondyloarthritis")),
))
CLASSES: tuple[str, ...] = tuple(c.name for c in DIAGNOSIS.classes)
SLOTS = (
    InputSlot("t1", "MR", sequences=("T1",), body_parts=BODY_PARTS, min_slices=MIN_INSTANCES,
              description="coronal-oblique T1-weighted series of the sacroiliac joints"),
    InputSlot("fs", "MR", sequences=("STIR", "T2FS"), body_parts=BODY_PARTS, min_slices=MIN_INSTANCES,
              description="coronal-oblique fat-suppressed series of the sacroiliac joints (STIR, T2 SPAIR/SPIR, "
                          "Dixon water) of the same study"),
)
SPEC = ModelSpec(name="axspa-sij", version=VERSION,
                 summary="MSFANet: axial spondyloarthritis on sacroiliac T1 + fat-suppressed MRI",
                 slots=SLOTS, outcomes=(DIAGNOSIS,), explanations=("gradcam",))
# Each branch's last convolution and the logits it explains.
BRANCH_LAYERS = {
    "t1": ("t1.block2.conv2", lambda out: out.t1_logits),
    "fs": ("fs.block2.conv2", lambda out: out.fs_logits),
    "fused": ("fuse.block.conv2", lambda out: out.fusion_logits),
}


class SacroiliacNet(nn.Module):
    """MSFANet, the joint localiser, the hybrid loss's learned weights and the training-only
    lesion head in one module (one state dict, one checkpoint: the card's loss weights are the
    checkpoint's).

    :attr:`lesion`: a 1×1×1 convolution, shared by the three branches, that reads each
    branch's last features as "a lesion of this kind in this cell", one channel per
    :data:`LESION_KINDS` (deep supervision from typed lesion masks during training,
    :mod:`neuroread.training.recipes.axspa_sij.stages`). With ``MSFAConfig.evidence`` it is
    the network's own (``msfa.lesion``), whose evidence the decision reads; without, it is
    ``lesion_head`` beside the network, for training only, and the node never runs it."""

    def __init__(self, config: MSFAConfig) -> None:
        super().__init__()
        self.config = config
        self.msfa = MSFANet(config)
        self.localiser = JointLocaliser(config.localiser_width)
        self.loss = HybridLoss()
        self.lesion_head = None if config.evidence else nn.Conv3d(config.widths[2], len(LESION_KINDS), 1)

    @property
    def lesion(self) -> nn.Conv3d:
        """The lesion head in use (class docstring)."""
        return self.msfa.lesion if self.msfa.lesion is not None else self.lesion_head


class AxSpAModel(NetworkModel):
    """MSFANet behind the model contract (module docstring)."""

    classes = CLASSES
    config_type = MSFAConfig

    def __init__(self, spec: ModelSpec = SPEC) -> None:
        super().__init__(spec)

    def build(self, config: MSFAConfig) -> SacroiliacNet:
        return SacroiliacNet(config)

    def predict(self, inputs: dict[str, SeriesVolume]) -> ModelResult:
        """The assessment, its Grad-CAM maps on both series and the key T1 slices for one study
        (module docstring). Deterministic for given weights and input. Raises RuntimeError
        before :meth:`load`, ValueError for other input slots or series it cannot read."""
        check_ready(self, inputs)
        t1, fs = inputs["t1"], inputs["fs"]
        net, config = self.net, self.net.config
        joints = locate(net.localiser, t1, self.device)
        prep = prepare(t1, fs, joints.centre, config)
        x = torch.from_numpy(prep.inputs[None]).to(self.device)
        with torch.inference_mode():
            probabilities = net.msfa(x).probabilities[0].double().cpu().numpy()
        decided = int(np.argmax(probabilities))
        explains = CLASSES[decided]
        crop_maps = {}
        for branch, (layer, logits) in BRANCH_LAYERS.items():
            with GradCAM(net.msfa, layer, output=logits) as cam:
                m = cam(x, decided, size=config.input_shape)[0].float().cpu().numpy()
            crop_maps[branch] = m / max(float(m.max()), 1e-12)
        heatmaps = []
        for branch, series, on_fs in (("t1", t1, False), ("fs", fs, True), ("fused", t1, False), ("fused", fs, True)):
            heat = np.clip(prep.to_series(crop_maps[branch], series, fs=on_fs), 0.0, 1.0)
            heatmaps.append(Heatmap(series.series_instance_uid, "gradcam", heat, explains=explains,
                                    value_range=(0.0, 1.0), branch="" if branch == "fused" else branch,
                                    description=f"Grad-CAM of the {branch} branch's last convolution for {explains}, "
                                                "scaled by its maximum; 0 outside the crop around the joints"))
        fused_on_t1 = heatmaps[2].array
        mass = fused_on_t1.reshape(len(fused_on_t1), -1).sum(axis=1)
        order = [int(k) for k in np.argsort(-mass, kind="stable")[:KEY_SLICES] if mass[k] > 0]
        key_slices = tuple(KeySlice(t1.series_instance_uid, k, t1.sop_instance_uids[k], float(mass[k] / mass.sum()),
                                    rank) for rank, k in enumerate(order, start=1))
        return ModelResult(model=self.spec.name, version=self.spec.version, card=self.card,
                           classifications=(Classification.of(DIAGNOSIS, probabilities / probabilities.sum()),),
                           key_slices=key_slices, heatmaps=tuple(heatmaps))


ENTRY = ModelEntry(SPEC, functools.partial(AxSpAModel, SPEC), demo_weights=DEMO_WEIGHTS)
