"""Explainers leave the network as they found it, and compute what they say they compute.

Tiny seeded networks on the CPU: conv–BN–ReLU–maxpool twice then a dense layer (2D), a 3D
variant, a bias-free net for LRP conservation, and a small attention net for the capture.
"""
from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from typing import NamedTuple

import pytest
import torch
from torch import nn

from neuroread.models.explain import (
    LRP,
    AttentionCapture,
    GradCAM,
    GuidedBackprop,
    normalize_maps,
    preserved,
)


def _net2d(seed: int = 0) -> nn.Sequential:
    """[B, 2, 16, 16] -> logits [B, 3]; BN statistics made non-trivial by one train-mode pass."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 3),
    )
    with torch.no_grad():
        net.train()(torch.randn(8, 2, 16, 16))
    return net


def _net3d(seed: int = 0) -> nn.Sequential:
    """[B, 1, 8, 8, 8] -> logits [B, 2]; the convolution has no bias (zennit adds one while merging)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1, bias=False), nn.BatchNorm3d(3), nn.ReLU(),
                        nn.MaxPool3d(2), nn.Flatten(), nn.Linear(3 * 4 * 4 * 4, 2))
    with torch.no_grad():
        net.train()(torch.randn(4, 1, 8, 8, 8))
    return net


def _bias_free(seed: int) -> nn.Sequential:
    """No biases, no batch norm: every LRP rule of EpsilonPlusFlat is conservative here. Weights
    scaled up so that logits are O(1) and the stabilisers (1e-6) are negligible."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 3, bias=False),
    )
    with torch.no_grad():
        for module in net:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_(3)
    return net.eval()


def _x2d(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 2, 16, 16, generator=torch.Generator().manual_seed(seed))


def _hook_tables(module: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v) for k, v in vars(module).items() if "hook" in k and isinstance(v, dict)}


def _snapshot(net: nn.Module) -> dict:
    """Everything the explainers promise to leave alone, with tensors as bytes (bit-for-bit)."""
    return {
        "tensors": {k: (v.dtype, tuple(v.shape), v.detach().numpy().tobytes())
                    for k, v in net.state_dict(keep_vars=True).items()},
        "objects": {k: id(v) for k, v in [*net.named_parameters(), *net.named_buffers()]},
        "parameter_tables": {n: tuple(m._parameters) for n, m in net.named_modules()},
        "training": {n: m.training for n, m in net.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in net.named_parameters()},
        "grad": {n: (id(p.grad), None if p.grad is None else p.grad.numpy().tobytes())
                 for n, p in net.named_parameters()},
        "hooks": {n: _hook_tables(m) for n, m in net.named_modules()},
    }


def _lived_in(net: nn.Sequential) -> nn.Sequential:
    """A model as a caller may hold it: train mode with one BN in eval, a frozen conv, a
    ``.grad`` on one parameter (None on the others) and a hook of the caller's own."""
    net.train()
    net[5].eval()
    net[0].weight.requires_grad_(False)
    net[0].bias.requires_grad_(False)
    net[9].weight.grad = torch.full_like(net[9].weight, 0.5)
    net[2].register_forward_hook(lambda module, args, out: None)
    return net


EXPLAINERS = {
    "attention": (lambda net: AttentionCapture(net, ["2", "6"]),
                  lambda e, net, x: (net.eval(), net(x))),
    "gradcam": (lambda net: GradCAM(net, "6"), lambda e, net, x: e(x, 1, size=(16, 16))),
    "lrp": (lambda net: LRP(net), lambda e, net, x: e(x, [0, 1, 2])),
    "lrp_alpha2_beta1": (lambda net: LRP(net, "epsilon_alpha2_beta1"), lambda e, net, x: e(x, 2)),
    "lrp_unmerged": (lambda net: LRP(net, canonize_batch_norm=False), lambda e, net, x: e(x, 0)),
    "guided_backprop": (lambda net: GuidedBackprop(net), lambda e, net, x: e(x, 1)),
}


class _Boom(Exception):
    pass


