"""Which weights a model runs with, and what they are (torchvision's ``Weights`` in spirit).

A model's weights are a checkpoint file (:mod:`neuroread.models.checkpoint`). Which file:

1. the one the configuration names (``models: {name: {weights: FILE}}``);
2. else ``$NEUROREAD_WEIGHTS/<name>-demo.pt`` when ``NEUROREAD_WEIGHTS`` names a folder holding
   it (weights you rebuilt with ``neuroread train-demo``);
3. else the demo weights committed beside the model (:attr:`ModelEntry.demo_weights`);
4. else none: :func:`resolve_weights` raises :class:`MissingWeights` saying how to get some,
   and the node records the model's series as skipped with that reason.

:class:`Weights` is the typed view of one file: its path and :class:`WeightsMeta` (the model
it is for, its network configuration, its outputs in order, its card), read without building
the network. Its :attr:`Weights.identity` (the weights' SHA-256 and the effective thresholds)
is what result UIDs and the job key are derived from, so new weights or new thresholds make
new objects and the same ones make the same UIDs.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import ModelEntry, ModelRegistry
from .spec import ModelCard, ModelSpec

WEIGHTS_ENV = "NEUROREAD_WEIGHTS"
DEFAULT_BUILD_DIR = Path("~/.cache/neuroread/weights")


class MissingWeights(ValueError):
    """A model has no weights to run with; the message says how to get some."""


@dataclass(frozen=True)
class WeightsMeta:
    """What a weights file says about itself: the model, the network's configuration, the
    outputs in the network's order and the card (architecture, SHA-256, data, metrics, thresholds)."""

    model: str
    config: dict[str, Any]
    outputs: tuple[str, ...]
    card: ModelCard


@dataclass(frozen=True)
class Weights:
    """One weights file of one model and its :class:`WeightsMeta`."""

    path: Path
    meta: WeightsMeta

    @classmethod
    def read(cls, path: Path, model: str) -> Weights:
        """Read ``path``'s metadata (the whole checkpoint is read: files are small)."""
        from .checkpoint import load_checkpoint  # torch, only when weights are read

        ckpt = load_checkpoint(Path(path), model)
        return cls(Path(path), WeightsMeta(ckpt.model, ckpt.config, ckpt.labels, ckpt.card))

    @property
    def sha256(self) -> str:
        return self.meta.card.weights_sha256

    def effective_spec(self, spec: ModelSpec, overrides: Mapping[str, float] | None = None) -> ModelSpec:
        """``spec`` with the card's thresholds, then the configuration's ``overrides``, applied."""
        thresholds = {k: v for k, v in self.meta.card.thresholds.items() if k in {lb.name for lb in spec.labels}}
        thresholds.update(overrides or {})
        return spec.with_thresholds(thresholds) if thresholds else spec

    def identity(self, spec: ModelSpec) -> str:
        """``<sha256>|<thresholds>`` for an (effective) ``spec``: what UIDs and job keys derive from."""
        return f"{self.sha256}|{spec.thresholds_text()}"


def built_demo_path(model: str) -> Path:
    """Where ``neuroread train-demo MODEL`` writes rebuilt demo weights by default:
    ``$NEUROREAD_WEIGHTS`` (else ``~/.cache/neuroread/weights``) ``/<model>-demo.pt``."""
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_BUILD_DIR).expanduser() / f"{model}-demo.pt"


def resolve_weights(entry: ModelEntry, configured: Path | None = None) -> Path:
    """The weights file ``entry`` runs with (order in the module docstring), or
    :class:`MissingWeights` saying what to do."""
    name = entry.spec.name
    if configured is not None:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise MissingWeights(f"model {name}: the configured weights file {path} does not exist "
                                 f"(models.{name}.weights)")
        return path
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        rebuilt = Path(env).expanduser() / f"{name}-demo.pt"
        if rebuilt.is_file():
            return rebuilt
    if entry.demo_weights is not None and Path(entry.demo_weights).is_file():
        return Path(entry.demo_weights)
    hint = (f"run `neuroread train-demo {name}` and set models.{name}.weights to the file it writes"
            if entry.demo_weights is not None else f"set models.{name}.weights to a weights file")
    raise MissingWeights(f"model {name} has no weights: none configured and no demo weights "
                         f"{'at ' + str(entry.demo_weights) if entry.demo_weights else 'come with it'}; {hint}")


class WeightsCatalog:
    """The weights of every model of a registry, read once per file (by path and modification
    time) and shared by threads: which file, its metadata, the effective spec and identity.

    ``configured``: model name → configured weights file; ``thresholds``: model name →
    threshold overrides from the configuration.
    """

    def __init__(self, registry: ModelRegistry, configured: Mapping[str, Path | None] | None = None,
                 thresholds: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.registry = registry
        for name in [*(configured or {}), *(thresholds or {})]:
            registry.spec(name)  # unknown names fail here, with "did you mean"
        self.configured = {k: v for k, v in (configured or {}).items() if v is not None}
        self.overrides = {k: dict(v) for k, v in (thresholds or {}).items() if v}
        for name, values in self.overrides.items():
            registry.spec(name).with_thresholds(values)  # unknown labels fail here
        self._cache: dict[tuple[str, int, int], Weights] = {}
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        """The file ``name`` runs with; :class:`MissingWeights` when there is none."""
        return resolve_weights(self.registry.entry(name), self.configured.get(name))

    def weights(self, name: str) -> Weights:
        """The :class:`Weights` ``name`` runs with (read again when the file changed)."""
        path = self.path(name)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            found = self._cache.get(key)
            if found is None:
                found = self._cache[key] = Weights.read(path, name)
            return found

    def spec(self, name: str) -> ModelSpec:
        """The effective spec: the card's thresholds and the configuration's overrides applied."""
        return self.weights(name).effective_spec(self.registry.spec(name), self.overrides.get(name))

    def identity(self, name: str) -> str:
        return self.weights(name).identity(self.spec(name))

    def status(self, name: str) -> tuple[bool, str]:
        """``(True, what)`` when ``name`` has usable weights, else ``(False, why not)``."""
        try:
            w = self.weights(name)
        except MissingWeights as exc:
            return False, str(exc)
        except ValueError as exc:  # not a checkpoint of this model, unreadable…
            return False, f"model {name}: weights unusable: {exc}"
        kind = "demo weights (synthetic phantoms)" if w.meta.card.demo else "weights"
        return True, f"{kind} {w.path} (sha256 {w.sha256[:12]})"
