"""Models by name: the protocol every model follows and an immutable registry of them.

The node is handed a :class:`ModelRegistry` (dependencies passed in, never read from a
global); :func:`default_registry` lists the product models, and tests build registries of
their own. A model is created by its factory and loaded once per worker.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol, runtime_checkable

from .result import ModelResult, SeriesVolume
from .spec import ModelSpec


@runtime_checkable
class Model(Protocol):
    """What the node needs of a model.

    ``load(weights, device)`` reads a weights file (the runner resolves which:
    :func:`neuroread.models.weights.resolve_weights`) onto a torch device; ``predict(inputs)``
    takes one :class:`SeriesVolume` per input slot name and returns a :class:`ModelResult` that
    satisfies ``ModelResult.check(spec, inputs)``, its findings at the spec's thresholds.
    ``card`` is the loaded weights' card (``None`` before ``load``).
    """

    spec: ModelSpec

    def load(self, weights: Path, device: str = "cpu") -> None: ...

    def predict(self, inputs: dict[str, SeriesVolume]) -> ModelResult: ...


def check_ready(model: Model, inputs: dict[str, SeriesVolume]) -> None:
    """What every ``predict`` checks first: RuntimeError before ``load`` (no card yet), ValueError
    when ``inputs`` do not name exactly the spec's input slots."""
    if getattr(model, "card", None) is None:
        raise RuntimeError(f"{model.spec.name}: predict before load")
    slots = [s.name for s in model.spec.slots]
    if set(inputs) != set(slots):
        said = f"one input slot {slots[0]!r}" if len(slots) == 1 else f"input slots {sorted(slots)}"
        raise ValueError(f"{model.spec.name} takes {said}, got {sorted(inputs)}")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its spec, known without loading anything, its factory and the
    weights file it runs with when the configuration names none (its committed demo weights;
    ``None``: the model has none and needs configured weights)."""

    spec: ModelSpec
    factory: Callable[[], Model]
    demo_weights: Path | None = None


class ModelRegistry:
    """An immutable set of models by name."""

    def __init__(self, entries: Iterable[ModelEntry] = ()) -> None:
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            if entry.spec.name in self._entries:
                raise ValueError(f"model {entry.spec.name!r} registered twice")
            self._entries[entry.spec.name] = entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def _entry(self, name: str) -> ModelEntry:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            known = ", ".join(self.names()) or "none"
            raise ValueError(f"unknown model {name!r} (registered: {known}).{hint}")
        return self._entries[name]

    def spec(self, name: str) -> ModelSpec:
        return self._entry(name).spec

    def entry(self, name: str) -> ModelEntry:
        return self._entry(name)

    def create(self, name: str) -> Model:
        """A new, unloaded instance of the model ``name``."""
        model = self._entry(name).factory()
        if model.spec != self.spec(name):
            raise ValueError(f"model {name!r}: its factory made a model with another spec")
        return model

    def with_model(self, entry: ModelEntry) -> "ModelRegistry":
        """A new registry with ``entry`` added."""
        return ModelRegistry([*self._entries.values(), entry])


def load_plugin(ref: str) -> list[ModelEntry]:
    """The entries named by ``'package.module:NAME'``: a :class:`ModelEntry` or a list of them.

    Raises ValueError saying what is wrong (module not importable, name missing, wrong type).
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"plugin {ref!r}: expected 'package.module:NAME'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"plugin {ref!r}: cannot import {module_name}: {exc}") from exc
    if not hasattr(module, attr):
        raise ValueError(f"plugin {ref!r}: module {module_name} has no {attr!r}")
    value = getattr(module, attr)
    entries = [value] if isinstance(value, ModelEntry) else list(value) if isinstance(value, (list, tuple)) else None
    if entries is None or not all(isinstance(e, ModelEntry) for e in entries):
        raise ValueError(f"plugin {ref!r}: {attr} must be a neuroread.models.ModelEntry or a list of them, "
                         f"got {type(value).__name__}")
    return entries


ENTRY_POINT_GROUP = "neuroread.models"


def product_entries() -> list[ModelEntry]:
    """The product models: every entry of the ``neuroread.models`` entry-point group, declared in
    ``pyproject.toml`` (``name = "package.module:NAME"``), so adding a model touches no code here.

    Loaded when asked for, so that importing the contract does not import torch. Raises
    ValueError when an entry point cannot be loaded or its name is not its spec's name.
    """
    entries: list[ModelEntry] = []
    for point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        found = load_plugin(point.value)
        if [e.spec.name for e in found] != [point.name]:
            raise ValueError(f"entry point {point.name!r} ({point.value}) names models "
                             f"{[e.spec.name for e in found]}, expected one named {point.name!r}")
        entries += found
    if not entries:
        raise ValueError(f"no product models: the entry-point group {ENTRY_POINT_GROUP!r} is empty "
                         "(is neuroread installed? pip install -e .)")
    return entries


def default_registry(plugins: Iterable[str] = ()) -> ModelRegistry:
    """The product models (:func:`product_entries`), plus the entries of each plugin reference
    (see :func:`load_plugin`).

    Product models: ``ct-hemorrhage`` (DrCT2, RSNA's labels; its CQ500 variant is a plugin away,
    see :mod:`neuroread.models.ct_hemorrhage.model`).
    """
    entries = product_entries()
    for ref in plugins:
        entries += load_plugin(ref)
    return ModelRegistry(entries)
