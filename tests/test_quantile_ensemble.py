"""Bootstrap quantile ensemble as a model type: its reward is the members' probability mixture
(aleatoric + epistemic), it saves and loads like every other type, and it trains from config."""

import json

import numpy as np
import pytest
import torch
from conftest import reseal, stand_in_backbone
from scipy.stats import spearmanr

from distrm.heads.ensemble import BootstrapQuantileHeads
from distrm.heads.synthetic import LocationScaleBimodal
from distrm.models.auto import AutoRewardModel
from distrm.models.quantile_ensemble import QuantileEnsembleRewardModel, heads_from_state

D, N_ITEMS = 4, 150
GENS = [LocationScaleBimodal.random(D, seed=0), LocationScaleBimodal.random(D, seed=1)]


def rated_data(n: int = N_ITEMS, seed: int = 0):
    """Long-format targets with known structure: attribute "a" has 3 raters per item, "b" one;
    each rating is bimodal with an x-dependent location and spread (linear quantiles)."""
    X = GENS[0].features(n, seed=seed)
    ya = np.stack([GENS[0].sample(X, seed=seed + 10 + r) for r in range(3)], 1).reshape(-1)
    yb = GENS[1].sample(X, seed=seed + 20)
    y = np.r_[ya, yb]
    attribute = np.r_[np.zeros(3 * n, int), np.ones(n, int)]
    index = np.r_[np.repeat(np.arange(n), 3), np.arange(n)]
    return X, y, attribute, index


@pytest.fixture(scope="module")
def heads():
    X, y, attribute, index = rated_data()
    return BootstrapQuantileHeads(n_boot=4, alpha=1e-3, seed=0).fit(X, y, attribute=attribute, index=index, n_attributes=2)


def make_model(heads, **config) -> QuantileEnsembleRewardModel:
    return QuantileEnsembleRewardModel.from_heads(heads, ["a", "b"], training={"note": "test"}, **config)


@pytest.fixture(scope="module")
def X_new():
    return torch.as_tensor(GENS[0].features(40, seed=7))


def test_round_trip_scores_identically(heads, X_new, tmp_path):
    m = make_model(heads, weights=[1.0, 3.0])
    m.save_pretrained(tmp_path / "qe")
    loaded = AutoRewardModel.from_pretrained(tmp_path / "qe")
    assert isinstance(loaded, QuantileEnsembleRewardModel) and loaded.config == m.config
    a, b = m.score_features(X_new), loaded.score_features(X_new)
    for x, y in [(a.reward.values, b.reward.values), (a.attributes.values, b.attributes.values), (a.weights, b.weights),
                 (a.uncertainty["epistemic"], b.uncertainty["epistemic"])]:
        assert torch.equal(x, y)
    assert loaded.kind == "quantile" and loaded.describe()["n_members"] == 4
    assert "aleatoric" in (tmp_path / "qe" / "README.md").read_text()


def test_reward_is_the_members_mixture(heads, X_new):
    m = make_model(heads, weights=[1.0, 3.0])
    g = torch.tensor([0.25, 0.75], dtype=torch.float64)
    far = 3 * X_new  # outside the training cube: the members disagree there
    for X in (X_new, far):
        out, u = m.score_features(X), m.uncertainty(X)
        # the split is the law of total variance, computed independently (second moments)
        assert torch.allclose(u["total"], u["aleatoric"] + u["epistemic"], rtol=0, atol=1e-12)
        assert bool((u["epistemic"] > 0).all()) and bool((u["aleatoric"] > 0).all())
        # quantile averaging is linear: a member's mean is the weighted mean of its attributes, exactly
        assert torch.allclose(u["mean"], (heads.decompose(X)["mean"] * g).sum(-1), rtol=0, atol=1e-12)
        # the reward's quantiles are those of the equal-weight mixture of the members' rewards:
        # at each level tau, P(R < q) <= tau <= P(R <= q) under (1/B) sum_b F_b
        members = m.member_rewards(m.member_distributions(X), out.weights)  # [n, B, K]
        q = out.reward.values.unsqueeze(1).expand(-1, 4, -1)
        lv = m.levels
        assert bool((members.cdf_at(q).mean(1) >= lv - 1e-9).all())
        assert bool((members.cdf_at(q - 1e-9).mean(1) <= lv + 1e-9).all())
        # ... so its mean and variance are the mixture's, up to the summary at the output levels
        assert float(((out.mean - u["mean"]).abs() / u["total"].sqrt()).max()) < 0.05
        assert torch.allclose(out.variance, u["total"], rtol=0.1)
        # each attribute: pooled over members, with the heads' own total-variance split
        dec = heads.decompose(X)
        assert float(((out.attributes.mean() - dec["mean"]).abs() / dec["total"].sqrt()).max()) < 0.05
        assert torch.allclose(out.attributes.variance(), dec["total"], rtol=0.1)
    # where data is scarce the epistemic share grows (far from the 150 training items)
    share = {k: (u["epistemic"] / u["total"]).median() for k, u in [("in", m.uncertainty(X_new)), ("far", m.uncertainty(far))]}
    assert share["far"] > 3 * share["in"] and share["far"] > 0.03
    # one member: nothing epistemic, the reward is that member's own (at the heads' own levels)
    one = heads_from_state(heads.coef_[:1], heads.intercept_[:1], heads.levels_.tolist())
    single = make_model(one, weights=[1.0, 3.0])
    s = single.score_features(X_new)
    assert torch.equal(single.levels, heads.levels_)
    assert torch.equal(s.uncertainty["epistemic"], torch.zeros(40, dtype=torch.float64))
    assert torch.allclose(s.reward.values, single.member_rewards(single.member_distributions(X_new), s.weights).values[:, 0],
                          atol=1e-9)


