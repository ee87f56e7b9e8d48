"""The head-CT hemorrhage models as the node sees them: specs, weights loading and ``predict``.

Two models share one implementation, :class:`HemorrhageModel`:

- ``ct-hemorrhage``: RSNA's six labels (the paper samples m = 28 slices for RSNA-style series),
  in the node's default registry (:data:`ENTRY`);
- ``ct-hemorrhage-cq500``: CQ500's nine (adds calvarial fracture, mass effect, midline shift;
  m = 32), a plugin line away (:data:`ENTRY_CQ500`).

The architecture (m, sizes, backbone) is not part of the spec: it comes with the weights, in
the checkpoint's ``config`` (:class:`~neuroread.models.ct_hemorrhage.network.DrCT2Config`), so paper and
demo weights run through the same code. :func:`paper_config` gives the paper's for a model.

**Label codes.** Every label carries a coded concept. The label keys (:data:`RSNA_KEYS`,
:data:`CQ500_KEYS`) are the ones training's dataset readers use.

- ``any``: SCT 1386000 "Intracranial hemorrhage (disorder)", from pydicom's SNOMED CT
  dictionary (``codes.SCT.IntracranialHemorrhage``), the only one of these it holds;
- ``iph``: SCT 274100004 "Cerebral hemorrhage"; ``sah``: SCT 21454007 "Subarachnoid
  intracranial hemorrhage"; ``sdh``: SCT 35486000 "Subdural intracranial hemorrhage"
  (identifiers as published SNOMED CT code lists give them);
- ``ivh``, ``edh``, ``fracture`` (calvarial), ``mass_effect``, ``midline_shift``: codes in the
  node's private scheme ``99NEUROREAD``. No SNOMED CT identifier for them could be checked
  here, and a wrong identifier in a PACS is worse than an honest private code; replace them
  once the concepts are confirmed in a SNOMED CT browser.

**Outputs of** :meth:`HemorrhageModel.predict`, following the paper's Figure 2:

- one finding per label: the fusion network's probability against the label's threshold;
- the five key slices: the series slices with the highest slice attention. When a series has
  fewer slices than m, sampling repeats slices, and a slice's score is the highest attention
  of its repeats (a sum would rank a slice higher only because the sampling repeated it);
- heatmaps on the series' own grid, explaining ``any``, values in [0, 1], zero off the key
  slices, each mapped back through the square padding and resizing of
  :func:`~neuroread.models.ct_hemorrhage.preprocess.prepare`: first, when the network has a
  lesion head (the demo network), its probability of a hemorrhage per cell on each key slice
  (``lesion_map``: the sharper one, drawn on the overlays); then the paper's spatial map of
  each key slice (``attention``: the feature-attention-weighted last convolutional maps,
  scaled to [0, 1]);
- the slice attention of every sampled slice as :class:`~neuroread.models.SliceScores` (a
  slice sampled several times keeps its highest attention), so the report shows it as the
  paper's Figure 2 does.

**Weights.** The demo weights (trained on phantoms by ``neuroread train-demo ct-hemorrhage``,
with their card) are committed beside this module in ``weights/`` (:data:`DEMO_WEIGHTS`).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch
from pydicom.sr.codedict import codes

from ..checkpoint import load_network
from ..registry import ModelEntry, check_ready
from ..result import Finding, Heatmap, KeySlice, ModelResult, SeriesVolume, SliceScores
from ..runtime import torch_device
from ..spec import UCUM_RATIO, Code, InputSlot, Label, ModelCard, ModelSpec, MultiLabel
from .network import DrCT2, DrCT2Config
from .preprocess import prepare, square_record

log = logging.getLogger(__name__)

VERSION = "1.0.0"
KEY_SLICES = 5  # the paper's Figure 2 shows the five slices of highest attention
PRIVATE = "99NEUROREAD"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_WEIGHTS = WEIGHTS_DIR / "ct-hemorrhage-demo.pt"
SLICE_ATTENTION = Code("SLICEATTENTION", PRIVATE, "Slice attention")

_ICH = codes.SCT.IntracranialHemorrhage
_LABELS: dict[str, Label] = {lb.name: lb for lb in (
    Label("any", Code(_ICH.value, _ICH.scheme_designator, _ICH.meaning)),
    Label("iph", Code("274100004", "SCT", "Cerebral hemorrhage")),
    Label("ivh", Code("IVH", PRIVATE, "Intraventricular hemorrhage")),
    Label("sdh", Code("35486000", "SCT", "Subdural intracranial hemorrhage")),
    Label("edh", Code("EDH", PRIVATE, "Epidural hemorrhage")),
    Label("sah", Code("21454007", "SCT", "Subarachnoid intracranial hemorrhage")),
    Label("fracture", Code("CALVARIALFRACTURE", PRIVATE, "Calvarial fracture")),
    Label("mass_effect", Code("MASSEFFECT", PRIVATE, "Mass effect")),
    Label("midline_shift", Code("MIDLINESHIFT", PRIVATE, "Midline shift")),
)}
RSNA_KEYS: tuple[str, ...] = ("any", "iph", "ivh", "sdh", "edh", "sah")
CQ500_KEYS: tuple[str, ...] = RSNA_KEYS + ("fracture", "mass_effect", "midline_shift")

# A scout or a handful of key images is not a head CT; 10 slices at 10 mm still cover the brain.
SLOT = InputSlot(
    "ct", "CT", body_parts=("HEAD", "BRAIN", "SKULL"), min_slices=10,
    description="non-contrast head CT, axial slices (BodyPartExamined HEAD, BRAIN or SKULL)",
)


def _spec(name: str, keys: tuple[str, ...], labels_said: str) -> ModelSpec:
    return ModelSpec(name=name, version=VERSION, summary=f"DrCT2 head-CT hemorrhage ({labels_said})",
                     slots=(SLOT,), outcomes=(MultiLabel(tuple(_LABELS[k] for k in keys)),),
                     explanations=("lesion_map", "attention"))


SPEC = _spec("ct-hemorrhage", RSNA_KEYS, "RSNA labels: any, IPH, IVH, SDH, EDH, SAH")
SPEC_CQ500 = _spec("ct-hemorrhage-cq500", CQ500_KEYS,
                   "CQ500 labels: RSNA's six, calvarial fracture, mass effect, midline shift")

# The paper's m: 28 sampled slices for RSNA-style series, 32 for CQ500-style ones.
PAPER_SLICES = {SPEC.name: 28, SPEC_CQ500.name: 32}


def paper_config(spec: ModelSpec) -> DrCT2Config:
    """The paper's architecture for ``spec`` (its labels, its m)."""
    if spec.name not in PAPER_SLICES:
        raise ValueError(f"no paper configuration for model {spec.name!r}; known: {sorted(PAPER_SLICES)}")
    return DrCT2Config.paper(len(spec.labels), slices=PAPER_SLICES[spec.name])


