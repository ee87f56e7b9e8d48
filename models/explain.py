"""Explainers as context managers that leave a network exactly as they found it.

Every explainer here is used in a ``with`` block and works only inside it::

    with GradCAM(net, "features.28") as cam:          # captum's LayerGradCam
        maps = cam(x, target=3, size=(H, W))           # [B, H, W], >= 0
    with LRP(net) as lrp:                              # zennit, EpsilonPlusFlat
        relevance = lrp(x, target=1)                   # like x, signed
    with AttentionCapture(net, ["blocks.3.attn"]) as capture:
        net(x)                                         # capture.outputs["blocks.3.attn"][0]

On leaving the block (also through an exception) the network is as it was: the ``training``
flag of every module, every parameter's ``requires_grad`` and ``.grad``, and no hook left
behind. :func:`preserved` is the guard they share, in the manner of zennit's
``Composite.context`` (``zennit/core.py``), which removes every hook and canonizer it added;
MONAI's ``visualize/class_activation_maps.py`` is what we avoid: its ``ModelWithHooks``
registers hooks for the model's lifetime. The guard does not delete hooks someone else left:
it says which module keeps them (``RuntimeError``), so the bug is found where it is made.

LRP composite. The default is zennit's ``EpsilonPlusFlat`` with batch norm merged into the
convolution before it (``SequentialMergeBatchNorm``): the epsilon rule for dense layers, the
z-plus rule for convolutions, the flat rule for the first layer. It is the usual choice for
conv–BN–ReLU networks (the composite of Kohlbrenner et al. 2020, "Towards best practice in
explaining neural network decisions with LRP"), and batch norm has to be merged because no
LRP rule is defined for it. ``EpsilonAlpha2Beta1`` (alpha-2-beta-1 for convolutions, epsilon
for dense layers) is the alternative. :class:`GuidedBackprop` gives the map the Alzheimer's
LRP paper the ``ad-lrp`` model follows compares LRP with.

Explainers of one model are not nested: LRP's rules and batch-norm merge hold for its whole
block and would change any other gradient taken through the model, so a Grad-CAM call or a
second zennit block inside it is refused.

captum, zennit (and matplotlib, which captum pulls in) are imported when an explainer is
entered or called, never when this module is imported; torch likewise, as for the other
shared pieces of :mod:`neuroread.models`.
"""
from __future__ import annotations

import difflib
import numbers
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The hook tables of a torch Module that an explainer may add to (state-dict hooks are not used).
HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
LRP_COMPOSITES = ("epsilon_plus_flat", "epsilon_alpha2_beta1")
_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}
_MISSING = object()