@pytest.mark.parametrize("raising", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("kind", list(EXPLAINERS))
def test_the_network_is_left_as_it_was_found(kind, raising):
    """No hook left, parameters and buffers bit-identical (and the same objects), training
    flags per module, requires_grad and .grad (None stays None) as before; also when the
    block raises, and the caller's own hook stays."""
    make, call = EXPLAINERS[kind]
    net = _lived_in(_net2d())
    before = _snapshot(net)
    x = _x2d()
    if raising:
        with pytest.raises(_Boom):
            with make(net) as explainer:
                call(explainer, net, x)
                raise _Boom
    else:
        with make(net) as explainer:
            call(explainer, net, x)
            call(explainer, net, x)
    assert _snapshot(net) == before
    assert len(net[2]._forward_hooks) == 1  # the caller's hook is still there
    assert not x.requires_grad


def test_calls_outside_the_block_and_double_entry_are_refused():
    net = _net2d()
    cam = GradCAM(net, "6")
    with pytest.raises(RuntimeError, match="inside its with block"):
        cam(_x2d(), 0)
    with LRP(net) as lrp:
        with pytest.raises(RuntimeError, match="already active"):
            lrp.__enter__()
    with pytest.raises(RuntimeError, match="inside its with block"):
        lrp(_x2d(), 0)


def test_explainers_are_not_nested_inside_a_zennit_block():
    """LRP's rules and its batch-norm merge hold for its whole block: a Grad-CAM or a second
    composite taken inside it would be silently wrong, so both are refused."""
    net = _net2d()
    before = _snapshot(net)
    with GradCAM(net, "6") as cam, LRP(net) as lrp:
        lrp(_x2d(), 0)
        with pytest.raises(RuntimeError, match="zennit composite is registered on module '0'"):
            cam(_x2d(), 0)
        with pytest.raises(RuntimeError, match="not nested"):
            with GuidedBackprop(net):
                pass
    assert _snapshot(net) == before


def test_the_guard_names_a_leftover_hook_and_does_not_delete_it():
    net = _lived_in(_net2d())
    before = _snapshot(net)
    with pytest.raises(RuntimeError, match=r"module '4' \(Conv2d\) keeps 1 hook\(s\) added in _forward_hooks"):
        with preserved(net):
            net.eval()
            net[9].weight.requires_grad_(False)
            net[9].weight.grad = None
            net[4].register_forward_hook(lambda module, args, out: None)
    assert len(net[4]._forward_hooks) == 1  # reported, left in place
    after = _snapshot(net)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"] and after["grad"] == before["grad"]
    # and a hook someone else had, removed inside the block, is reported too
    with pytest.raises(RuntimeError, match=r"module '2' \(ReLU\) lost 1 hook\(s\)"):
        with preserved(net):
            net[2]._forward_hooks.clear()


def _hand_gradcam(net: nn.Sequential, x: torch.Tensor, target: list[int], split: int) -> torch.Tensor:
    """ReLU(sum_c mean_hw(d y_t / d A_c) * A_c), A the output of net[:split], net in eval mode."""
    net.eval()
    act = net[:split](x).detach().requires_grad_(True)
    out = net[split:](act)
    grad, = torch.autograd.grad(out[torch.arange(len(target)), torch.tensor(target)].sum(), act)
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1)).detach()


def test_gradcam_equals_the_hand_computation_in_eval_mode():
    net = _net2d()
    x = _x2d(4)
    expected = _hand_gradcam(net, x, [0, 1, 2, 1], split=7)
    net.train()  # GradCAM puts it in eval mode (else BN would use batch statistics)
    with GradCAM(net, "6") as cam:
        maps = cam(x, [0, 1, 2, 1])
        assert torch.allclose(cam(x, torch.tensor([0, 1, 2, 1])), maps)
        per_sample = torch.cat([cam(x[i:i + 1], t) for i, t in enumerate([0, 1, 2, 1])])
    assert maps.dtype == torch.float32 and maps.shape == (4, 8, 8)
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(per_sample, expected, atol=1e-5, rtol=0)
    assert net.training


def test_gradcam_maps_are_non_negative_at_the_layer_or_the_given_size_and_not_normalised():
    net = _net2d()
    x = _x2d(3)
    with GradCAM(net, net[2]) as cam:  # a module as well as a name
        small = cam(x, 2)
        big = cam(x, 2, size=(16, 16))
        with pytest.raises(ValueError, match="size must be 2 positive ints"):
            cam(x, 2, size=(16, 16, 16))
        with pytest.raises(ValueError, match="out of range for 3 classes"):
            cam(x, 3)
        with pytest.raises(ValueError, match="3 entries for a batch of 2"):
            cam(x[:2], [0, 1, 2])
    assert small.shape == (3, 16, 16) and big.shape == (3, 16, 16)
    with GradCAM(net, "6") as cam:
        maps = cam(x, 2)
        big = cam(x, 2, size=(32, 24))
    assert maps.shape == (3, 8, 8) and big.shape == (3, 32, 24)
    assert (maps >= 0).all() and (big >= 0).all() and maps.max() > 0
    assert not torch.allclose(maps.flatten(1).amax(1), torch.ones(3))  # raw values, not scaled to 1


