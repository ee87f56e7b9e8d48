"""Training recipes, one per trainable model: what is particular to a model's training.

A recipe (:class:`neuroread.training.loop.Recipe`) is found by its model's name through the
entry-point group ``neuroread.recipes`` declared in ``pyproject.toml``
(``ct-hemorrhage = "neuroread.training.recipes.ct_hemorrhage:RECIPE"``), so a new model adds a
line there and touches nothing here. Recipes are imported only when asked for.
"""
from __future__ import annotations

import difflib
from importlib import metadata
from typing import Any

GROUP = "neuroread.recipes"


def _points() -> dict[str, metadata.EntryPoint]:
    return {p.name: p for p in metadata.entry_points(group=GROUP)}


def names() -> list[str]:
    """The models that have a training recipe."""
    return sorted(_points())


def recipe(name: str) -> Any:
    """The recipe of model ``name``; ValueError with the known names (and a close match) otherwise."""
    points = _points()
    if name not in points:
        close = difflib.get_close_matches(name, points, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ValueError(f"no training recipe for model {name!r} (trainable: {', '.join(sorted(points)) or 'none'})."
                         f"{hint}")
    found = points[name].load()
    if getattr(found, "model", None) != name:
        raise ValueError(f"entry point {name!r} ({points[name].value}) is the recipe of {getattr(found, 'model', '?')!r}")
    return found
