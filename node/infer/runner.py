"""Infer: a model runs on the :class:`~neuroread.models.SeriesVolume` of each input slot.

Series are read by :func:`neuroread.models.volume.load_series` (shared with training).

:class:`ModelRunner` loads each model once (per runner, i.e. per worker), on first use, and
checks every result against the model's contract. It also applies the configuration's
threshold overrides (``models: {name: {thresholds: {label: t}}}``): the model predicts with
its spec's thresholds, its result is checked against that spec, then each overridden
finding gets the configured threshold (so ``present`` follows it) and :meth:`ModelRunner.spec`
is the spec with those thresholds, the one to encode with (the SR's algorithm parameters and
the report page then state the threshold that decided).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from neuroread.models import Model, ModelRegistry, ModelResult, ModelSpec, SeriesVolume

log = logging.getLogger(__name__)


class ModelRunner:
    """Runs registered models, each loaded once per runner (one runner per worker).

    ``weights``: model name → weights file (``None`` or absent: the model's demo weights).
    ``device``: one device for all models, or model name → device (absent: ``cpu``).
    ``thresholds``: model name → {label: threshold} overriding the spec's (see the module
    docstring); unknown models or labels and thresholds outside (0, 1) raise ``ValueError``.
    ``torch_threads``: if given, ``torch.set_num_threads`` is set to it when the runner is
    made (a process-wide torch setting: give each worker process its own runner).
    """

    def __init__(self, registry: ModelRegistry, weights: Mapping[str, Path | None] | None = None,
                 device: str | Mapping[str, str] = "cpu", torch_threads: int | None = None,
                 thresholds: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.registry = registry
        self.weights = dict(weights or {})
        for name in self.weights:
            registry.spec(name)  # unknown names fail here, with "did you mean"
        self._specs = {name: _with_thresholds(registry.spec(name), overrides)
                       for name, overrides in (thresholds or {}).items() if overrides}
        self.devices = dict(device) if isinstance(device, Mapping) else {n: device for n in registry.names()}
        if torch_threads is not None:
            if not isinstance(torch_threads, int) or torch_threads < 1:
                raise ValueError(f"ModelRunner.torch_threads must be an integer >= 1, got {torch_threads!r}")
            import torch
            torch.set_num_threads(torch_threads)
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def model(self, name: str) -> Model:
        """The loaded model ``name``, loading it on first use."""
        with self._lock:
            if name not in self._models:
                model = self.registry.create(name)
                weights, device = self.weights.get(name), self.devices.get(name, "cpu")
                if weights is not None and not Path(weights).is_file():
                    raise FileNotFoundError(f"model {name}: weights file {weights} does not exist")
                model.load(None if weights is None else Path(weights), device)
                self._models[name] = model
                self.loads += 1
                log.info("loaded model %s %s on %s (weights: %s)", name, model.spec.version, device,
                         weights or "demo")
            return self._models[name]

    def spec(self, name: str) -> ModelSpec:
        """The spec of ``name`` with this runner's threshold overrides (the registry's if none)."""
        return self._specs.get(name) or self.registry.spec(name)

    def run(self, name: str, inputs: Mapping[str, SeriesVolume]) -> ModelResult:
        """``predict`` on one volume per input slot, checked against the model's contract,
        with the findings' thresholds those of :meth:`spec`."""
        spec = self.registry.spec(name)
        slots = {s.name: s for s in spec.slots}
        if set(inputs) != set(slots):
            raise ValueError(f"model {name}: inputs {sorted(inputs)} do not fill its slots {sorted(slots)}")
        for slot_name, vol in inputs.items():
            if vol.array.shape[0] < slots[slot_name].min_slices:
                raise ValueError(f"model {name}: slot {slot_name!r} needs at least {slots[slot_name].min_slices} "
                                 f"slices, series {vol.series_instance_uid} has {vol.array.shape[0]}")
        result = self.model(name).predict(dict(inputs))
        result.check(spec, dict(inputs))
        effective = self.spec(name)
        if effective is not spec:
            result = dataclasses.replace(result, findings=tuple(
                dataclasses.replace(f, threshold=effective.label(f.label).threshold) for f in result.findings))
        log.info("model %s ran on %s: %d findings", name,
                 [v.series_instance_uid for v in inputs.values()], len(result.findings))
        return result


def _with_thresholds(spec: ModelSpec, overrides: Mapping[str, float]) -> ModelSpec:
    """``spec`` with the thresholds of the labels in ``overrides`` replaced (validated by :class:`Label`)."""
    labels = [lb.name for lb in spec.labels]
    unknown = sorted(set(overrides) - set(labels))
    if unknown:
        raise ValueError(f"model {spec.name}: threshold overrides for unknown labels {unknown}; labels: {labels}")
    return dataclasses.replace(spec, labels=tuple(
        dataclasses.replace(lb, threshold=float(overrides[lb.name])) if lb.name in overrides else lb
        for lb in spec.labels))
