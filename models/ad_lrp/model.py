"""Alzheimer's disease vs control on a 3D T1, explained by layer-wise relevance propagation.

``ad-lrp`` (:data:`ENTRY`): one input slot, a T1-weighted series of the head (the node's MR
sequence classifier says T1 from the acquisition parameters, e.g. an inversion-prepared
gradient echo: MPRAGE, BRAVO, 3D TFE), at least :data:`MIN_INSTANCES` slices at most
:data:`~neuroread.models.ad_lrp.preprocess.MAX_SLICE_MM` mm apart, in any plane and head
position (:mod:`.preprocess` registers it to the MNI template).

**Outcome**: a multi-class "Diagnosis" (SCT 439401001) over

- ``ad``: SCT 26929004 "Alzheimer's disease";
- ``cn``: "Control (no Alzheimer's disease)" in the node's private scheme ``99NEUROREAD``.

**Outputs of** :meth:`ADModel.predict`:

- the class probabilities (softmax) and the decided class;
- ``lrp``: the relevance of each voxel for **AD** (whatever the decision, as the paper shows
  it: evidence for AD, and little of it in controls), zennit's EpsilonPlusFlat with batch norm
  merged (:class:`neuroread.models.explain.LRP`), on the template grid, then onto the series'
  own grid through the registration; signed, in logit units per voxel of the network's grid,
  read against a range symmetric about 0;
- ``guided_backprop``: guided backpropagation of the AD logit (the paper's comparison),
  scaled by its largest magnitude to [-1, 1];
- key slices: the :data:`KEY_SLICES` slices of the series holding most positive relevance;
- a table "Relevance per brain region": the ``top_regions`` atlas regions by relevance gain,
  each coded (``NMM<atlas id>`` in ``99NEUROREAD``, meaning its Neuromorphometrics name) with
  its gain (ratio), density ({rel}/{voxel}) and summed relevance ({relevance})
  (:mod:`.regions`), each with its region on the series (the atlas label taken back through the
  registration), so the Measurement Report draws every region on its image with its values; the
  report page draws the table as a bar chart of the gain.

A series that is not a usable 3D T1 of the brain raises ``ValueError``
(:class:`~neuroread.models.ad_lrp.preprocess.UnusableSeries`) naming why; the node records the
job failed with that reason.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ..atlas import load_atlas
from ..checkpoint import NetworkModel
from ..explain import LRP, GuidedBackprop
from ..registry import ModelEntry, check_ready
from ..result import Classification, Column, Heatmap, KeySlice, ModelResult, Table, TableRow
from ..spec import UCUM_RATIO, ClassLabel, Code, InputSlot, ModelSpec, MultiClass
from . import regions as region_analysis
from .config import ADConfig
from .network import AlzheimerNet
from .preprocess import Prepared, prepare, to_series

VERSION = "1.0.0"
KEY_SLICES = 5
MIN_INSTANCES = 40
PRIVATE = "99NEUROREAD"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_WEIGHTS = WEIGHTS_DIR / "ad-lrp-demo.pt"

DIAGNOSIS = MultiClass("diagnosis", Code("439401001", "SCT", "Diagnosis"), (
    ClassLabel("ad", Code("26929004", "SCT", "Alzheimer's disease")),
    ClassLabel("cn", Code("ADCONTROL", PRIVATE, "Control (no Alzheimer's disease)")),
))
CLASSES: tuple[str, ...] = tuple(c.name for c in DIAGNOSIS.classes)
AD = CLASSES.index("ad")

RELEVANCE_TABLE = Code("REGIONRELEVANCE", PRIVATE, "Relevance per brain region")
RELEVANCE_GAIN = Code("RELGAIN", PRIVATE, "Relevance gain")
RELEVANCE_DENSITY = Code("RELDENSITY", PRIVATE, "Relevance density")
RELEVANCE_SUM = Code("RELSUM", PRIVATE, "Summed relevance")
UCUM_RELEVANCE = Code("{relevance}", "UCUM", "relevance")
UCUM_RELEVANCE_PER_VOXEL = Code("{rel}/{voxel}", "UCUM", "relevance per voxel")
COLUMNS = (Column("gain", RELEVANCE_GAIN, UCUM_RATIO), Column("density", RELEVANCE_DENSITY, UCUM_RELEVANCE_PER_VOXEL),
           Column("relevance", RELEVANCE_SUM, UCUM_RELEVANCE))

SLOT = InputSlot(
    "t1", "MR", sequences=("T1",), body_parts=("HEAD", "BRAIN"), min_slices=MIN_INSTANCES,
    description="3D T1-weighted series of the whole head (MPRAGE, BRAVO, 3D TFE), any plane",
)
SPEC = ModelSpec(name="ad-lrp", version=VERSION,
                 summary="3D CNN: Alzheimer's disease vs control on a 3D T1, LRP relevance per brain region",
                 slots=(SLOT,), outcomes=(DIAGNOSIS,), explanations=("lrp", "guided_backprop"))


def region_code(region_id: int, name: str) -> Code:
    """The coded atlas region: ``NMM<id>`` in the private scheme, meaning its name in words."""
    return Code(f"NMM{region_id}", PRIVATE, name.replace("_", " ")[:64])


class ADModel(NetworkModel):
    """The 3D CNN behind the model contract (module docstring). ``load`` reads a checkpoint whose
    outputs are :data:`CLASSES`; ``predict`` runs it in eval mode."""

    classes = CLASSES
    config_type = ADConfig

    def __init__(self, spec: ModelSpec = SPEC) -> None:
        super().__init__(spec)

    def build(self, config: ADConfig) -> AlzheimerNet:
        return AlzheimerNet(config)

    def explain(self, prep: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities [2], LRP relevance for AD and guided backpropagation of the AD logit,
        both on the template grid (i, j, k)) of a prepared series."""
        net, config = self.net, self.net.config
        x = prep.image[None].to(self.device)
        with torch.inference_mode():
            probabilities = torch.softmax(net(x), dim=1)[0].double().cpu().numpy()
        with LRP(net, config.composite) as lrp:
            relevance = lrp(x, AD)[0, 0].cpu().numpy()
        with GuidedBackprop(net) as gbp:
            guided = gbp(x, AD)[0, 0].cpu().numpy()
        return probabilities, relevance, guided

    def regions(self, relevance: np.ndarray, prep: Prepared) -> list[region_analysis.RegionRelevance]:
        """Every atlas region's relevance (:func:`.regions.measure`) against the card's reference."""
        config = self.net.config
        reference = dict(zip(config.reference_ids, config.reference_density)) or None
        return region_analysis.measure(relevance, prep.labels, load_atlas().names, reference)

    def predict(self, inputs: dict) -> ModelResult:
        """The diagnosis, relevance maps, key slices and regions of one 3D T1 (module docstring).

        Deterministic for given weights and input. Raises RuntimeError before :meth:`load`,
        ValueError for other input slots or a series this model cannot read.
        """
        check_ready(self, inputs)
        vol = inputs[SLOT.name]
        config = self.net.config
        prep = prepare(vol, config.step)
        probabilities, relevance, guided = self.explain(prep)
        measured = self.regions(relevance, prep)
        top = region_analysis.ranked(measured, config.top_regions, config.min_region_voxels)
        uid = vol.series_instance_uid

        on_series = to_series(relevance, vol, prep)
        limit = float(np.abs(on_series).max()) or 1.0
        guided_series = to_series(guided, vol, prep)
        guided_series = guided_series / (float(np.abs(guided_series).max()) or 1.0)
        total = float(relevance.sum())
        heatmaps = (
            Heatmap(uid, "lrp", on_series.astype(np.float32), explains="ad", value_range=(-limit, limit), signed=True,
                    description=f"LRP relevance for AD ({config.composite}, batch norm merged), per "
                                f"{config.voxel_mm:g} mm voxel of the MNI grid; sums to {total:.3g}"),
            Heatmap(uid, "guided_backprop", np.clip(guided_series, -1.0, 1.0).astype(np.float32), explains="ad",
                    value_range=(-1.0, 1.0), signed=True,
                    description="guided backpropagation of the AD logit, scaled by its largest magnitude"),
        )
        positive = np.clip(on_series, 0.0, None).reshape(len(on_series), -1).sum(axis=1)
        share = positive / max(float(positive.sum()), 1e-12)
        order = np.argsort(-positive, kind="stable")[:KEY_SLICES]
        key_slices = tuple(KeySlice(uid, int(k), vol.sop_instance_uids[int(k)], float(share[k]), rank)
                           for rank, k in enumerate(order, start=1) if positive[k] > 0)
        with_gain = bool(config.reference_ids)  # weights from training carry the controls' densities
        columns = COLUMNS if with_gain else COLUMNS[1:]
        labels = to_series(prep.labels, vol, prep, "nearest")  # the atlas on the series, so the report draws regions
        rows = []
        for r in top:
            mask = labels == r.id
            rows.append(TableRow(region_code(r.id, r.name), ((r.gain,) if with_gain else ()) + (r.density, r.relevance),
                                 mask=mask if mask.any() else None, series_instance_uid=uid if mask.any() else ""))
        table = Table("regions", RELEVANCE_TABLE, columns, tuple(rows))
        return ModelResult(model=self.spec.name, version=self.spec.version, card=self.card,
                           classifications=(Classification.of(DIAGNOSIS, probabilities / probabilities.sum()),),
                           key_slices=key_slices, heatmaps=heatmaps, tables=(table,))


ENTRY = ModelEntry(SPEC, functools.partial(ADModel, SPEC), demo_weights=DEMO_WEIGHTS)