def _bisection_mixture(comp, w, lv, iters=200):
    """Reference: bisection on the exact mixture CDF (what ``mix`` computed before it read the
    quantiles off the knots); 200 halvings reach float64 resolution."""
    lo = comp.values.amin(dim=(-1, -2)).unsqueeze(-1).expand(-1, len(lv)).clone()
    hi = comp.values.amax(dim=(-1, -2)).unsqueeze(-1).expand(-1, len(lv)).clone()
    m = comp.values.shape[-2]
    for _ in range(iters):
        mid = (lo + hi) / 2
        f = (w.unsqueeze(-1) * comp.cdf_at(mid.unsqueeze(-2).expand(-1, m, len(lv)))).sum(-2)
        below = f < lv
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return hi


@pytest.mark.parametrize("kind", ["quantile", "ensemble"])
def test_probability_mixture_quantiles_match_a_bisection(kind):
    """RewardDistribution.mix(method="probability") reads the mixture's quantiles off the
    knots of its CDF: equal to a bisection on that CDF, with ties, flat pieces, point masses
    and zero weights, in chunks or not, for quantile components and ensemble members."""
    from distrm.distribution import RewardDistribution, _mixture_quantiles

    g = torch.Generator().manual_seed(1)
    v = torch.randn(50, 4, 7, generator=g, dtype=torch.float64).sort(-1).values
    v[:, 1] = v[:, 1].round()  # ties: flat pieces of the quantile function
    v[:5, 2] = 0.3  # a point mass
    w = torch.rand(50, 4, generator=g, dtype=torch.float64)
    w[:, 3] = 0
    w = w / w.sum(-1, keepdim=True)
    levels = torch.linspace(0, 1, 9, dtype=torch.float64)[1:-1] if kind == "quantile" else None
    comp = RewardDistribution(values=v, levels=levels, kind=kind)
    lv = torch.linspace(0, 1, 41, dtype=torch.float64)[1:-1]
    want = _bisection_mixture(comp, w, lv)
    assert torch.allclose(RewardDistribution.mix(comp, w, method="probability", levels=lv).values, want, rtol=0, atol=1e-12)
    assert torch.allclose(_mixture_quantiles(comp, w, lv, budget=1), want, rtol=0, atol=1e-12)  # one row at a time


def test_output_levels_resolve_the_tails(heads, X_new):
    """The B - 1 extra levels in each tail keep the members' disagreement that the heads'
    levels alone would flatten (the lower tail is what CVaR reads)."""
    from distrm.distribution import RewardDistribution
    from distrm.models.quantile_ensemble import output_levels

    lv = output_levels([0.05, 0.5, 0.95], 4)
    assert torch.allclose(lv, torch.tensor([0.0125, 0.025, 0.0375, 0.05, 0.5, 0.95, 0.9625, 0.975, 0.9875], dtype=torch.float64))
    m = make_model(heads)
    X = 3 * X_new
    members = m.member_rewards(m.member_distributions(X), m.attribute_weights(40))
    eq = torch.full((40, 4), 0.25, dtype=torch.float64)

    def cvar_at(levels):
        return RewardDistribution.mix(members, eq, method="probability", levels=levels).cvar(0.1)

    exact = cvar_at(torch.linspace(0, 1, 2001, dtype=torch.float64)[1:-1])
    err_out = (m.score_features(X).reward.cvar(0.1) - exact).abs().max()
    assert err_out < 0.5 * (cvar_at(heads.levels_) - exact).abs().max()


