"""Multiple sclerosis vs cerebral small vessel disease on axial FLAIR, as the node sees it.

``ms-csvd`` (:data:`ENTRY`): one input slot, an axial 2D FLAIR of the head (the node's MR
sequence classifier says FLAIR from TR, TE and an inversion time of at least 1400 ms, whatever
the SeriesDescription says), at least :data:`MIN_INSTANCES` slices of which
:data:`~neuroread.models.ms_csvd.preprocess.MIN_BRAIN_SLICES` through the brain.

**Outcome**: a multi-class "Diagnosis" (SCT 439401001) over

- ``ms``: SCT 24700007 "Multiple sclerosis" (pydicom has no SNOMED CT entry for it; the
  identifier is the published one);
- ``csvd``: "Cerebral small vessel disease" in the node's private scheme ``99NEUROREAD``: no
  SNOMED CT identifier for the concept could be checked here, and a wrong one in a PACS is worse
  than an honest private code.

**Outputs of** :meth:`MSCSVDModel.predict`:

- the class probabilities (softmax) and the decided class;
- key slices: the :data:`KEY_SLICES` slices the slice pooling weighed most, with their weights;
- the slice pooling's weight of every slice it read (:class:`~neuroread.models.SliceScores`,
  "Slice attention", summing to one over the series);
- heatmaps on the series' own grid explaining the decided class: first the spatial attention
  (``attention``, CBAM's map of each slice read, in [0, 1], 0 on slices not read), then Grad-CAM
  of the backbone's last stage (``gradcam``, the comparison map, scaled by its maximum over the
  series so slices keep their relative weight). Both go back through the square padding and
  resizing of :func:`~neuroread.models.ms_csvd.preprocess.prepare`.

A series with too few slices through the brain raises ``ValueError`` (the node records the
job failed with that reason, not retried).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import NetworkModel
from ..explain import GradCAM
from ..registry import ModelEntry, check_ready
from ..result import Classification, Heatmap, KeySlice, ModelResult, SeriesVolume, SliceScores
from ..spec import UCUM_RATIO, ClassLabel, Code, InputSlot, ModelSpec, MultiClass
from .config import TANConfig
from .network import TransferAttentionNet
from .preprocess import prepare

VERSION = "1.0.0"
KEY_SLICES = 5
MIN_INSTANCES = 8
PRIVATE = "99NEUROREAD"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_WEIGHTS = WEIGHTS_DIR / "ms-csvd-demo.pt"
SLICE_ATTENTION = Code("SLICEATTENTION", PRIVATE, "Slice attention")

DIAGNOSIS = MultiClass("diagnosis", Code("439401001", "SCT", "Diagnosis"), (
    ClassLabel("ms", Code("24700007", "SCT", "Multiple sclerosis")),
    ClassLabel("csvd", Code("CSVD", PRIVATE, "Cerebral small vessel disease")),
))
CLASSES: tuple[str, ...] = tuple(c.name for c in DIAGNOSIS.classes)

SLOT = InputSlot(
    "flair", "MR", sequences=("FLAIR",), body_parts=("HEAD", "BRAIN"), min_slices=MIN_INSTANCES,
    description="axial 2D T2-FLAIR of the brain (long TR, long TE, inversion recovery with TI >= 1400 ms)",
)
SPEC = ModelSpec(name="ms-csvd", version=VERSION,
                 summary="transfer attention network: multiple sclerosis vs cerebral small vessel disease on FLAIR",
                 slots=(SLOT,), outcomes=(DIAGNOSIS,), explanations=("attention", "gradcam"))


class MSCSVDModel(NetworkModel):
    """The transfer attention network behind the model contract.

    ``load`` reads a checkpoint whose outputs are :data:`CLASSES`; ``predict`` runs it in eval
    mode. Torch's thread count is left as the caller set it (the node sets it per worker).
    """

    classes = CLASSES
    config_type = TANConfig

    def __init__(self, spec: ModelSpec = SPEC) -> None:
        super().__init__(spec)

    def build(self, config: TANConfig) -> TransferAttentionNet:
        return TransferAttentionNet(config)

    def predict(self, inputs: dict[str, SeriesVolume]) -> ModelResult:
        """The diagnosis, key slices, slice attention and maps for one FLAIR series (module docstring).

        Deterministic for given weights and input. Raises RuntimeError before :meth:`load`,
        ValueError for other input slots or a series with too few slices through the brain.
        """
        check_ready(self, inputs)
        vol = inputs[SLOT.name]
        net, config = self.net, self.net.config
        prep = prepare(vol, config.input_size, config.max_slices)
        x = prep.images[None].to(self.device)
        with torch.inference_mode():
            out = net(x)
            probabilities = out.probabilities[0].double().cpu().numpy()
            weights = out.slice_weights[0].double().cpu().numpy()
            spatial = None if out.spatial is None else out.spatial[0].float()
        decided = int(np.argmax(probabilities))
        with GradCAM(net, "backbone.layer4", output=lambda o: o.logits) as cam:
            gradcam = cam(x, decided, size=(config.input_size, config.input_size))  # [slices, size, size]
        gradcam = gradcam / gradcam.max().clamp_min(1e-12)

        uid = vol.series_instance_uid
        ranked = np.argsort(-weights, kind="stable")[:KEY_SLICES]  # ties: the lower slice first
        key_slices = tuple(KeySlice(uid, int(prep.slices[j]), vol.sop_instance_uids[int(prep.slices[j])],
                                    float(weights[j]), rank) for rank, j in enumerate(ranked, start=1))
        heatmaps = []
        explains = CLASSES[decided]
        for kind, maps, said in (
                ("attention", spatial, f"spatial attention on the {len(prep.slices)} slices read, 0-1; 0 elsewhere"),
                ("gradcam", gradcam, f"Grad-CAM of the last stage for {explains}, scaled by its series maximum; "
                                     "0 on slices not read")):
            if maps is None:
                continue
            if maps.shape[-1] != config.input_size:
                maps = F.interpolate(maps[:, None].cpu(), size=(config.input_size,) * 2, mode="bilinear",
                                     align_corners=False)[:, 0]
            heat = np.zeros(vol.array.shape, np.float32)
            heat[prep.slices] = prep.record.inverse(maps.cpu(), clip=(0.0, 1.0))
            heatmaps.append(Heatmap(uid, kind, heat, explains=explains, value_range=(0.0, 1.0), description=said))
        scores = SliceScores(uid, SLICE_ATTENTION, tuple(int(k) for k in prep.slices), tuple(float(w) for w in weights),
                             UCUM_RATIO)
        return ModelResult(model=self.spec.name, version=self.spec.version, card=self.card,
                           classifications=(Classification.of(DIAGNOSIS, probabilities / probabilities.sum()),),
                           key_slices=key_slices, slice_scores=(scores,), heatmaps=tuple(heatmaps))


ENTRY = ModelEntry(SPEC, functools.partial(MSCSVDModel, SPEC), demo_weights=DEMO_WEIGHTS)