class NetworkState:
    """What explainers may change on a network, recorded at construction so that it can be put
    back (:meth:`restore`) and checked (:meth:`changes`).

    Recorded for ``model`` and every submodule: the ``training`` flag, the ids of the hooks in
    :data:`HOOK_TABLES`, and which Parameter and buffer objects it holds; for every parameter:
    ``requires_grad`` and the ``.grad`` tensor (the reference, not a copy). Values of parameters
    and buffers are not copied: an explainer that changes them in place must undo it itself
    (zennit's canonizers do).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._modules = [
            (name or "(root)", module, module.training,
             {table: frozenset(getattr(module, table)) for table in HOOK_TABLES},
             dict(module._parameters), dict(module._buffers))
            for name, module in model.named_modules()
        ]
        self._parameters = [(p, p.requires_grad, p.grad) for p in model.parameters()]

    def restore(self) -> None:
        """Put back every module's ``training`` flag, every parameter's ``requires_grad`` and
        ``.grad``. Hooks, parameters and buffers are not touched (see :meth:`changes`)."""
        for _, module, training, *_ in self._modules:
            module.training = training
        for param, requires_grad, grad in self._parameters:
            if param.requires_grad != requires_grad:
                param.requires_grad_(requires_grad)
            if param.grad is not grad:
                param.grad = grad

    def changes(self) -> list[str]:
        """What :meth:`restore` cannot put back, one line each, naming the module: hooks added
        since the record and still there, hooks that were there and are gone, parameters and
        buffers replaced, added or removed. Empty when the network is as recorded."""
        found = []
        for name, module, _, hooks, params, buffers in self._modules:
            for table, before in hooks.items():
                now = frozenset(getattr(module, table))
                if now - before:
                    found.append(f"module {name!r} ({type(module).__name__}) keeps {len(now - before)} hook(s) "
                                 f"added in {table}")
                if before - now:
                    found.append(f"module {name!r} ({type(module).__name__}) lost {len(before - now)} hook(s) "
                                 f"from {table} that were there before")
            for kind, before_map, now_map in (("parameter", params, module._parameters),
                                              ("buffer", buffers, module._buffers)):
                for key in sorted(before_map.keys() | now_map.keys()):
                    if before_map.get(key, _MISSING) is not now_map.get(key, _MISSING):
                        found.append(f"module {name!r} ({type(module).__name__}): {kind} {key!r} was replaced, "
                                     "added or removed")
        return found


@contextmanager
def preserved(model: torch.nn.Module) -> Iterator[NetworkState]:
    """Guard a block that changes ``model`` for a while.

    On entry it records a :class:`NetworkState`; on exit, also when the block raises, it
    restores the ``training`` flags, ``requires_grad`` and ``.grad`` of ``model`` and all its
    submodules, then raises ``RuntimeError`` naming each module that keeps a hook added inside
    the block (or lost one it had, or had a parameter or buffer object replaced). Such hooks
    are left in place: they may not be ours to delete. When the block raised, that exception is
    the ``RuntimeError``'s context.
    """
    state = NetworkState(model)
    try:
        yield state
    finally:
        state.restore()
        problems = state.changes()
        if problems:
            raise RuntimeError(f"{type(model).__name__} was not left as it was found: " + "; ".join(problems))


def submodule(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """``dict(model.named_modules())[name]``, or ``ValueError`` with the closest names."""
    modules = dict(model.named_modules())
    if not isinstance(name, str):
        raise TypeError(f"a submodule name must be a str, got {type(name).__name__}")
    if name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = (f"did you mean {' or '.join(map(repr, close))}?" if close
            else f"its submodules are {', '.join(map(repr, names[:12]))}{', ...' if len(names) > 12 else ''}")
    raise ValueError(f"{type(model).__name__} has no submodule {name!r}; {hint}")


class _Scoped:
    """An explainer entered with ``with``: :func:`preserved` around whatever :meth:`_setup`
    registers on the ExitStack (undone in reverse order before the guard checks)."""

    def __init__(self, model: torch.nn.Module) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{type(self).__name__} explains a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self._stack: ExitStack | None = None

    def _setup(self, stack: ExitStack) -> None:
        """Change the network for the block; register each undo on ``stack``."""

    def __enter__(self):
        if self._stack is not None:
            raise RuntimeError(f"{type(self).__name__} is already active; it cannot be entered twice")
        with ExitStack() as stack:
            stack.enter_context(preserved(self.model))
            self._setup(stack)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        return bool(stack.__exit__(exc_type, exc, tb))

    def _require_active(self) -> None:
        if self._stack is None:
            raise RuntimeError(f"call {type(self).__name__} inside its with block "
                               f"(with {type(self).__name__}(...) as explainer: explainer(x, target))")


class AttentionCapture(_Scoped):
    """Record the outputs of named submodules during the forward calls made inside the block.

    ``names``: dotted names as in ``model.named_modules()`` (``"blocks.3.attn"``); an unknown
    name raises ``ValueError`` with the closest names. Inside the block each forward call of
    each named module appends its output to ``capture.outputs[name]`` (a list, one entry per
    call, kept after the block and cleared when the block is entered again). An output is
    stored detached and cloned (a later in-place op such as ``ReLU(inplace=True)`` cannot change
    it), with its structure: a tensor, a tuple or NamedTuple of tensors (``MultiheadAttention``
    gives ``(output, weights)``, weights ``None`` when not asked for), a list or a dict; other
    values are kept as they are. Nothing else is changed: the model runs in whatever mode it is.
    """

    def __init__(self, model: torch.nn.Module, names: str | Iterable[str]) -> None:
        super().__init__(model)
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ValueError("AttentionCapture needs at least one submodule name")
        self.modules = {name: submodule(model, name) for name in names}
        self.outputs: dict[str, list[Any]] = {name: [] for name in self.modules}

    def _setup(self, stack: ExitStack) -> None:
        self.outputs = {name: [] for name in self.modules}
        for name, module in self.modules.items():
            stack.callback(module.register_forward_hook(partial(self._record, name)).remove)

    def _record(self, name: str, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.outputs[name].append(_detached(output))


def _detached(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_detached(v) for v in value))
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    if isinstance(value, list):
        return [_detached(v) for v in value]
    if isinstance(value, dict):
        return {key: _detached(v) for key, v in value.items()}
    return value


class GradCAM(_Scoped):
    """Grad-CAM (Selvaraju et al. 2017) of one layer, through captum's ``LayerGradCam``.

    ``layer``: a submodule of ``model`` or its dotted name; its output must be one tensor
    ``[B, C, *spatial]`` (1 to 3 spatial dimensions), usually the last convolution block.
    ``output``: a callable mapping the model's output to logits ``[B, K]`` when ``forward``
    returns something else (``lambda out: out.fusion_logits``); without it the output must be
    that tensor.

    Calling ``cam(x, target, size=None)`` inside the block:

    - ``x``: float tensor ``[B, ...]``, what ``model`` takes; not modified.
    - ``target``: the class explained, an int for every sample or one int per sample (a list,
      or a tensor ``[B]``), ``0 <= target < K``.
    - returns float32 ``[B, *spatial]`` at the layer's resolution (``[B, h, w]`` for a 2D
      layer), or ``[B, *size]`` when ``size`` is given (linear / bilinear / trilinear
      upsampling, which keeps values >= 0). Values are ``ReLU(sum_c mean(dy/dA_c) * A_c)``:
      ``>= 0``, in the logit's units, **not normalised** (callers choose their
      value range; :func:`normalize_maps` scales each map to [0, 1]).

    During the block the model is in eval mode (batch norm uses its running statistics and
    does not update them; dropout is off); its flags are restored after. During a call grad
    mode is on and inference mode off whatever the caller set (``torch.no_grad()``,
    ``torch.inference_mode()``); ``x`` is detached (copied when it is an inference tensor)
    and made to require grad, so the layer's activation has a gradient even when every
    parameter is frozen. Parameters' ``requires_grad`` is not changed and their ``.grad`` never
    written: captum takes gradients with ``torch.autograd.grad``, not ``backward``.
    """

    def __init__(self, model: torch.nn.Module, layer: torch.nn.Module | str, *,
                 output: Callable[[Any], torch.Tensor] | None = None) -> None:
        super().__init__(model)
        if isinstance(layer, str):
            layer = submodule(model, layer)
        elif not any(m is layer for m in model.modules()):
            raise ValueError(f"GradCAM: layer {type(layer).__name__} is not a submodule of {type(model).__name__}")
        if output is not None and not callable(output):
            raise TypeError(f"GradCAM: output must be a callable (model output -> logits), got {output!r}")
        self.layer = layer
        self.output = output

    def _setup(self, stack: ExitStack) -> None:
        self.model.eval()

    def __call__(self, x: torch.Tensor, target: Any, size: Sequence[int] | None = None) -> torch.Tensor:
        self._require_active()
        import torch
        from captum.attr import LayerAttribution, LayerGradCam

        batch = _batch_size(x)
        _refuse_zennit_hooks(self.model, "GradCAM")
        self.model.eval()
        with torch.inference_mode(False), torch.enable_grad():  # the index, too, must not be an inference tensor
            index = _target_index(target, batch, x.device)

            def logits(inputs: torch.Tensor) -> torch.Tensor:
                out = _logits(self.model(inputs), self.output, batch, "GradCAM")
                _check_classes(index, out.shape[1])
                return out

            maps = LayerGradCam(logits, self.layer).attribute(
                _grad_input(x), target=index, relu_attributions=True)
        if isinstance(maps, tuple) or maps.ndim < 3:
            raise ValueError(f"GradCAM: layer {type(self.layer).__name__} must output one tensor [B, C, *spatial], "
                             f"got {'a tuple' if isinstance(maps, tuple) else 'no spatial dimensions'}")
        if size is not None:
            size = tuple(size)
            if (len(size) != maps.ndim - 2
                    or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in size)):
                raise ValueError(f"GradCAM: size must be {maps.ndim - 2} positive ints for this layer, got {size}")
            maps = LayerAttribution.interpolate(maps, tuple(int(s) for s in size), _INTERPOLATION[len(size)])
        return maps.detach().squeeze(1).to(torch.float32)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``maps`` (``[B, *spatial]``, values >= 0, e.g. from :class:`GradCAM`)
    by its own maximum, to [0, 1]; a map whose maximum is 0 stays 0. Same shape and dtype.
    Negative values raise ``ValueError`` (signed relevance is read against a symmetric range,
    not scaled this way)."""
    import torch

    if not isinstance(maps, torch.Tensor) or not maps.is_floating_point() or maps.ndim < 2:
        raise ValueError("normalize_maps takes a float tensor [B, *spatial]")
    if bool((maps < 0).any()):
        raise ValueError("normalize_maps takes maps >= 0; these have negative values")
    peak = maps.flatten(1).amax(dim=1).reshape(-1, *([1] * (maps.ndim - 1)))
    return torch.where(peak > 0, maps / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(maps))