def test_gradcam_works_with_frozen_parameters_under_no_grad_and_inference_mode():
    net = _net2d()
    x = _x2d(2)
    with GradCAM(net, "6") as cam:
        reference = cam(x, 1)
    for p in net.parameters():
        p.requires_grad_(False)
    with GradCAM(net, "6") as cam:
        with torch.no_grad():
            frozen_no_grad = cam(x, 1)
        with torch.inference_mode():
            inference = cam(torch.randn(1) * 0 + x, 1)  # an inference tensor
    assert torch.equal(frozen_no_grad, reference) and torch.equal(inference, reference)
    assert not any(p.requires_grad for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())


def test_normalize_maps_scales_each_map_by_its_own_max():
    maps = torch.stack([torch.tensor([[0.0, 2.0], [1.0, 4.0]]), torch.zeros(2, 2), torch.full((2, 2), 0.25)])
    out = normalize_maps(maps)
    assert torch.equal(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2)) and torch.equal(out[2], torch.ones(2, 2))
    with pytest.raises(ValueError, match="negative"):
        normalize_maps(-maps)


class _Out(NamedTuple):
    fusion_logits: torch.Tensor
    features: torch.Tensor


class _TwoHeads(nn.Module):
    """The 2D net, returning an object rather than the logits tensor."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> _Out:
        return _Out(self.net(x), x.mean())


def test_output_callable_maps_an_object_to_logits():
    net = _net2d()
    wrapped = _TwoHeads(net)
    x = _x2d(2)
    with GradCAM(net, "6") as cam:
        expected_cam = cam(x, 1)
    with LRP(net) as lrp:
        expected_lrp = lrp(x, 1)
    before = _snapshot(wrapped)
    with GradCAM(wrapped, "net.6", output=lambda out: out.fusion_logits) as cam:
        assert torch.equal(cam(x, 1), expected_cam)
    with LRP(wrapped, output=lambda out: out.fusion_logits) as lrp:
        assert torch.equal(lrp(x, 1), expected_lrp)
    with GuidedBackprop(wrapped, output=lambda out: out.fusion_logits) as gbp:
        assert gbp(x, 1).shape == x.shape
    assert _snapshot(wrapped) == before
    with GradCAM(wrapped, "net.6") as cam, pytest.raises(TypeError, match="output=<callable>"):
        cam(x, 1)
    with LRP(wrapped) as lrp, pytest.raises(TypeError, match="output=<callable>"):
        lrp(x, 1)


def test_unknown_names_are_refused_with_a_suggestion():
    net = _TwoHeads(_net2d())
    with pytest.raises(ValueError, match=r"no submodule 'net\.66'; did you mean 'net\.6'"):
        GradCAM(net, "net.66")
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(net, nn.ReLU())
    with pytest.raises(ValueError, match="did you mean 'epsilon_plus_flat'"):
        LRP(net, "epsilon_plus")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lrp_epsilon_plus_flat_conserves_the_target_logit_on_a_bias_free_net(seed):
    """Flat (first layer), z-plus (convolutions), epsilon (dense), plain gradient through
    max-pooling: each conservative without biases, so the relevance sums to the logit up to
    the stabilisers. (alpha-2-beta-1 is not: a neuron without negative contributions gets
    2x its relevance; on this net it breaks conservation by 10 % and more, so it is not tested.)"""
    net = _bias_free(seed)
    x = _x2d(6, seed=10 + seed) * 3
    target = [0, 1, 2, 1, 0, 2]
    with LRP(net) as lrp:
        relevance = lrp(x, target)
    logits = net(x).detach()[torch.arange(6), torch.tensor(target)]
    assert relevance.shape == x.shape and relevance.dtype == torch.float32
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), logits, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_lrp_relevance_is_signed_and_shaped_like_the_input(composite):
    net = _net2d()
    x = _x2d(3)
    with LRP(net, composite) as lrp:
        relevance = lrp(x, 1)
    assert relevance.shape == x.shape and relevance.dtype == torch.float32
    assert (relevance < 0).any() and (relevance > 0).any()
    assert torch.isfinite(relevance).all()


def test_lrp_batch_norm_merge_is_active_in_the_block_and_undone_bit_for_bit_3d():
    net = _net3d()
    x = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    before = _snapshot(net)
    weight = net[0].weight.detach().clone()
    with LRP(net) as lrp:
        assert net[0].bias is not None  # zennit gave the bias-free conv a bias while merging
        assert not torch.equal(net[0].weight, weight) and torch.equal(net[1].running_var, torch.ones(3))
        relevance = lrp(x, [0, 1])
    assert net[0].bias is None
    assert _snapshot(net) == before
    assert relevance.shape == x.shape and relevance.dtype == torch.float32
    assert (relevance < 0).any() and (relevance > 0).any()
    with LRP(net, canonize_batch_norm=False) as lrp:
        assert torch.equal(net[0].weight, weight)
        assert lrp(x, 0).shape == x.shape
    assert _snapshot(net) == before


def _two_batch_norms(affine: bool) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, affine=affine), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 16 * 16, 3))
    with torch.no_grad():
        net.train()(torch.randn(4, 2, 16, 16))
    return net


def test_a_batch_norm_that_cannot_be_merged_is_refused_before_anything_changes():
    net = _two_batch_norms(affine=False)
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"batch norm '4' has no affine parameters.*canonize_batch_norm=False"):
        with LRP(net):
            pass
    assert _snapshot(net) == before
    with LRP(net, canonize_batch_norm=False) as lrp:
        assert lrp(_x2d(), 0).shape == (3, 2, 16, 16)
    assert _snapshot(net) == before


def test_merges_made_before_a_canonizer_fails_half_way_are_undone(monkeypatch):
    """zennit's Composite.register loses the merges it made when a later one raises (they are
    not in its handles yet); the explainer puts the tensors back itself."""
    from zennit.canonizers import MergeBatchNorm

    merge = MergeBatchNorm.register
    calls = []

    def second_fails(self, linears, batch_norm):
        calls.append(batch_norm)
        if len(calls) == 2:
            raise RuntimeError("merge failed")
        merge(self, linears, batch_norm)

    monkeypatch.setattr(MergeBatchNorm, "register", second_fails)
    net = _two_batch_norms(affine=True)
    before = _snapshot(net)
    with pytest.raises(RuntimeError, match="merge failed"):
        with LRP(net):
            pass
    assert len(calls) == 2
    assert _snapshot(net) == before and net[0].bias is None


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


class _GuidedReLUModule(nn.Module):
    def forward(self, x):
        return _GuidedReLU.apply(x)


def test_guided_backprop_equals_the_hand_computation():
    net = _net2d().eval()
    hand = copy.deepcopy(net)
    for i, module in enumerate(hand):
        if isinstance(module, nn.ReLU):
            hand[i] = _GuidedReLUModule()
    x = _x2d(3).requires_grad_(True)
    target = [2, 0, 1]
    expected, = torch.autograd.grad(hand(x)[torch.arange(3), torch.tensor(target)].sum(), x)
    net.train()
    with GuidedBackprop(net) as gbp:
        got = gbp(x.detach(), target)
    assert got.shape == x.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    plain, = torch.autograd.grad(net.eval()(x)[torch.arange(3), torch.tensor(target)].sum(), x)
    assert not torch.allclose(got, plain)  # the ReLUs' gradients were changed


class _Pair(NamedTuple):
    mean: torch.Tensor
    peak: torch.Tensor


class _PairModule(nn.Module):
    def forward(self, x: torch.Tensor) -> _Pair:
        return _Pair(x.mean(dim=1), x.amax(dim=1))


class _AttnNet(nn.Module):
    """[B, T, 4] -> logits [B, 3], through self-attention."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.pool = _PairModule()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu_(self.embed(x))
        a, _ = self.attn(h, h, h)
        return self.head(self.pool(a).mean)