def test_probability_mix_and_weights(heads, X_new):
    """mix=probability with all weight on "b": every member's reward is its "b" distribution,
    so the reward is attribute "b" pooled over members."""
    m = make_model(heads, weights=[0.0, 2.0], mix="probability")
    out = m.score_features(X_new)
    assert torch.allclose(out.weights, torch.tensor([[0.0, 1.0]], dtype=torch.float64).expand(40, -1))
    assert torch.allclose(out.reward.values, out.attributes.values[:, 1], atol=1e-9)
    u = make_model(heads).score_features(X_new).weights  # default: uniform
    assert torch.allclose(u, torch.full((40, 2), 0.5, dtype=torch.float64))


def test_risk_measures_and_to_dict(heads, X_new):
    out = make_model(heads).score_features(X_new)
    r = out.reward
    cvar, eu, ce = r.cvar(0.1), r.exp_utility(2.0), r.certainty_equivalent(2.0)
    assert torch.isfinite(cvar).all() and torch.isfinite(eu).all()
    assert bool((cvar <= out.mean + 1e-12).all()) and bool((ce <= out.mean + 1e-12).all())
    rows = out.to_dict(["cvar:alpha=0.1", "exp_utility:lam=2"])
    assert len(rows) == 40 and len(rows[0]["quantiles"]) == 19 + 2 * 3 and set(rows[0]["attributes"]) == {"a", "b"}
    assert rows[3]["uncertainty"]["epistemic"] == pytest.approx(float(out.uncertainty["epistemic"][3]))
    assert rows[3]["risk"]["exp_utility:lam=2"] == pytest.approx(float(eu[3]))


def test_load_errors_are_clear(heads, tmp_path):
    m = make_model(heads)
    p = tmp_path / "qe"
    m.save_pretrained(p)
    good = json.loads((p / "config.json").read_text())
    for change, needle in [({"n_members": 5}, r"'heads.coef' has shape \(4, 2, 19, 4\), config.json implies \(5, 2, 19, 4\)"),
                           ({"levels": good["levels"][::-1]}, "strictly increasing"),
                           ({"weights": [1.0]}, "weights must be 2 non-negative"),
                           ({"mix": "median"}, "mix must be one of")]:
        reseal(p, {**good, **change})
        with pytest.raises(ValueError, match=needle):
            AutoRewardModel.from_pretrained(p)
    with pytest.raises(ValueError, match=r"reward features must be \[n, 4\]"):
        m.score_features(torch.zeros(2, D + 1))


def test_train_wiring(tmp_path, monkeypatch):
    """``distrm train --set model=quantile_ensemble``: rated data -> features -> bootstrap heads
    -> a saved model that loads and ranks by the true mean (backbone replaced by a stand-in)."""
    from distrm.cli import main
    from distrm.data.records import PreferencePair, RatedResponse

    X, y, attribute, index = rated_data(120, seed=3)
    rated = [RatedResponse(f"p{i}", f"r{i}", {"a": y[3 * i:3 * i + 3].tolist(), "b": float(y[360 + i])}, source="syn", id=str(i))
             for i in range(120)]
    pairs = [PreferencePair(f"p{i}", f"r{i}", f"r{i + 60}", source="syn", id=str(i)) for i in range(60)]
    stand_in_backbone(monkeypatch, {f"r{i}": X[i] for i in range(120)}, rated, pairs)
    out = tmp_path / "run"
    assert main(["train", "--output-dir", str(out), "--set", "model=quantile_ensemble", "--set", "quantile_ensemble.n_members=3",
                 "--set", "quantile_ensemble.alpha=0.001", "--set", "quantile_ensemble.weights={a: 1, b: 1}",
                 "--set", "progress=false"]) == 0  # fmt: skip
    log = json.loads((out / "train_log.json").read_text())
    assert len(log["members"]) == 3 and log["pairs"]["n_pairs"] == 60
    assert log["uncertainty_on_training_items"]["epistemic_mean"] > 0
    model = AutoRewardModel.from_pretrained(out)
    assert isinstance(model, QuantileEnsembleRewardModel) and model.config.backbone_identity == "fake@1"
    assert model.config.n_members == 3 and model.config.weights == [1.0, 1.0] and model.config.training["n_items"] == 120
    Xt = GENS[0].features(200, seed=9)
    true_mean = sum(0.5 + Xt @ g.a + (g.sigma0 + Xt @ g.c) * (1 - 2 * g.p) * g.m for g in GENS) / 2  # E[eps] = (1 - 2p) m
    assert spearmanr(model.score_features(Xt).mean.numpy(), true_mean).statistic > 0.8
    with pytest.raises(ValueError, match="not trained"):
        from distrm.config import TrainConfig, load_config
        from distrm.training.quantile_ensemble import train_quantile_ensemble

        train_quantile_ensemble(load_config(TrainConfig, None, ["model=quantile_ensemble", f"output_dir={out}",
                                                                "quantile_ensemble.weights={c: 1}", "progress=false"]))
