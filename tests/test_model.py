"""DistributionalRewardModel on synthetic features: mixing, save/load, errors; the gate and
verbosity debiasing."""

import json

import pytest
from conftest import reseal
import torch

from distrm.heads.debias import fit_debias, length_signal
from distrm.distribution import default_levels
from distrm.heads.gate import GatingNetwork
from distrm.config import GateConfig
from distrm.training.gate import train_gate
from distrm.models.qrm import DistributionalRewardModel, ModelConfig

D, M = 16, 3


def make_model(gate: str = "learned", head: str = "quantile") -> DistributionalRewardModel:
    torch.manual_seed(0)
    K = 19 if head == "quantile" else 1
    cfg = ModelConfig(
        backbone="none",
        feature_dim=D,
        attributes=["a", "b", "c"],
        head=head,
        levels=default_levels(19, torch.float64).tolist() if head == "quantile" else None,
        gate=gate,
        gate_hidden=32,
        gate_n_hidden=3,
        fixed_weights=[0.5, 0.25, 0.25] if gate == "fixed" else None,
        debias_source="length",
    )
    g = GatingNetwork(D, M, 32, 3) if gate == "learned" else None
    if g is not None:  # non-trivial BatchNorm statistics, so a reload has something to match
        g.train()
        g(torch.randn(64, D))
    return DistributionalRewardModel(cfg, torch.randn(M, K, D), torch.randn(M, K), g, torch.tensor([0.1, 0.0, 0.2]))


def test_score_features_shapes_and_mixture():
    m = make_model()
    X, P = torch.randn(5, D), torch.randn(5, D)
    out = m.score_features(X, P, ["short", "a bit longer answer", "x", "y z", "w"])
    assert out.attributes.values.shape == (5, M, 19)
    assert out.reward.values.shape == (5, 19)
    assert torch.allclose(out.weights.sum(-1), torch.ones(5, dtype=torch.float64))
    # quantiles never cross
    assert bool((out.attributes.values.diff(dim=-1) >= 0).all())
    # mixture mean = weighted attribute means (quantile averaging is linear)
    assert torch.allclose(out.mean, (out.weights * out.attributes.mean()).sum(-1))


def test_save_load_is_bit_identical(tmp_path):
    m = make_model()
    m.save_pretrained(tmp_path)
    m2 = DistributionalRewardModel.from_pretrained(tmp_path)
    X, P = torch.randn(7, D), torch.randn(7, D)
    r = ["one two three"] * 7
    a, b = m.score_features(X, P, r), m2.score_features(X, P, r)
    assert torch.equal(a.reward.values, b.reward.values)
    assert torch.equal(a.weights, b.weights)


@pytest.mark.parametrize("gate,head", [("fixed", "quantile"), ("learned", "ridge")])
def test_other_variants_round_trip(tmp_path, gate, head):
    m = make_model(gate, head)
    m.save_pretrained(tmp_path)
    m2 = DistributionalRewardModel.from_pretrained(tmp_path)
    X, P = torch.randn(4, D), torch.randn(4, D)
    assert torch.equal(m.score_features(X, P, ["a"] * 4).mean, m2.score_features(X, P, ["a"] * 4).mean)


def test_pickle_is_refused_and_mismatch_is_clear(tmp_path):
    m = make_model()
    m.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"x": 1}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickle files are refused"):
        DistributionalRewardModel.from_pretrained(tmp_path)
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["feature_dim"] = D + 1
    reseal(tmp_path, cfg)
    with pytest.raises(ValueError, match=r"tensor 'heads.coef' has shape .*config.json implies"):
        DistributionalRewardModel.from_pretrained(tmp_path)
    cfg["feature_dim"] = D
    cfg["gate_hidden"] = 64
    reseal(tmp_path, cfg)
    with pytest.raises(ValueError, match="gate weights do not match"):
        DistributionalRewardModel.from_pretrained(tmp_path)
    cfg["gate_hidden"] = 32
    cfg["surprise"] = 1
    reseal(tmp_path, cfg)
    with pytest.raises(ValueError, match="unknown key"):
        DistributionalRewardModel.from_pretrained(tmp_path)


def test_gate_learns_prompt_dependent_weights():
    """Two prompt types; for type 0 attribute 0 decides the preference, for type 1 attribute 1.
    The trained gate must put its weight on the deciding attribute for each type."""
    torch.manual_seed(0)
    n = 2000
    typ = torch.randint(0, 2, (n,))
    feats = torch.randn(n, 8) + 3.0 * typ[:, None].float()
    mc, mr = torch.rand(n, 2), torch.rand(n, 2)
    # make the deciding attribute agree with the label, the other one anti-correlated noise
    dec_c = torch.maximum(mc[torch.arange(n), typ], mr[torch.arange(n), typ])
    dec_r = torch.minimum(mc[torch.arange(n), typ], mr[torch.arange(n), typ])
    mc[torch.arange(n), typ], mr[torch.arange(n), typ] = dec_c, dec_r
    mc[torch.arange(n), 1 - typ], mr[torch.arange(n), 1 - typ] = dec_r, dec_c
    gate = GatingNetwork(8, 2, hidden=32, n_hidden=3, temperature=1.0)
    log = train_gate(gate, feats, mc, mr, GateConfig(lr=3e-3, batch_size=256, epochs=20), progress=False)
    assert log[-1]["loss"] < log[0]["loss"]
    with torch.no_grad():
        w = gate(feats)
    assert w[typ == 0, 0].mean() > 0.8 and w[typ == 1, 1].mean() > 0.8


def test_debias_removes_length_correlation():
    torch.manual_seed(0)
    responses = [" ".join(["w"] * int(n)) for n in torch.randint(1, 800, (500,))]
    v = length_signal(responses)
    quality = torch.rand(500, dtype=torch.float64)
    means = torch.stack([quality + 0.5 * v, quality, v], dim=1)  # length-biased, clean, pure verbosity
    p = fit_debias(means, v, threshold=0.03)
    assert p[1] == 0.0
    assert 0.2 <= p[0] <= 0.6
    from scipy.stats import spearmanr

    assert spearmanr(means[:, 0] - p[0] * v, v).statistic <= 0.03
    p2 = fit_debias(means, means[:, 2], verbosity_index=2)
    assert p2[2] == 1.0


def test_constant_attribute_gets_no_debias_term():
    """An attribute whose heads are constant up to float rounding (all coefficients zero; the
    quantile sort leaves ~1e-16 differences) must not get a length penalty: it would turn a
    flat attribute into a pure "fewer words is better" rule."""
    from distrm.heads.debias import fit_debias, length_signal

    n = 200
    rng = torch.Generator().manual_seed(0)
    v = length_signal([" ".join(["w"] * int(k)) for k in torch.randint(1, 300, (n,), generator=rng)])
    informative = 0.5 + 0.3 * v + 0.05 * torch.randn(n, generator=rng, dtype=torch.float64)  # length-correlated
    flat = torch.full((n,), 0.6317, dtype=torch.float64) + torch.randn(n, generator=rng, dtype=torch.float64) * 1e-16
    p = fit_debias(torch.stack([informative, flat], 1), v)
    assert float(p[0]) > 0  # the length-correlated attribute is debiased
    assert float(p[1]) == 0.0  # the flat one is not


def test_empty_responses_are_scored_with_a_warning(tiny_model):
    with pytest.warns(UserWarning, match="1 of 2 responses are empty"):
        out = tiny_model.score(["Hello?", "Hello?"], ["Hi there!", "   "])
    assert torch.isfinite(out.reward.values).all()
