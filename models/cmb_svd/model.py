"""Cerebral microbleeds and the small-vessel-disease subtype on SWI, as the node sees it.

``cmb-svd`` (:data:`ENTRY`): one input slot, an axial 3D susceptibility-weighted series of the
head: the node's MR sequence classifier says SWI (ImageType SWI, SWAN, M_SWI; or a 3D gradient
echo with a long echo time), its image component is the magnitude (the phase images and the
minimum intensity projections a scanner sends with it are not routed here: a minIP merges
vessels and microbleeds of several slices, a phase image is not what the detector reads), and
it has at least :data:`MIN_INSTANCES` slices, at most :data:`MAX_SLICE_MM` apart (the
thick slices of a 2D SWI fail the job with that reason).

**How it reads a series** (:meth:`MicrobleedModel.predict`):

1. the slices onto the detector's canvas (:mod:`.preprocess`), 2.5D;
2. Mask R-CNN on every slice (:func:`detect_series`), each detection's mask taken back onto
   the slice's own grid;
3. detections merged through the slices into 3D candidates, vessels seen end-on dropped
   (:mod:`.merge`);
4. the series registered to the MNI template (:func:`neuroread.models.atlas.register`, affine,
   about a second): each candidate's centroid gets its atlas region and its location class
   (lobar, deep, infratentorial) **from the atlas after registration**, not from the network;
   the reader's anatomical rules screen the candidates (:func:`screen`): a microbleed lies in
   the parenchyma, so a focus in a ventricle, cisternal CSF or outside the brain is choroid
   plexus or pineal calcification or a flow void, and bilaterally symmetric foci of the globus
   pallidus are its physiological calcification;
5. the false-positive filter (:mod:`.candidates`, boosted trees over each candidate's shape,
   signal, detector score and template position) gives each candidate its probability of
   being a microbleed; those at the operating point (``detection_threshold``) are the
   microbleeds (:meth:`MicrobleedModel.microbleeds`);
6. the scan's context (:mod:`.context`) and the bag of microbleeds → the subtype MIL.

**Outputs**: every microbleed as a :class:`~neuroread.models.Lesion` (its mask on the SWI grid,
volume, centroid, coded location class, equivalent diameter, the filter's probability,
MIL attention weight, a tracking id naming its number, class and atlas region); the counts per
location class (:class:`~neuroread.models.Table`); the subtype distribution (multi-class
"Small vessel disease subtype"); key slices: the :data:`KEY_SLICES` slices crossing the most
microbleeds; a heatmap (``instance_weight``) painting each microbleed's mask with its MIL
weight over the largest weight, explaining the decided subtype.

**Codes**: no SNOMED CT identifiers for the subtypes, the microbleed or the location classes
could be checked here, so they are in the node's private scheme ``99NEUROREAD`` (a wrong
identifier in a PACS is worse than an honest private code); the diameter is SCT 81827009.

A series too short, without signal, or that does not register to the template raises
``ValueError`` (the node records the job failed with that reason, not retried).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..atlas import LOCATION_CLASSES, Registration, load_atlas, location_class, region_name, register
from ..checkpoint import NetworkModel
from ..registry import ModelEntry, check_ready
from ..result import (
    Classification,
    Column,
    Heatmap,
    KeySlice,
    Lesion,
    Measurement,
    ModelResult,
    SeriesVolume,
    Table,
    TableRow,
)
from ..spec import UCUM_COUNT, UCUM_MM, ClassLabel, Code, InputSlot, ModelSpec, MultiClass
from .candidates import candidate_features
from .config import CMBConfig
from .context import CONTEXT_FEATURES, scan_context
from .merge import Microbleed3D, SliceDetection, merge_detections
from .network import MicrobleedNet
from .preprocess import Prepared, UnusableSeries, prepare

VERSION = "1.0.0"
KEY_SLICES = 5
MIN_INSTANCES = 16
NON_PARENCHYMA = ("Lateral_Ventricle", "Inf_Lat_Vent", "3rd_Ventricle", "4th_Ventricle")
SYMMETRY_MM = 6.0
MAX_SLICE_MM = 3.5  # 3D SWI: 1-2.5 mm slices; the detector never saw thicker ones
BATCH = 8
PRIVATE = "99NEUROREAD"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_WEIGHTS = WEIGHTS_DIR / "cmb-svd-demo.pt"

MICROBLEED = Code("CMB", PRIVATE, "Cerebral microbleed")
DIAMETER = Code("81827009", "SCT", "Diameter")
LOCATION_CODES = {
    "lobar": Code("CMBLOBAR", PRIVATE, "Lobar (cortex and juxtacortical white matter)"),
    "deep": Code("CMBDEEP", PRIVATE, "Deep (basal ganglia, thalamus, capsules)"),
    "infratentorial": Code("CMBINFRA", PRIVATE, "Infratentorial (brainstem, cerebellum)"),
}
ALL_LOCATIONS = Code("CMBALL", PRIVATE, "All locations")
COUNT = Code("CMBCOUNT", PRIVATE, "Number of cerebral microbleeds")
MICROBLEEDS = Code("CMBN", PRIVATE, "Microbleeds")

SUBTYPE = MultiClass("subtype", Code("SVDSUBTYPE", PRIVATE, "Small vessel disease subtype"), (
    ClassLabel("arteriolosclerosis", Code("ASVD", PRIVATE, "Arteriolosclerosis (hypertensive small vessel disease)")),
    ClassLabel("caa", Code("CAA", PRIVATE, "Cerebral amyloid angiopathy")),
    ClassLabel("cadasil", Code("CADASIL", PRIVATE, "CADASIL")),
))
CLASSES: tuple[str, ...] = tuple(c.name for c in SUBTYPE.classes)

SLOT = InputSlot(
    "swi", "MR", sequences=("SWI",), body_parts=("HEAD", "BRAIN"), min_slices=MIN_INSTANCES,
    image_components=("MAGNITUDE",),
    description="axial 3D susceptibility-weighted magnitude of the brain (SWI, SWAN, SWIp), not its phase or minIP",
)
SPEC = ModelSpec(name="cmb-svd", version=VERSION,
                 summary="Mask R-CNN microbleed detection and MIL small-vessel-disease subtype on SWI",
                 slots=(SLOT,), outcomes=(SUBTYPE,), explanations=("instance_weight",))


def detect_series(net: MicrobleedNet, prep: Prepared, device: torch.device, batch: int = BATCH
                  ) -> list[SliceDetection]:
    """Every slice's detections above the configuration's score floor, masks on the series' grid
    (a detection whose mask covers no voxel there keeps its peak voxel, when that reaches half
    the mask threshold; else it is dropped)."""
    out: list[SliceDetection] = []
    n = prep.canvas.shape[0]
    for start in range(0, n, batch):
        slices = list(range(start, min(n, start + batch)))
        found = net.detect(prep.inputs(slices).to(device))
        for k, det in zip(slices, found):
            for j in range(len(det.scores)):
                plane = prep.plane_to_source(det.masks[j].float().cpu().numpy())
                mask = plane >= 0.5
                if not mask.any():
                    peak = np.unravel_index(int(np.argmax(plane)), plane.shape)
                    if plane[peak] < 0.25:
                        continue
                    mask[peak] = True
                out.append(SliceDetection(k, mask, float(det.scores[j]), det.representations[j].float().cpu().numpy()))
    return out


def instance_features(found: list[Microbleed3D], template_lps: np.ndarray, classes: list[str],
                      voxel_mm3: float, config: CMBConfig) -> np.ndarray:
    """The MIL's instance features: the representation (with ``config.mil_roi_features``) then
    :data:`~.network.GEOMETRY`; ``[m, config.instance_width]``."""
    rows = []
    for m, q, c in zip(found, template_lps, classes):
        onehot = [float(c == k) for k in LOCATION_CLASSES]
        geometry = np.asarray(onehot + [float(np.log(m.voxels * voxel_mm3)), *(np.asarray(q, float) / 100.0), m.score],
                              np.float32)
        rows.append(np.concatenate([m.representation.astype(np.float32), geometry])
                    if config.mil_roi_features else geometry)
    return np.stack(rows) if rows else np.zeros((0, config.instance_width), np.float32)


class Found(NamedTuple):
    """What :meth:`MicrobleedModel.candidates` and :meth:`MicrobleedModel.microbleeds` found:
    the candidates or microbleeds, the registration, their centroids (patient LPS), the same in
    template space, their :data:`~.candidates.CANDIDATE_FEATURES` and their probability of
    being a microbleed (the filter's)."""

    microbleeds: list[Microbleed3D]
    registration: Registration
    centroids: np.ndarray
    template: np.ndarray
    features: np.ndarray
    probabilities: np.ndarray


def screen(template_lps: np.ndarray) -> np.ndarray:
    """Which candidates stay microbleeds by the reader's anatomical rules (module docstring):
    not in a ventricle, cisternal CSF or outside the brain (choroid plexus and pineal
    calcification, flow voids of the basal arteries), and not one of a bilaterally symmetric
    pair of pallidal foci (physiological calcification of the globus pallidus)."""
    atlas = load_atlas()
    points = np.asarray(template_lps, float).reshape(-1, 3)
    i, j, k = atlas.index_of(points).T
    names = [atlas.names.get(int(v), "") for v in atlas.labels[i, j, k]]
    keep = np.array([not (n == "" or n == "CSF" or n.endswith(NON_PARENCHYMA)) for n in names], bool)
    pallidal = [n.endswith("Pallidum") for n in region_name(points)] if len(points) else []
    for a in range(len(points)):
        for b in range(a + 1, len(points)):
            mirrored = points[b] * np.array([-1.0, 1.0, 1.0])  # the template is symmetric about x = 0
            if pallidal[a] and pallidal[b] and points[a][0] * points[b][0] < 0 \
                    and np.linalg.norm(points[a] - mirrored) <= SYMMETRY_MM:
                keep[a] = keep[b] = False
    return keep


class MicrobleedModel(NetworkModel):
    """The microbleed detector and subtype MIL behind the model contract (module docstring)."""

    classes = CLASSES
    config_type = CMBConfig

    def __init__(self, spec: ModelSpec = SPEC) -> None:
        super().__init__(spec)

    def build(self, config: CMBConfig) -> MicrobleedNet:
        return MicrobleedNet(config, len(CONTEXT_FEATURES))

    def candidates(self, volume: SeriesVolume) -> Found:
        """Every 3D candidate above the detector's score floor that the anatomical screen keeps,
        with its features and the filter's probability (steps 1-5 of the module docstring,
        before the operating point)."""
        config = self.net.config
        if volume.spacing[2] > MAX_SLICE_MM:
            raise UnusableSeries(f"its slices are {volume.spacing[2]:.1f} mm apart; cmb-svd reads 3D SWI with slices "
                                 f"at most {MAX_SLICE_MM:g} mm apart (a microbleed of 3 mm vanishes between thicker "
                                 "ones)")
        prep = prepare(volume, config.pixel_mm, config.input_size)
        found = merge_detections(detect_series(self.net, prep, self.device), volume.array.shape, volume.spacing)
        try:
            registration = register(volume)
        except ValueError as exc:
            raise UnusableSeries(f"{exc}; cmb-svd needs an SWI of the whole brain") from exc
        centroids = np.array([volume.index_to_lps(m.centroid) for m in found]).reshape(-1, 3)
        template = registration.to_template(centroids) if found else np.zeros((0, 3))
        keep = screen(template)
        found, centroids, template = [m for m, k in zip(found, keep) if k], centroids[keep], template[keep]
        features = candidate_features(found, prep.scaled, volume.spacing, template)
        probabilities = self.net.candidates.probabilities(features, np.array([m.score for m in found]))
        return Found(found, registration, centroids, template, features, probabilities)

    def microbleeds(self, volume: SeriesVolume) -> Found:
        """The candidates (:meth:`candidates`) whose probability reaches the operating point."""
        c = self.candidates(volume)
        keep = c.probabilities >= self.net.config.detection_threshold
        return Found([m for m, k in zip(c.microbleeds, keep) if k], c.registration, c.centroids[keep],
                     c.template[keep], c.features[keep], c.probabilities[keep])

    def predict(self, inputs: dict[str, SeriesVolume]) -> ModelResult:
        """Microbleeds, their counts, the subtype and its explanation for one SWI series (module
        docstring). Deterministic for given weights and input. Raises RuntimeError before
        :meth:`load`, ValueError for other input slots or a series it cannot read."""
        check_ready(self, inputs)
        vol = inputs[SLOT.name]
        found, registration, centroids, template, _, probability = self.microbleeds(vol)
        classes = location_class(template) if len(found) else []
        regions = region_name(template) if len(found) else []
        voxel = float(np.prod(vol.spacing))
        context = scan_context(vol, registration, classes)
        bag = instance_features(found, template, classes, voxel, self.net.config)
        with torch.inference_mode():
            out = self.net.subtype([torch.from_numpy(bag).to(self.device)],
                                   torch.from_numpy(context[None]).to(self.device))
        probabilities = out.probabilities[0].double().cpu().numpy()
        weights = out.weights[0].double().cpu().numpy()
        classification = Classification.of(SUBTYPE, probabilities / probabilities.sum())

        uid = vol.series_instance_uid
        lesions = []
        for i, (m, c, region, w, p, q) in enumerate(zip(found, classes, regions, weights, centroids, probability),
                                                   start=1):
            volume_mm3 = m.voxels * voxel
            diameter = 2.0 * (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
            lesions.append(Lesion(
                uid, "microbleed", MICROBLEED, m.mask, volume_mm3, tuple(float(v) for v in p),
                location=LOCATION_CODES[c], measurements=(Measurement(DIAMETER, diameter, UCUM_MM),),
                probability=float(min(1.0, q)), instance_weight=float(w),
                tracking_id=f"microbleed {i} {c} {region.replace('_', ' ')}"[:64]))
        counts = Table("microbleed counts", COUNT, (Column("count", MICROBLEEDS, UCUM_COUNT),), tuple(
            [TableRow(LOCATION_CODES[k], (float(classes.count(k)),)) for k in LOCATION_CLASSES]
            + [TableRow(ALL_LOCATIONS, (float(len(found)),))]))
        heatmaps = ()
        if found:
            heat = np.zeros(vol.array.shape, np.float32)
            top = float(weights.max())
            for m, w in zip(found, weights):
                heat[m.mask] = np.maximum(heat[m.mask], float(w) / top)
            heatmaps = (Heatmap(uid, "instance_weight", heat, explains=classification.decided, value_range=(0.0, 1.0),
                                description="each microbleed's MIL attention weight over the largest"),)
        return ModelResult(model=self.spec.name, version=self.spec.version, card=self.card,
                           classifications=(classification,), key_slices=self._key_slices(vol, found),
                           heatmaps=heatmaps, lesions=tuple(lesions), tables=(counts,))

    @staticmethod
    def _key_slices(vol: SeriesVolume, found: list[Microbleed3D]) -> tuple[KeySlice, ...]:
        """The slices crossing the most microbleeds (ties: the higher summed score, then the lower slice)."""
        if not found:
            return ()
        crossing = np.stack([m.mask.any(axis=(1, 2)) for m in found])  # [microbleeds, slices]
        count = crossing.sum(axis=0)
        score = (crossing * np.array([m.score for m in found])[:, None]).sum(axis=0)
        order = sorted(np.flatnonzero(count), key=lambda k: (-int(count[k]), -float(score[k]), int(k)))[:KEY_SLICES]
        return tuple(KeySlice(vol.series_instance_uid, int(k), vol.sop_instance_uids[int(k)], float(count[k]), rank)
                     for rank, k in enumerate(order, start=1))


ENTRY = ModelEntry(SPEC, functools.partial(MicrobleedModel, SPEC), demo_weights=DEMO_WEIGHTS)
