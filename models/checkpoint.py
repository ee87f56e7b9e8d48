"""Weights files: one format for every model, written by ``training/`` and read by the models.

A checkpoint is a ``torch.save`` of a plain dict (no pickled classes, so ``weights_only=True``
loads it)::

    {"format": "neuroread-checkpoint/1", "model": "ct-hemorrhage", "config": {...},
     "labels": ["any", ...], "state_dict": {...}, "card": {"architecture": {...},
     "training_data": "...", "demo": true, "metrics": {...}, "thresholds": {...}}}

``labels`` are the outputs in the network's order (a multi-label model's labels, a
multi-class model's classes). ``card.thresholds`` (optional) are per-label operating points
chosen on validation data. Floating-point tensors may be stored in float16 to keep a
committed file small (``save_checkpoint(..., half=True)``); they are read back as float32.

``config`` is what the model needs to rebuild its network (e.g. ``DrCT2Config.to_dict()``);
``card`` becomes the :class:`~neuroread.models.spec.ModelCard` with ``weights_sha256`` =
:func:`state_dict_sha256`: a hash of the tensors themselves (names, dtypes, shapes, bytes), so
the same weights have the same hash however they were saved. (Not the file's hash: the bytes
depend on how ``torch.save`` was called, e.g. it records the name of a path it writes to; saved
here through a file object, two saves of the same weights are byte-identical too.)
"""
from __future__ import annotations

import difflib
import hashlib
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .spec import ModelCard, ModelSpec

FORMAT = "neuroread-checkpoint/1"
_KEYS = ("format", "model", "config", "labels", "state_dict", "card")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the network's config and state, its labels and its card."""

    model: str
    config: dict[str, Any]
    labels: tuple[str, ...]
    state_dict: dict[str, torch.Tensor]
    card: ModelCard


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: each name, dtype, shape and little-endian bytes."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: Path, *, model: str, config: dict[str, Any], labels: list[str] | tuple[str, ...],
                    state_dict: dict[str, torch.Tensor], architecture: dict[str, Any], training_data: str,
                    demo: bool, metrics: dict[str, float] | None = None,
                    thresholds: dict[str, float] | None = None, half: bool = False) -> str:
    """Write a checkpoint atomically (temporary file, rename); returns :func:`state_dict_sha256`
    of what is stored (``half``: float tensors as float16)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def stored(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().cpu().contiguous()
        return t.half() if half and t.is_floating_point() else t

    blob = {"format": FORMAT, "model": model, "config": dict(config), "labels": list(labels),
            "state_dict": {k: stored(v) for k, v in state_dict.items()},
            "card": {"architecture": dict(architecture), "training_data": training_data, "demo": bool(demo),
                     "metrics": {k: float(v) for k, v in (metrics or {}).items()},
                     "thresholds": dict(thresholds or {})}}
    unknown = sorted(set(blob["card"]["thresholds"]) - set(labels))
    if unknown:
        raise ValueError(f"save_checkpoint: thresholds for {unknown}, which are not among the outputs {list(labels)}")
    # The card is validated before anything is written: a file load_checkpoint would refuse is never made.
    ModelCard(architecture=blob["card"]["architecture"], weights_sha256=state_dict_sha256(blob["state_dict"]),
              training_data=training_data, demo=bool(demo), metrics=blob["card"]["metrics"],
              thresholds=blob["card"]["thresholds"])
    blob["card"]["thresholds"] = {k: float(v) for k, v in blob["card"]["thresholds"].items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:  # a file object: torch would record the temporary file's name
            torch.save(blob, f)
        os.chmod(tmp, 0o644)  # mkstemp made it private; weights are not secret
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return state_dict_sha256(blob["state_dict"])


def load_checkpoint(path: Path, model: str) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` for ``model``; ValueError says what is
    wrong (not a checkpoint, another model's, a missing key)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:  # what torch raises for a foreign file
        raise ValueError(f"weights file {path} is not a readable checkpoint: {type(exc).__name__}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"weights file {path} is not a {FORMAT} file")
    missing = [k for k in _KEYS if k not in blob]
    if missing:
        raise ValueError(f"weights file {path} lacks {', '.join(missing)}")
    if blob["model"] != model:
        raise ValueError(f"weights file {path} holds weights for {blob['model']!r}, not {model!r}")
    card = blob["card"]
    try:
        model_card = ModelCard(architecture=dict(card["architecture"]),
                               weights_sha256=state_dict_sha256(blob["state_dict"]),
                               training_data=card["training_data"], demo=bool(card["demo"]),
                               metrics=dict(card.get("metrics", {})), thresholds=dict(card.get("thresholds", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"weights file {path}: its card is not valid: {exc}") from exc
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in blob["state_dict"].items()}
    return Checkpoint(model=blob["model"], config=dict(blob["config"]), labels=tuple(blob["labels"]),
                      state_dict=state, card=model_card)


def config_to_dict(config: Any, paper: str) -> dict[str, Any]:
    """A network configuration (a dataclass) as a checkpoint's ``config``: its fields, JSON-ready
    (tuples as lists), plus a ``paper`` note; :func:`config_from_dict` reads it back."""
    out: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    out["paper"] = paper
    return out


def config_from_dict(cls: type, data: Mapping[str, Any], *, required: tuple[str, ...] = ()) -> Any:
    """The configuration dataclass ``cls`` from what :func:`config_to_dict` wrote (or a user's
    dict): the ``paper`` note skipped, lists read back as tuples where the field's default is a
    tuple, ``required`` keys checked, unknown keys refused with the closest known name."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known) - {"paper"})
    if unknown:
        hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise ValueError(f"{cls.__name__}: unknown keys {said}; known: {sorted(known)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{cls.__name__}: {', '.join(repr(k) for k in missing)} is missing")
    values = {k: tuple(v) if isinstance(known[k].default, tuple) and isinstance(v, list) else v
              for k, v in data.items() if k in known}
    return cls(**values)