def test_attention_capture_records_one_detached_output_per_forward_call():
    net = _AttnNet()
    before = _snapshot(net)
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))
    with AttentionCapture(net, ["attn", "pool", "embed"]) as capture:
        net(x)
        net(x[:1])
    assert [len(capture.outputs[n]) for n in ("attn", "pool", "embed")] == [2, 2, 2]
    out, weights = capture.outputs["attn"][0]
    assert out.shape == (2, 5, 8) and weights.shape == (2, 5, 5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 5))  # attention rows sum to 1
    assert capture.outputs["attn"][1][1].shape == (1, 5, 5)
    pair = capture.outputs["pool"][0]
    assert isinstance(pair, _Pair) and pair.mean.shape == (2, 8)
    assert not out.requires_grad and not pair.peak.requires_grad
    embed = capture.outputs["embed"][0]
    assert (embed < 0).any()  # cloned before the in-place ReLU that followed
    assert _snapshot(net) == before
    with AttentionCapture(net, "attn") as capture:  # entered again: a fresh record
        net(x)
    assert len(capture.outputs["attn"]) == 1
    with pytest.raises(ValueError, match=r"no submodule 'atn'; did you mean 'attn'"):
        AttentionCapture(net, ["atn"])


def test_importing_the_module_imports_neither_captum_nor_zennit_nor_matplotlib():
    code = textwrap.dedent("""
        import sys
        import neuroread.models
        before = set(sys.modules)
        import neuroread.models.explain
        heavy = sorted(m for m in set(sys.modules) - before
                       if m.split(".")[0] in ("captum", "zennit", "matplotlib", "torch"))
        print(heavy)
        assert not any(m.split(".")[0] in ("captum", "zennit", "matplotlib") for m in sys.modules), heavy
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