class _ZennitExplainer(_Scoped):
    """A zennit composite registered for the block through ``zennit.attribution.Gradient``."""

    def __init__(self, model: torch.nn.Module, output: Callable[[Any], torch.Tensor] | None) -> None:
        super().__init__(model)
        if output is not None and not callable(output):
            raise TypeError(f"{type(self).__name__}: output must be a callable (model output -> logits), "
                            f"got {output!r}")
        self.output = output
        self._attributor = None

    def _composite(self) -> Any:
        raise NotImplementedError

    def _output_relevance(self, logits: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _setup(self, stack: ExitStack) -> None:
        from zennit.attribution import Gradient

        _refuse_zennit_hooks(self.model, type(self).__name__)
        self.model.eval()  # before the canonizer: merging batch norm assumes its running statistics
        composite = self._composite()
        self._attributor = Gradient(model=_with_logits(self.model, self.output), composite=composite)
        stack.callback(_tensor_restorer(self.model))  # for canonizers that fail half-way (see there)
        stack.callback(composite.remove)
        stack.enter_context(self._attributor)

    def __call__(self, x: torch.Tensor, target: Any) -> torch.Tensor:
        self._require_active()
        import torch

        batch = _batch_size(x)
        name = type(self).__name__
        self.model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            index = _target_index(target, batch, x.device)

            def output_relevance(out: Any) -> torch.Tensor:
                logits = _logits(out, None, batch, name).detach()
                _check_classes(index, logits.shape[1])
                one_hot = torch.nn.functional.one_hot(index, logits.shape[1]).to(logits.dtype)
                return self._output_relevance(logits, one_hot)

            _, attribution = self._attributor(_grad_input(x), attr_output=output_relevance)
        return attribution.detach().to(torch.float32)


class LRP(_ZennitExplainer):
    """Layer-wise relevance propagation (Bach et al. 2015) through zennit.

    ``composite``: ``"epsilon_plus_flat"`` (default) or ``"epsilon_alpha2_beta1"`` (see the
    module docstring). ``canonize_batch_norm``: merge each batch norm into the linear or
    convolution layer just before it (in module order) while the block is active; parameters
    and buffers are put back bit for bit on exit. ``output``: as for :class:`GradCAM`.

    Calling ``lrp(x, target)`` inside the block:

    - ``x``: float tensor ``[B, ...]``, what ``model`` takes; not modified.
    - ``target``: int, or one int per sample (list or tensor ``[B]``).
    - returns the relevance of each input value: float32, same shape as ``x``, **signed**
      (positive: evidence for the target class, negative: against). The output relevance is
      the target logit (one-hot times the output), so the relevance sums to the target logit
      where every rule is conservative: flat, z-plus and epsilon on layers without bias, up to
      the stabilisers (1e-6). Biases (a merged batch norm gives its convolution one) absorb
      some; alpha-2-beta-1 passes twice its relevance down through a neuron without negative
      contributions, so its sums can be far off.

    Rules attach to modules: operations called as functions (``F.relu``, ``torch.cat``, ``+``)
    pass the plain gradient. Batch norm is merged into the layer before it in module order
    (``named_modules``), which must be the order of the forward pass.

    The model is in eval mode for the block; a call runs with grad on and inference mode off,
    on a detached copy of ``x``, as :class:`GradCAM` does, and never writes ``.grad``.
    """

    def __init__(self, model: torch.nn.Module, composite: str = "epsilon_plus_flat", *,
                 canonize_batch_norm: bool = True, output: Callable[[Any], torch.Tensor] | None = None) -> None:
        super().__init__(model, output)
        if composite not in LRP_COMPOSITES:
            close = difflib.get_close_matches(str(composite), LRP_COMPOSITES, n=1)
            raise ValueError(f"LRP: unknown composite {composite!r}; "
                             + (f"did you mean {close[0]!r}?" if close else f"one of {', '.join(LRP_COMPOSITES)}"))
        self.composite = composite
        self.canonize_batch_norm = bool(canonize_batch_norm)

    def _composite(self) -> Any:
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlusFlat
        from zennit.core import collect_leaves
        from zennit.types import BatchNorm, Linear

        if self.canonize_batch_norm:  # the pairs SequentialMergeBatchNorm merges, checked before it tries
            leaves = list(collect_leaves(self.model))
            names = {id(module): name for name, module in self.model.named_modules()}
            for layer, norm in zip(leaves, leaves[1:]):
                if isinstance(layer, Linear) and isinstance(norm, BatchNorm) and (
                        norm.weight is None or norm.running_mean is None):
                    raise ValueError(f"LRP: batch norm {names[id(norm)]!r} has no affine parameters or no running "
                                     "statistics, so it cannot be merged into the layer before it; "
                                     "pass canonize_batch_norm=False")
        kind = {"epsilon_plus_flat": EpsilonPlusFlat, "epsilon_alpha2_beta1": EpsilonAlpha2Beta1}[self.composite]
        return kind(canonizers=[SequentialMergeBatchNorm()] if self.canonize_batch_norm else [])

    def _output_relevance(self, logits: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        return one_hot * logits


class GuidedBackprop(_ZennitExplainer):
    """Guided backpropagation (Springenberg et al. 2015) through zennit's ``GuidedBackprop``
    composite: the gradient of the target logit with respect to the input, where every
    ``torch.nn.ReLU`` module passes back only positive gradients (functional ReLUs are not
    seen). Same block and call as :class:`LRP`: ``gbp(x, target)`` returns float32, the shape
    of ``x``, **signed** (the sign of the input gradient; only the ReLUs' gradients are
    clipped), in logit units per input unit: the sensitivity map the Alzheimer's LRP paper
    compares relevance with.
    """

    def __init__(self, model: torch.nn.Module, *, output: Callable[[Any], torch.Tensor] | None = None) -> None:
        super().__init__(model, output)

    def _composite(self) -> Any:
        from zennit.composites import GuidedBackprop as GuidedBackpropComposite

        return GuidedBackpropComposite()

    def _output_relevance(self, logits: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        return one_hot


def _tensor_restorer(model: torch.nn.Module) -> Callable[[], None]:
    """A function putting back which Parameter and buffer objects each module holds and the
    ``.data`` tensor of each (references, nothing is copied).

    zennit's ``MergeBatchNorm`` changes parameters by assigning new ``.data`` tensors (and a
    bias Parameter to a bias-free layer) and undoes that in ``Composite.remove``; but when
    ``Composite.register`` fails half-way (a batch norm with ``affine=False`` raises
    AttributeError), the merges already made are not in the composite's handles and are never
    undone. This puts them back; after a normal ``remove`` it changes nothing.
    """
    tables = [(module, dict(module._parameters), dict(module._buffers)) for module in model.modules()]
    data = [(tensor, tensor.data) for _, params, buffers in tables
            for tensor in (*params.values(), *buffers.values()) if tensor is not None]

    def restore() -> None:
        for module, params, buffers in tables:
            for table, before in ((module._parameters, params), (module._buffers, buffers)):
                for key in set(table) - set(before):
                    del table[key]
                table.update(before)
        for tensor, saved in data:
            tensor.data = saved

    return restore


def _refuse_zennit_hooks(model: torch.nn.Module, who: str) -> None:
    """``RuntimeError`` when a zennit composite is registered on ``model`` (an :class:`LRP` or
    :class:`GuidedBackprop` block still open around this one): its rules would change every
    gradient taken through the model, and its canonizer has merged batch norm. zennit is only
    looked for when something has imported it."""
    core = sys.modules.get("zennit.core")
    if core is None:
        return
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(getattr(hook, "__self__", None), core.Hook):
                raise RuntimeError(f"{who}: a zennit composite is registered on module {name!r} of "
                                   f"{type(model).__name__}; close the LRP/GuidedBackprop block first "
                                   "(explainers of one model are not nested)")


def _batch_size(x: Any) -> int:
    import torch

    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise TypeError(f"explainers take a float tensor [B, ...], got "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else f'{x.dtype} {tuple(x.shape)}'}")
    return x.shape[0]


def _grad_input(x: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``x`` that requires grad and is not the caller's (call with inference
    mode off: an inference tensor is copied, it cannot enter autograd)."""
    x = x.detach()
    if x.is_inference():
        x = x.clone()
    return x.requires_grad_(True)


def _target_index(target: Any, batch: int, device: torch.device) -> torch.Tensor:
    """``target`` as a long tensor ``[batch]``: an int for all, or one int per sample."""
    import torch

    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        index = torch.full((batch,), int(target), dtype=torch.long)
    elif isinstance(target, torch.Tensor) and not target.is_floating_point() and not target.is_complex() \
            and target.dtype != torch.bool and target.ndim <= 1:
        index = target.detach().to(torch.long).reshape(-1)
        if index.numel() == 1:
            index = index.expand(batch)
    elif isinstance(target, Sequence) and not isinstance(target, str) and all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target):
        index = torch.tensor([int(t) for t in target], dtype=torch.long)
    else:
        raise TypeError(f"target must be an int or one int per sample (list or integer tensor [B]), got {target!r}")
    if index.shape != (batch,):
        raise ValueError(f"target has {index.numel()} entries for a batch of {batch}")
    if bool((index < 0).any()):
        raise ValueError(f"target must be >= 0, got {index.tolist()}")
    return index.to(device)


def _check_classes(index: torch.Tensor, classes: int) -> None:
    if bool((index >= classes).any()):
        raise ValueError(f"target {index.tolist()} out of range for {classes} classes")


def _logits(out: Any, output: Callable[[Any], Any] | None, batch: int, who: str) -> torch.Tensor:
    """The model's output (through ``output`` when given) checked to be logits ``[batch, K]``."""
    import torch

    if output is not None:
        out = output(out)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
        got = f"a tensor {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"{who}: the model's output must be logits [B={batch}, K], got {got}; pass "
                        "output=<callable> mapping it to logits, e.g. output=lambda out: out.fusion_logits")
    return out


def _with_logits(model: torch.nn.Module, output: Callable[[Any], Any] | None) -> torch.nn.Module:
    """``model``, or a module whose forward is ``output(model(x))`` (zennit calls a module and
    registers its composite on the module's tree; the wrapper adds no hook to ``model``)."""
    if output is None:
        return model
    import torch

    class _Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return output(self.model(x))

    return _Logits()
