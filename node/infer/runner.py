"""Infer: a model runs on the :class:`~neuroread.models.SeriesVolume` of each input slot.

Series are read by :func:`neuroread.models.volume.load_series` (shared with training).

:class:`ModelRunner` loads each model once (per runner, i.e. per worker), on first use, with
the weights :class:`~neuroread.models.weights.WeightsCatalog` resolves for it (configured file,
rebuilt demo weights, committed demo weights), on its device and with its thread count
(:func:`neuroread.models.runtime.torch_threads`: scoped to the calling thread, never
process-wide), and checks every result against the model's contract.

**Thresholds.** A model predicts with its spec's default thresholds and its result is checked
against that spec; then every finding gets its effective threshold (so ``present`` follows
it): the configuration's override (``models: {name: {thresholds: {label: t}}}``), else the
operating point stored in the weights' card, else the spec's default. :meth:`ModelRunner.spec`
is the spec with those thresholds, the one to encode with (the SR's algorithm parameters, the
report page and the result UIDs then state the thresholds that decided).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from neuroread.models import Model, ModelRegistry, ModelResult, ModelSpec, SeriesVolume
from neuroread.models.weights import WeightsCatalog

log = logging.getLogger(__name__)


class ModelRunner:
    """Runs registered models, each loaded once per runner (one runner per worker).

    ``weights``: model name → weights file (absent or ``None``: resolved by the catalog, see
    :mod:`neuroread.models.weights`). ``device``: one device for all models, or model name →
    device (absent: ``cpu``). ``thresholds``: model name → {label: threshold} overriding the
    card's and the spec's (see the module docstring); unknown models or labels raise
    ``ValueError``. ``torch_threads``: CPU threads used while this runner loads and predicts
    (in the calling thread only; ``None``: as they are). ``catalog``: a shared
    :class:`WeightsCatalog` (built from ``weights`` and ``thresholds`` when not given).
    """

    def __init__(self, registry: ModelRegistry, weights: Mapping[str, Path | None] | None = None,
                 device: str | Mapping[str, str] = "cpu", torch_threads: int | None = None,
                 thresholds: Mapping[str, Mapping[str, float]] | None = None,
                 catalog: WeightsCatalog | None = None) -> None:
        self.registry = registry
        self.catalog = catalog if catalog is not None else WeightsCatalog(registry, weights, thresholds)
        self.devices = dict(device) if isinstance(device, Mapping) else {n: device for n in registry.names()}
        if torch_threads is not None and (isinstance(torch_threads, bool) or not isinstance(torch_threads, int)
                                          or torch_threads < 1):
            raise ValueError(f"ModelRunner.torch_threads must be an integer >= 1, got {torch_threads!r}")
        self.threads = torch_threads
        self._models: dict[str, tuple[Model, str]] = {}  # name → (model, SHA-256 of its weights)
        self._lock = threading.Lock()
        self.loads = 0

    def model(self, name: str) -> Model:
        """The loaded model ``name``, loading it on first use and again when the catalog's weights
        for it changed (a file rebuilt or replaced); :class:`MissingWeights` when it has none."""
        from neuroread.models.runtime import torch_threads

        with self._lock:
            weights = self.catalog.weights(name)
            loaded = self._models.get(name)
            if loaded is None or loaded[1] != weights.sha256:
                model = self.registry.create(name)
                device = self.devices.get(name, "cpu")
                with torch_threads(self.threads):
                    model.load(weights.path, device)
                self._models[name] = (model, weights.sha256)
                self.loads += 1
                log.info("loaded model %s %s on %s (weights %s, sha256 %s)%s", name, model.spec.version, device,
                         weights.path, weights.sha256[:12], "" if loaded is None else ": its weights changed")
            return self._models[name][0]

    def spec(self, name: str) -> ModelSpec:
        """The effective spec of ``name``: its weights' card thresholds and the configuration's overrides applied."""
        return self.catalog.spec(name)

    def identity(self, name: str) -> str:
        """The weights' SHA-256 and the effective thresholds (what result UIDs and job keys derive from)."""
        return self.catalog.identity(name)

    def run(self, name: str, inputs: Mapping[str, SeriesVolume]) -> ModelResult:
        """``predict`` on one volume per input slot, checked against the model's contract,
        with the findings' thresholds those of :meth:`spec`."""
        from neuroread.models.runtime import torch_threads

        spec = self.registry.spec(name)
        slots = {s.name: s for s in spec.slots}
        if set(inputs) != set(slots):
            raise ValueError(f"model {name}: inputs {sorted(inputs)} do not fill its slots {sorted(slots)}")
        for slot_name, vol in inputs.items():
            slot = slots[slot_name]
            if vol.array.shape[0] < slot.min_slices:
                raise ValueError(f"model {name}: slot {slot_name!r} needs at least {slot.min_slices} "
                                 f"slices, series {vol.series_instance_uid} has {vol.array.shape[0]}")
            tied = slot.same_frame_of_reference_as
            if tied is not None and (not vol.frame_of_reference_uid
                                     or vol.frame_of_reference_uid != inputs[tied].frame_of_reference_uid):
                raise ValueError(f"model {name}: slot {slot_name!r} (series {vol.series_instance_uid}) must share the "
                                 f"frame of reference of slot {tied!r} (series {inputs[tied].series_instance_uid}); "
                                 f"FrameOfReferenceUID {vol.frame_of_reference_uid or 'missing'} vs "
                                 f"{inputs[tied].frame_of_reference_uid or 'missing'}")
        model = self.model(name)
        with torch_threads(self.threads):
            result = model.predict(dict(inputs))
        result.check(spec, dict(inputs))
        effective = self.spec(name)
        if effective != spec:
            result = dataclasses.replace(result, findings=tuple(
                dataclasses.replace(f, threshold=effective.label(f.label).threshold) for f in result.findings))
        log.info("model %s ran on %s: %d findings, %d classifications", name,
                 [v.series_instance_uid for v in inputs.values()], len(result.findings), len(result.classifications))
        return result