class HemorrhageModel:
    """DrCT2 behind the model contract, for one of :data:`SPEC` and :data:`SPEC_CQ500`.

    ``load`` reads a checkpoint (:mod:`neuroread.models.checkpoint`) whose labels are the spec's, in
    order; ``predict`` runs the network in eval mode without gradients. Torch's thread count
    is left as the caller set it (the node sets it per worker).
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.net: DrCT2 | None = None
        self.card: ModelCard | None = None
        self.device = torch.device("cpu")

    @classmethod
    def from_network(cls, spec: ModelSpec, net: DrCT2, card: ModelCard, device: str = "cpu") -> HemorrhageModel:
        """The model around a network in memory (training evaluates it through :meth:`predict`)."""
        model = cls(spec)
        if net.config.n_labels != len(spec.labels):
            raise ValueError(f"{spec.name}: network has {net.config.n_labels} outputs for {len(spec.labels)} labels")
        target = torch_device(device)
        model.net, model.card, model.device = net.to(target).eval(), card, target
        return model

    def load(self, weights: Path, device: str = "cpu") -> None:
        """Load the checkpoint ``weights`` onto ``device``.

        Raises ValueError naming the file and what is wrong: missing, not a checkpoint of this
        model, labels other than the spec's, a state dict that does not fit its configuration,
        an unknown or unavailable device.
        """
        name = self.spec.name
        path = Path(weights)
        target = torch_device(device)
        expected = tuple(lb.name for lb in self.spec.labels)

        def build(config: DrCT2Config) -> DrCT2:
            if config.n_labels != len(expected):
                raise ValueError(f"weights file {path}: configuration has {config.n_labels} outputs for "
                                 f"{len(expected)} labels")
            return DrCT2(config)

        net, ckpt = load_network(path, name, expected, DrCT2Config, build)
        config = net.config
        self.net, self.card, self.device = net.to(target).eval(), ckpt.card, target
        log.info("loaded %s weights %s (sha256 %s, config %s, demo %s) on %s", name, path,
                 ckpt.card.weights_sha256[:12], config.name, ckpt.card.demo, target)

    def predict(self, inputs: dict[str, SeriesVolume]) -> ModelResult:
        """Findings, key slices, attention heatmap and slice attention for one head CT.

        ``inputs["ct"]``: the series in HU, array (slices, rows, columns), any number of
        slices >= 1 (sampled to the configuration's m). Deterministic for given weights and
        input. Raises RuntimeError before :meth:`load`, ValueError for other input slots.
        """
        check_ready(self, inputs)
        vol = inputs[SLOT.name]
        net, config = self.net, self.net.config
        x, sampled = prepare(vol.array, config.slices, config.input_size)
        with torch.inference_mode():
            out = net(x.unsqueeze(0).to(self.device))
            attention = out.slice_attention[0].double().cpu().numpy()
            # Repeats of a slice (series shorter than m): its best position counts.
            slices, first, inverse = np.unique(sampled, return_index=True, return_inverse=True)
            merged = np.full(len(slices), -np.inf)
            np.maximum.at(merged, inverse, attention)
            ranked = np.argsort(-merged, kind="stable")[:KEY_SLICES]  # ties: lower slice first
            # Repeats are the same image with the same feature attention, so any one gives its map.
            positions = torch.as_tensor(first[ranked], dtype=torch.int64, device=self.device)[None]
            maps = net.spatial_maps(out, positions)[0].float().cpu()
            lesion = net.lesion_maps(out, positions)[0].float().cpu() if net.lesion is not None else None
            probabilities = out.probabilities[0].cpu().tolist()

        uid = vol.series_instance_uid
        key_slices = tuple(
            KeySlice(uid, int(slices[j]), vol.sop_instance_uids[int(slices[j])], float(merged[j]), rank)
            for rank, j in enumerate(ranked, start=1))
        # The maps back through the square padding and resizing (bilinear keeps [0, 1]; the clip removes rounding).
        back = square_record(*vol.array.shape[1:], config.input_size)
        heatmaps = []
        for kind, found, said in (("lesion_map", lesion, "lesion probability"), ("attention", maps, "feature attention")):
            if found is None:
                continue
            heat = np.zeros(vol.array.shape, np.float32)
            heat[slices[ranked]] = back.inverse(found, clip=(0.0, 1.0))
            heatmaps.append(Heatmap(uid, kind, heat, explains=self.spec.labels[0].name, value_range=(0.0, 1.0),
                                    description=f"{said} on {len(ranked)} key slices, 0-1; 0 elsewhere"))
        scores = SliceScores(uid, SLICE_ATTENTION, tuple(int(k) for k in slices), tuple(float(a) for a in merged),
                             UCUM_RATIO)
        findings = tuple(Finding(lb.name, lb.code, float(p), lb.threshold)
                         for lb, p in zip(self.spec.labels, probabilities))
        return ModelResult(model=self.spec.name, version=self.spec.version, findings=findings, card=self.card,
                           key_slices=key_slices, slice_scores=(scores,), heatmaps=tuple(heatmaps))


# The node registers ENTRY by default (neuroread.models.registry.default_registry). Both models read the
# same head CTs, so registering both would run both on every one: a site that wants CQ500's nine
# labels adds ENTRY_CQ500 as a plugin (``plugins: [neuroread.models.ct_hemorrhage.model:ENTRY_CQ500]``)
# with its own weights. Training knows both (ENTRIES).
ENTRY = ModelEntry(SPEC, functools.partial(HemorrhageModel, SPEC), demo_weights=DEMO_WEIGHTS)
ENTRY_CQ500 = ModelEntry(SPEC_CQ500, functools.partial(HemorrhageModel, SPEC_CQ500))
ENTRIES = [ENTRY, ENTRY_CQ500]
