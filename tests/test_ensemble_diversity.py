"""Ensembles whose disagreement means something (issue 18, item 4): bootstrap by default,
anchored (Pearce et al. 2020) and randomized-prior (Osband et al. 2018) members, and a
warning when the members collapse onto one head."""

import json
import logging

import pytest
import torch
from conftest import stand_in_backbone

from distrm.config import EnsembleConfig, TrainConfig, load_config
from distrm.data.records import PreferencePair
from distrm.heads.ensemble import BTEnsembleHeads
from distrm.models.auto import load_reward_model
from distrm.models.bt_ensemble import EnsembleRewardModel

D, K = 16, 12  # features; the training data span only the first K of them


def pairs_in_subspace(n: int, seed: int, d: int = D, k: int = K):
    """BT-labelled pairs whose features live in the first k coordinates (the rest are 0 in
    training: directions the data say nothing about), plus fresh in-distribution inputs and
    inputs far away (5x the radius, in every coordinate)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(d, dtype=torch.float64)
    w[:k] = torch.randn(k, generator=g, dtype=torch.float64) / k**0.5

    def feats(m: int) -> torch.Tensor:
        x = torch.randn(m, d, generator=g, dtype=torch.float64)
        x[:, k:] = 0.0
        return x

    a, b = feats(n), feats(n)
    wins = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid((a - b) @ w)
    Xc, Xr = torch.where(wins[:, None], a, b), torch.where(wins[:, None], b, a)
    X_in = feats(400)
    X_far = 5.0 * torch.randn(400, d, generator=g, dtype=torch.float64)
    return Xc, Xr, X_in, X_far


def member_var(heads: BTEnsembleHeads, X: torch.Tensor) -> float:
    return float(heads.predict(X).var(dim=1).mean())


KINDS = {
    "bootstrap": dict(bootstrap=True),
    "anchored": dict(anchored=True, l2=1e-2),
    "prior": dict(prior_scale=1.0, l2=1e-2),
    "bootstrap+anchored": dict(bootstrap=True, anchored=True, l2=1e-2),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_members_disagree_far_from_the_training_features(kind):
    Xc, Xr, X_in, X_far = pairs_in_subspace(800, 0)
    heads = BTEnsembleHeads(n_members=8, optimizer="lbfgs", seed=1, **KINDS[kind]).fit(Xc, Xr)
    v_in, v_far = member_var(heads, X_in), member_var(heads, X_far)
    assert v_far > 10 * v_in, (kind, v_in, v_far)
    # converged (L-BFGS): the diversity is in the objectives, not in unfinished optimisation
    assert float(heads.member_gradients(Xc, Xr).norm(dim=1).max()) < 1e-6
    # ... and every member still ranks
    assert float(heads.train_accuracy_.min()) > 0.7


def test_anchors_put_the_disagreement_where_the_data_are_silent():
    """Along coordinates never seen in training, bootstrap members all say 0, anchored and
    randomized-prior members say their own prior draw."""
    Xc, Xr, _, _ = pairs_in_subspace(600, 2)
    boot = BTEnsembleHeads(n_members=6, optimizer="lbfgs", bootstrap=True, seed=0).fit(Xc, Xr)
    assert float(boot.coef_[:, K:].abs().max()) < 1e-6
    anch = BTEnsembleHeads(n_members=6, optimizer="lbfgs", anchored=True, l2=1e-2, seed=0).fit(Xc, Xr)
    assert torch.allclose(anch.coef_[:, K:], anch.anchor_coef_[:, K:], atol=1e-6)
    assert anch.prior_std_ == pytest.approx(1 / (600 * 1e-2) ** 0.5)  # the prior implied by l2
    assert float(anch.coef_[:, K:].std(0).mean()) > 0.3 * anch.prior_std_ / float(anch.feature_scale_[K:].mean())


def test_randomized_prior_is_folded_into_the_saved_linear_heads(tmp_path):
    """member i = trainable theta_i (penalised toward 0) + beta * fixed prior v_i: coef_ is the
    sum, theta_i is the ridge-BT optimum of the data given the prior, and the saved model is N
    linear heads like any other."""
    Xc, Xr, X_in, _ = pairs_in_subspace(500, 3)
    beta, l2 = 2.0, 1e-2
    heads = BTEnsembleHeads(n_members=4, optimizer="lbfgs", prior_scale=beta, prior_std=0.5, l2=l2, seed=0, standardize=False).fit(Xc, Xr)
    theta = heads.coef_ - beta * heads.prior_coef_
    # gradient of the trainable part's own objective: data loss of (theta + beta v) + l2/2 ||theta||^2
    th = theta.clone().requires_grad_(True)
    Dm = Xc - Xr
    S = Dm @ (th + beta * heads.prior_coef_).T
    (torch.nn.functional.softplus(-S).mean(0) + 0.5 * l2 * (th * th).sum(1)).sum().backward()
    assert float(th.grad.norm(dim=1).max()) < 1e-6
    # the prior changed the members (without it they would be one head)
    assert float((heads.coef_[0] - heads.coef_[1]).norm()) > 0.1
    model = EnsembleRewardModel.from_heads(heads)
    model.save_pretrained(tmp_path / "m")
    loaded = load_reward_model(tmp_path / "m")
    expected = X_in @ (theta + beta * heads.prior_coef_).T
    assert torch.allclose(loaded.score_features(X_in).members, expected, atol=1e-10)


def test_a_forced_collapse_warns(caplog):
    """No bootstrap, no anchors, the same start, a strictly convex problem solved to the end:
    the members are one head, and the user is told."""
    Xc, Xr, _, _ = pairs_in_subspace(500, 4)
    with caplog.at_level(logging.WARNING, logger="distrm.heads.ensemble"):
        heads = BTEnsembleHeads(n_members=5, bootstrap=False, init_std=0.0, optimizer="lbfgs", seed=0).fit(Xc, Xr)
    assert heads.member_correlation_ > 0.999 and heads.member_disagreement_ < 1e-8
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("collapse" in m and "5 members" in m and "bootstrap" in m and "anchored" in m for m in msgs), msgs
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distrm.heads.ensemble"):
        BTEnsembleHeads(n_members=5, bootstrap=True, optimizer="lbfgs", seed=0).fit(Xc, Xr)
    assert not [r for r in caplog.records if "collapse" in r.getMessage()]


def test_the_default_ensemble_is_not_collapsed(caplog):
    """EnsembleConfig's defaults (bootstrap on, Adam, 30 epochs) on a realistic synthetic case:
    48 dense features, a noisy BT signal, 1,000 pairs."""
    ec = EnsembleConfig()
    assert ec.bootstrap and not ec.anchored and ec.prior_scale == 0
    g = torch.Generator().manual_seed(5)
    d, n = 48, 1000
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5  # correlated features
    w = torch.randn(d, generator=g, dtype=torch.float64) / d**0.5
    a = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + 0.3
    b = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + 0.3
    wins = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(2 * (a - b) @ w)
    Xc, Xr = torch.where(wins[:, None], a, b), torch.where(wins[:, None], b, a)
    with caplog.at_level(logging.WARNING, logger="distrm.heads.ensemble"):
        heads = BTEnsembleHeads(
            n_members=ec.n_members, bootstrap=ec.bootstrap, l2=1e-3, lr=ec.lr, epochs=ec.epochs, batch_size=ec.batch_size,
            init_std=ec.init_std, seed=0, optimizer=ec.optimizer, init=ec.init, anchored=ec.anchored,
            prior_scale=ec.prior_scale, prior_std=ec.prior_std, collapse_corr=ec.collapse_corr,
        ).fit(Xc, Xr)
    assert heads.member_correlation_ < 0.99, heads.member_correlation_
    assert not [r for r in caplog.records if "collapse" in r.getMessage()]


def test_config_and_train_log_carry_the_diversity(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="prior_scale"):
        EnsembleConfig(prior_scale=-1.0)
    with pytest.raises(ValueError, match="prior_std"):
        EnsembleConfig(prior_std=0.0)
    Xc, Xr, _, _ = pairs_in_subspace(300, 6)
    pairs = [PreferencePair(f"p{i}", f"c{i}", f"r{i}", source="syn", id=str(i)) for i in range(300)]
    stand_in_backbone(monkeypatch, {**{f"c{i}": Xc[i] for i in range(300)}, **{f"r{i}": Xr[i] for i in range(300)}}, pairs=pairs)
    from distrm.cli import train as cli_train
    from distrm.training.bt_ensemble import train_ensemble

    out = tmp_path / "run"
    cfg = load_config(TrainConfig, cli_train.default_config_path(), [
        "model=ensemble", f"output_dir={out}", "ensemble.n_members=3", "ensemble.epochs=5", "ensemble.l2=0.01",
        "ensemble.anchored=true", "ensemble.prior_scale=0.5", "progress=false",
    ])
    assert cfg.ensemble.bootstrap  # the default
    train_ensemble(cfg)
    log = json.loads((out / "train_log.json").read_text())
    assert 0 < log["member_correlation"] < 0.99 and log["member_disagreement"] > 0
    assert log["prior_std"] == pytest.approx(1 / (300 * 0.01) ** 0.5)
    assert load_reward_model(out).config.n_members == 3
