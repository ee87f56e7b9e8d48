"""MSFANet: MSFA's shape and its learned α, the fused attention against the explicit one and its
memory, the shared module, the three heads, which sequence queries, the lesion evidence, the
hybrid loss's learned weights, the ablations, and a training step that learns."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from neuroread.models.axspa_sij.config import MSFAConfig
from neuroread.models.axspa_sij.network import MSFA, HybridLoss, MSFANet, attend

TINY = MSFAConfig(input_shape=(4, 32, 24), widths=(4, 6, 8), attention_dim=4, dropout=0.0)


def test_presets_round_trip_and_bad_values_are_named():
    for config in (MSFAConfig.paper(), MSFAConfig.demo(), TINY):
        assert MSFAConfig.from_dict(config.to_dict()) == config
    assert MSFAConfig.paper().input_shape == (24, 320, 224) and MSFAConfig.paper().tokens == 24 * 40 * 28
    with pytest.raises(ValueError, match="input_shape"):
        MSFAConfig(input_shape=(24, 300, 224))
    with pytest.raises(ValueError, match="fusion"):
        MSFAConfig(fusion="sum")
    with pytest.raises(ValueError, match="sequences"):
        MSFAConfig(sequences=("fs", "t1"))
    with pytest.raises(ValueError, match=r"unknown keys 'widht' \(did you mean 'widths'\?\)"):
        MSFAConfig.from_dict({"widht": [4, 4, 4]})


def test_msfa_keeps_the_size_starts_as_the_identity_and_learns_alpha():
    torch.manual_seed(0)
    msfa = MSFA(8, 4)
    z1, z2 = torch.randn(2, 8, 3, 5, 4), torch.randn(2, 8, 3, 5, 4)
    out = msfa(z1, z2)
    assert out.shape == z1.shape
    assert torch.equal(out, z1)  # α starts at 0: Z_f = Z_1
    (out - 1.0).square().mean().backward()
    assert msfa.alpha.grad is not None and float(msfa.alpha.grad) != 0.0  # α is learned
    opt = torch.optim.SGD(msfa.parameters(), lr=0.5)
    opt.step()
    assert float(msfa.alpha.detach()) != 0.0 and not torch.equal(msfa(z1, z2), z1)
    with pytest.raises(ValueError, match="one shape"):
        msfa(z1, z2[:, :, :2])


def test_the_fused_attention_is_softmax_of_q_k_over_root_d_times_v():
    torch.manual_seed(1)
    for d, c in ((4, 8), (8, 4), (6, 6)):
        q, k, v = torch.randn(2, 50, d), torch.randn(2, 50, d), torch.randn(2, 50, c)
        explicit = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1) @ v
        assert torch.allclose(attend(q, k, v), explicit, atol=1e-5)
    msfa = MSFA(8, 4)
    with torch.no_grad():
        msfa.alpha.fill_(1.0)
    z1, z2 = torch.randn(1, 8, 2, 3, 4), torch.randn(1, 8, 2, 3, 4)
    weights = msfa.attention_weights(z1, z2, torch.arange(24))  # the explicit weights, for explanations
    assert weights.shape == (1, 24, 24) and torch.allclose(weights.sum(-1), torch.ones(1, 24))
    values = msfa.value(z2).flatten(2).transpose(1, 2)
    expected = (weights @ values).transpose(1, 2).reshape(z1.shape) + z1
    assert torch.allclose(msfa(z1, z2), expected, atol=1e-5)


def test_training_the_attention_never_forms_the_token_by_token_matrix():
    """Forward and backward over 12 000 tokens: the explicit matrix alone would be 576 MB
    (and about three times that with its backward pass)."""
    code = (
        "import resource, torch; from neuroread.models.axspa_sij.network import MSFA; torch.manual_seed(0);"
        "m = MSFA(32, 8); z = torch.randn(1, 32, 12, 40, 25, requires_grad=True);"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "m(z, z.detach() + 1).square().mean().backward();"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    grown_mb = float(res.stdout.split()[-1])
    assert grown_mb < 300, f"training MSFA over 12 000 tokens grew the process by {grown_mb:.0f} MB"


def test_msfanet_shares_its_shallow_module_and_gives_three_heads():
    torch.manual_seed(0)
    net = MSFANet(TINY).eval()
    x = torch.rand(2, 2, *TINY.input_shape)
    out = net(x)
    assert out.fusion_logits.shape == out.t1_logits.shape == out.fs_logits.shape == (2, 2)
    assert torch.allclose(out.probabilities.sum(1), torch.ones(2))
    f = net.features(x)
    assert f["fuse"].shape == (2, TINY.widths[2], 4, 4, 3)  # every slice, 1/8 in-plane
    same = torch.cat([x[:, :1], x[:, :1]], dim=1)  # the T1 in both channels: the shared module gives one result
    s = net.shared(same[:, :1])
    assert torch.equal(net.shared(same[:, 1:]), s)
    assert not any(n.startswith(("shared_t1", "shared_fs")) for n, _ in net.named_parameters())  # one set
    with pytest.raises(ValueError, match=r"\[B, 2, D, H, W\]"):
        net(torch.rand(1, 1, *TINY.input_shape))


def test_the_ablations_are_configurations():
    torch.manual_seed(0)
    x = torch.rand(1, 2, *TINY.input_shape)
    concat = MSFANet(MSFAConfig(**{**TINY.__dict__, "fusion": "concat"})).eval()
    assert not any(n.endswith("alpha") for n, _ in concat.named_parameters()) and concat(x).fusion_logits.shape == (1, 2)
    t1_only = MSFANet(MSFAConfig(**{**TINY.__dict__, "sequences": ("t1",)})).eval()
    changed = x.clone()
    changed[:, 1] = torch.rand_like(changed[:, 1])  # another FS changes nothing for a T1-only network
    assert torch.equal(t1_only(x).fusion_logits, t1_only(changed).fusion_logits)
    both = MSFANet(TINY).eval()
    assert not torch.equal(both(x).t1_logits, both(changed).fs_logits)


def test_query_picks_the_sequence_whose_features_carry_the_fuse_branch():
    torch.manual_seed(0)
    x = torch.rand(1, 2, *TINY.input_shape)
    changed = x.clone()
    changed[:, 0] = torch.rand_like(changed[:, 0])  # another T1
    for query in ("t1", "fs"):
        net = MSFANet(MSFAConfig(**{**TINY.__dict__, "query": query})).eval()
        # α = 0 at the start: both MSFA modules pass Z_1 through, so the Fuse branch is the query's path alone
        fused = net.features(x)["fuse"], net.features(changed)["fuse"]
        assert torch.equal(*fused) == (query == "fs")
    with pytest.raises(ValueError, match="query"):
        MSFAConfig(query="stir")


def test_the_evidence_decision_reads_soft_lesion_counts():
    torch.manual_seed(0)
    net = MSFANet(MSFAConfig(**{**TINY.__dict__, "evidence": True})).eval()
    plain = MSFANet(TINY)
    assert plain.lesion is None and net.lesion.out_channels == 5
    assert net.heads["fuse"].in_features == plain.heads["fuse"].in_features + 2 * 5
    features = torch.rand(2, TINY.widths[2], 4, 4, 3)
    with torch.no_grad():
        net.lesion.weight.zero_()
        net.lesion.bias.fill_(-100.0)  # no lesion anywhere: counts and peaks 0
        assert torch.allclose(net.evidence(features), torch.zeros(2, 10), atol=1e-6)
        net.lesion.bias.fill_(100.0)  # a lesion in every one of the 48 cells: log(1 + 48), peak 1
        assert torch.allclose(net.evidence(features)[:, :5], torch.full((2, 5), math.log(49.0)))
        assert torch.allclose(net.evidence(features)[:, 5:], torch.ones(2, 5))
    net = MSFANet(MSFAConfig(**{**TINY.__dict__, "evidence": True})).eval()  # fresh: not saturated
    net(torch.rand(2, 2, *TINY.input_shape)).fusion_logits.sum().backward()
    assert net.lesion.weight.grad is not None and net.lesion.weight.grad.abs().sum() > 0  # the decision trains it
    with pytest.raises(ValueError, match="evidence"):
        MSFAConfig(evidence="yes")
    with pytest.raises(ValueError, match="lesion head"):
        plain.evidence(features)


def test_the_hybrid_loss_weights_are_learned_and_cannot_collapse():
    loss = HybridLoss()
    assert loss.weights == {"t1": 1.0, "fs": 1.0, "fuse": 1.0}
    torch.manual_seed(0)
    out = MSFANet(TINY)(torch.rand(3, 2, *TINY.input_shape))
    target = torch.tensor([0, 1, 1])
    parts = loss(out, target)
    assert torch.allclose(parts["total"], parts["ce_fuse"] + parts["ce_t1"] + parts["ce_fs"])  # β = 1, s = 0
    # Minimised over the log-variances alone, each weight settles at 1 / its loss: > 0, not 0.
    fixed = {"t1": 2.0, "fs": 0.5, "fuse": 0.25}
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(800):
        opt.zero_grad()
        total = sum(torch.exp(-s) * fixed[b] + s for b, s in zip(("t1", "fs", "fuse"), loss.log_variance))
        total.backward()
        opt.step()
    for branch, value in fixed.items():
        assert loss.weights[branch] == pytest.approx(1.0 / value, rel=0.05)
    plain = HybridLoss(learned=False)(out, target)
    assert torch.equal(plain["total"], plain["ce_fuse"])  # the ablation: the Fuse branch's cross-entropy only


def test_a_training_step_lowers_the_loss_and_moves_alpha():
    torch.manual_seed(0)
    net, loss = MSFANet(TINY), HybridLoss()
    x = torch.rand(4, 2, *TINY.input_shape)
    x[2:, 1, :, 8:16, 8:16] += 1.0  # "oedema" on the FS of the positives
    y = torch.tensor([0, 0, 1, 1])
    opt = torch.optim.Adam([*net.parameters(), *loss.parameters()], lr=1e-2)
    first = None
    for _ in range(15):
        opt.zero_grad()
        value = loss(net(x), y)["total"]
        value.backward()
        opt.step()
        first = float(value) if first is None else first
    assert float(loss(net(x), y)["total"]) < first
    assert float(net.fuse.msfa1.alpha) != 0.0 and float(net.fuse.msfa2.alpha) != 0.0
    assert json.dumps(net.config.to_dict())  # the checkpoint's card can carry it