def load_network(path: Path, model: str, outputs: tuple[str, ...], config_type: type,
                 build: Callable[[Any], torch.nn.Module]) -> tuple[torch.nn.Module, Checkpoint]:
    """The network a checkpoint of ``model`` holds, rebuilt and filled, and the checkpoint.

    ``outputs``: the labels or classes the model's spec has, in order (the checkpoint's must be
    the same); ``config_type``: the network's configuration dataclass (its ``from_dict`` reads
    the checkpoint's ``config``); ``build``: configuration → network. Raises ValueError naming
    the file and what is wrong (see :func:`load_checkpoint`; other outputs; a configuration the
    type refuses; tensors missing, unexpected or mis-shaped for that configuration)."""
    ckpt = load_checkpoint(path, model)
    if ckpt.labels != tuple(outputs):
        raise ValueError(f"weights file {path}: labels {list(ckpt.labels)} are not {model}'s {list(outputs)} "
                         "(same names, same order)")
    try:
        config = config_type.from_dict(ckpt.config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"weights file {path}: invalid {config_type.__name__}: {err}") from err
    net = build(config)
    try:
        net.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
        raise ValueError(f"weights file {path} does not fit its own configuration: {err}") from err
    return net, ckpt


class NetworkModel:
    """What every network-backed model shares behind the contract: the spec, the network, its
    card and device, :meth:`from_network` and :meth:`load` (through :func:`load_network`).

    A subclass sets ``classes`` (its outcome's classes, the checkpoint's outputs) and
    ``config_type`` (the configuration dataclass, whose ``n_classes`` must match), implements
    :meth:`build` (configuration → network) and ``predict``."""

    classes: tuple[str, ...] = ()
    config_type: type = object

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.net: torch.nn.Module | None = None
        self.card: ModelCard | None = None
        self.device = torch.device("cpu")

    def build(self, config: Any) -> torch.nn.Module:
        raise NotImplementedError

    @classmethod
    def from_network(cls, net: torch.nn.Module, card: ModelCard, device: str = "cpu") -> NetworkModel:
        """The model around a network in memory (training evaluates it through ``predict``)."""
        from .runtime import torch_device

        model = cls()
        if net.config.n_classes != len(cls.classes):
            raise ValueError(f"{model.spec.name}: network has {net.config.n_classes} outputs for "
                             f"{len(cls.classes)} classes")
        target = torch_device(device)
        model.net, model.card, model.device = net.to(target).eval(), card, target
        return model

    def load(self, weights: Path, device: str = "cpu") -> None:
        """Load the checkpoint ``weights`` onto ``device``; ValueError naming the file and the problem."""
        from .runtime import torch_device

        path = Path(weights)
        target = torch_device(device)

        def build(config: Any) -> torch.nn.Module:
            if config.n_classes != len(self.classes):
                raise ValueError(f"weights file {path}: configuration has {config.n_classes} outputs for "
                                 f"{len(self.classes)} classes")
            return self.build(config)

        net, ckpt = load_network(path, self.spec.name, self.classes, self.config_type, build)
        self.net, self.card, self.device = net.to(target).eval(), ckpt.card, target
        logging.getLogger(type(self).__module__).info(
            "loaded %s weights %s (sha256 %s, config %s, demo %s) on %s", self.spec.name, path,
            ckpt.card.weights_sha256[:12], net.config.name, ckpt.card.demo, target)
