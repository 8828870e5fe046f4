"""Ensemble reward model, bootstrap quantile heads (total-variance split), Figure-6 analysis."""

import json

import numpy as np
import pytest
from conftest import reseal, stand_in_backbone
import torch
from scipy.optimize import minimize
from scipy.stats import spearmanr

from distrm.config import TrainConfig, load_config
from distrm.data.records import PreferencePair
from distrm.eval.disagreement import ensemble_disagreement
from distrm.distribution import RewardDistribution
from distrm.eval.pairs import evaluate_pairs
from distrm.models.bt_ensemble import EnsembleModelConfig, EnsembleRewardModel
from distrm.heads.ensemble import BootstrapQuantileHeads, BTEnsembleHeads
from distrm.heads.targets import as_long_targets
from distrm.models.auto import load_reward_model
from distrm.models.base import ScoreOutput

D = 8


def bt_data(n: int, seed: int):
    """Pairs labelled by sampling the BT model with a known w*: P(a > b) = sigmoid(w*.(x_a - x_b))."""
    g = torch.Generator().manual_seed(seed)
    w = torch.linspace(-1.5, 2.0, D, dtype=torch.float64)
    a = torch.randn(n, D, generator=g, dtype=torch.float64)
    b = torch.randn(n, D, generator=g, dtype=torch.float64)
    a_wins = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid((a - b) @ w)
    Xc = torch.where(a_wins[:, None], a, b)
    Xr = torch.where(a_wins[:, None], b, a)
    return Xc, Xr, w


def accuracy(scores_c: torch.Tensor, scores_r: torch.Tensor) -> torch.Tensor:
    return (scores_c > scores_r).double().mean(0)


# ---------------------------------------------------------------------------- BT ensemble heads
def test_one_pass_members_differ_yet_each_ranks_well():
    Xc, Xr, w = bt_data(3000, 0)
    Tc, Tr, _ = bt_data(4000, 1)
    bayes = float(accuracy(Tc @ w, Tr @ w))  # the best any ranker can do on these pairs
    heads = BTEnsembleHeads(n_members=6, epochs=4, lr=0.05, init_std=1.0, seed=0).fit(Xc, Xr)
    W = heads.coef_
    # members differ: different starts, incomplete optimisation
    dist = torch.cdist(W, W)
    assert float(dist[~torch.eye(6, dtype=torch.bool)].min()) > 0.05
    # ... yet each is a good ranker on held-out pairs and points along w*
    acc = accuracy(heads.predict(Tc), heads.predict(Tr))
    assert float(acc.min()) > bayes - 0.03, (acc, bayes)
    cos = torch.nn.functional.cosine_similarity(W, w[None], dim=1)
    assert float(cos.min()) > 0.95
    # the loss went down for every member from its random start
    assert heads.loss_history_[-1] < heads.loss_history_[0]


def test_bootstrap_members_differ_and_each_reaches_its_own_optimum():
    Xc, Xr, _ = bt_data(800, 2)
    l2 = 1e-2
    # raw features (standardize=False), so that the reference below is the same objective
    heads = BTEnsembleHeads(n_members=4, bootstrap=True, optimizer="lbfgs", l2=l2, seed=3, standardize=False).fit(Xc, Xr)
    C = heads.counts_
    assert torch.equal(C.sum(1), torch.full((4,), 800.0, dtype=torch.float64))
    assert not torch.equal(C[0], C[1])
    # summed-loss training: every member's own gradient ~ 0
    grad = heads.member_gradients(Xc, Xr)
    assert float(grad.norm(dim=1).max()) < 1e-7
    # and equals a separate training of that member on its own weighted loss (scipy BFGS)
    Dm = (Xc - Xr).numpy()
    for i in (0, 3):
        c = C[i].numpy()

        def f(v, c=c):
            s = Dm @ v
            loss = (c * np.logaddexp(0, -s)).sum() / len(s) + 0.5 * l2 * v @ v
            grad = -(Dm.T @ (c / (1 + np.exp(s)))) / len(s) + l2 * v
            return loss, grad

        ref = minimize(f, np.zeros(D), jac=True, method="BFGS", options={"gtol": 1e-10}).x
        assert np.allclose(heads.coef_[i].numpy(), ref, atol=1e-5)
    # bootstrap members are distinct optima
    assert float((heads.coef_[0] - heads.coef_[1]).norm()) > 1e-2
    # without the bootstrap, a converged convex fit forgets its initialisation: all equal
    same = BTEnsembleHeads(n_members=3, optimizer="lbfgs", l2=l2, init_std=1.0, seed=3).fit(Xc, Xr)
    assert torch.allclose(same.coef_[0], same.coef_[2], atol=1e-5)


def test_single_head_attachment_starts_at_the_single_head():
    Xc, Xr, w = bt_data(1500, 4)
    heads = BTEnsembleHeads(n_members=5, init="single_head", init_std=0.01, epochs=2, lr=1e-3, seed=0).fit(Xc, Xr)
    w0 = heads.single_head_coef_
    assert torch.allclose(heads.init_coef_.mean(0), w0, atol=0.02)
    # a short, small-step training keeps every member near the single head, and ranking well
    assert float((heads.coef_ - w0).norm(dim=1).max()) < 0.3 * float(w0.norm())
    assert float(heads.train_accuracy_.min()) > 0.75


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match=r"both be \[n, d\]"):
        BTEnsembleHeads().fit(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="optimizer"):
        BTEnsembleHeads(optimizer="sgd").fit(torch.zeros(3, 2), torch.ones(3, 2))


# ---------------------------------------------------------------------------- model object
def make_model(N: int = 5, seed: int = 0) -> EnsembleRewardModel:
    g = torch.Generator().manual_seed(seed)
    cfg = EnsembleModelConfig(backbone="none", feature_dim=D, n_members=N, training={"note": "test"})
    return EnsembleRewardModel(cfg, torch.randn(N, D, generator=g), torch.randn(N, generator=g))


def test_score_features_is_a_member_distribution():
    m = make_model()
    X = torch.randn(7, D)
    out = m.score_features(X)
    assert isinstance(out, ScoreOutput)
    members = X.double() @ m.coef.T + m.intercept
    assert torch.allclose(out.members, members)
    assert torch.allclose(out.mean, members.mean(1))
    assert torch.allclose(out.variance, members.var(1, unbiased=False))
    assert out.reward.kind == "ensemble" and out.attributes.values.shape == (7, 1, 5)
    rows = out.to_dict(["cvar:alpha=0.2", "mean_minus_std:c=1"])
    assert len(rows) == 7 and len(rows[0]["members"]) == 5
    # CVaR at 0.2 of 5 equally weighted members is the worst member
    assert rows[0]["risk"]["cvar:alpha=0.2"] == pytest.approx(float(members[0].min()))
    with pytest.raises(ValueError, match=r"\[n, 8\]"):
        m.score_features(torch.randn(3, D + 1))


def test_save_load_bit_identical_and_dispatch(tmp_path):
    m = make_model()
    m.save_pretrained(tmp_path / "ens")
    m2 = EnsembleRewardModel.from_pretrained(tmp_path / "ens")
    m3 = load_reward_model(tmp_path / "ens")
    assert isinstance(m3, EnsembleRewardModel)
    X = torch.randn(9, D)
    assert torch.equal(m.score_features(X).members, m2.score_features(X).members)
    assert torch.equal(m.score_features(X).members, m3.score_features(X).members)
    assert m2.config == m.config
    # the QRM directory layout dispatches to DistributionalRewardModel
    from distrm.models.qrm import DistributionalRewardModel, ModelConfig

    qcfg = ModelConfig(backbone="none", feature_dim=D, attributes=["a"], head="ridge", gate="fixed", fixed_weights=[1.0])
    DistributionalRewardModel(qcfg, torch.randn(1, 1, D), torch.randn(1, 1)).save_pretrained(tmp_path / "qrm")
    assert isinstance(load_reward_model(tmp_path / "qrm"), DistributionalRewardModel)


def test_load_errors_are_clear(tmp_path):
    m = make_model()
    p = tmp_path / "ens"
    m.save_pretrained(p)
    cfg = json.loads((p / "config.json").read_text())
    cfg["n_members"] = 6
    reseal(p, cfg)
    with pytest.raises(ValueError, match=r"'heads.coef' has shape \(5, 8\), config.json implies \(6, 8\)"):
        EnsembleRewardModel.from_pretrained(p)
    cfg["n_members"], cfg["colour"] = 5, "red"
    reseal(p, cfg)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        EnsembleRewardModel.from_pretrained(p)
    cfg["model_type"] = "mystery"
    del cfg["colour"]
    reseal(p, cfg)
    with pytest.raises(ValueError, match="unknown model_type 'mystery'"):
        load_reward_model(p)
    (p / "model.safetensors").unlink()
    (p / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FileNotFoundError, match="pickle files are refused"):
        EnsembleRewardModel.from_pretrained(p)


def test_evaluate_pairs_counts_ties_as_wrong_and_groups():
    m = make_model(N=3)
    Xc, Xr = torch.randn(6, D), torch.randn(6, D)
    Xr[0] = Xc[0]  # a tie
    pairs = [PreferencePair("p", "c", "r", source="a" if i < 3 else "b", id=str(i)) for i in range(6)]
    res = evaluate_pairs(m, pairs, (Xc, Xr))
    mc, mr = m.score_features(Xc).mean, m.score_features(Xr).mean
    expect = (mc > mr).double()
    assert expect[0] == 0
    assert res["accuracy"] == pytest.approx(float(expect.mean()))
    assert res["by_source"]["b"]["accuracy"] == pytest.approx(float(expect[3:].mean()))
    assert len(res["member_accuracy"]) == 3


# ---------------------------------------------------------------------------- bootstrap QRM
class SkQuantile:
    """An exact linear quantile regression per (attribute, level) -- scikit-learn's LP
    solver -- with the QuantileHeads interface, so the decomposition is tested on its own."""

    def __init__(self, levels, alpha, device=None):
        self.levels, self.alpha = levels, alpha

    def fit(self, X, y, attribute=None, index=None, n_attributes=None):
        from sklearn.linear_model import QuantileRegressor

        X = np.asarray(X)
        t = as_long_targets(X.shape[0], y, attribute, index, n_attributes)
        M, K = t.n_attributes, len(self.levels)
        self.coef_, self.intercept_ = np.zeros((M, K, X.shape[1])), np.zeros((M, K))
        for m in range(M):
            s = (t.attribute == m).numpy()
            Xm, ym = X[t.index.numpy()[s]], t.y.numpy()[s]
            for k, tau in enumerate(np.asarray(self.levels)):
                r = QuantileRegressor(quantile=float(tau), alpha=self.alpha, solver="highs").fit(Xm, ym)
                self.coef_[m, k], self.intercept_[m, k] = r.coef_, r.intercept_
        return self


def noise_sd(x: np.ndarray) -> np.ndarray:
    return 0.05 + 0.5 * np.abs(x)


def feat(x: np.ndarray) -> np.ndarray:
    return np.c_[x, np.abs(x)]


@pytest.fixture(scope="module")
def boot_qrm():
    """y = x + (0.05 + 0.5|x|) eps: known heteroscedastic aleatoric noise; 600 items in
    [-1, 0.4] but only 12 in (0.4, 1]: the right end is where data is scarce."""
    rng = np.random.default_rng(0)
    x = np.r_[rng.uniform(-1, 0.4, 600), rng.uniform(0.4, 1, 12)]
    y = x + noise_sd(x) * rng.standard_normal(len(x))
    levels = torch.linspace(0, 1, 11, dtype=torch.float64)[1:-1]
    return BootstrapQuantileHeads(n_boot=12, levels=levels, alpha=0.0, base=SkQuantile, seed=0).fit(feat(x), y)


def test_total_variance_split_adds_up_exactly(boot_qrm):
    g = np.linspace(-1, 1, 21)
    dec = boot_qrm.decompose(feat(g))
    assert dec["total"].shape == (21, 1)
    assert torch.allclose(dec["total"], dec["aleatoric"] + dec["epistemic"], rtol=0, atol=1e-12)
    assert bool((dec["epistemic"] >= 0).all()) and bool((dec["aleatoric"] >= 0).all())
    # total is the variance of the equal-weight mixture of the members: check by sampling it
    dist = boot_qrm.member_distributions(feat(np.array([0.9])))  # [1, 1, B, K]
    gen = torch.Generator().manual_seed(0)
    draws = dist.sample(20000, generator=gen)[0, 0]  # [B, 20000]: every member equally often
    mc = float(draws.reshape(-1).var(unbiased=False))
    assert mc == pytest.approx(float(dec["total"][-2, 0]), rel=0.03)


def test_decomposition_puts_the_spread_where_it_belongs(boot_qrm):
    g = np.linspace(-0.95, 0.95, 39)
    dec = {k: v[:, 0].numpy() for k, v in boot_qrm.decompose(feat(g)).items()}
    # aleatoric follows the known noise variance (shape), low at 0 and high at both ends
    assert spearmanr(dec["aleatoric"], noise_sd(g) ** 2).statistic > 0.9
    i_mid, i_lo, i_hi = 19, 1, 37  # x = 0, -0.9, +0.9
    assert dec["aleatoric"][i_lo] > 20 * dec["aleatoric"][i_mid]
    # same true noise at -0.9 and +0.9: the aleatoric parts agree within a factor 2 ...
    assert 0.5 < dec["aleatoric"][i_hi] / dec["aleatoric"][i_lo] < 2
    # ... while the epistemic part is far larger where data is scarce
    assert dec["epistemic"][i_hi] > 2.5 * dec["epistemic"][i_lo]
    # and aleatoric dominates where data is plentiful
    assert dec["aleatoric"][i_lo] > 10 * dec["epistemic"][i_lo]


def test_bootstrap_resamples_whole_items():
    """An item's raters travel together: a member either has all of an item's targets or none."""
    seen = []

    class Recorder(SkQuantile):
        def fit(self, X, y, attribute=None, index=None, n_attributes=None):
            seen.append(np.asarray(index))
            self.coef_, self.intercept_ = np.zeros((1, 3, 1)), np.zeros((1, 3))
            return self

    X = np.arange(5.0)[:, None]
    idx = np.repeat(np.arange(5), 4)  # 4 raters per item
    BootstrapQuantileHeads(n_boot=3, levels=[0.25, 0.5, 0.75], base=Recorder).fit(
        X, np.random.default_rng(0).random(20), attribute=np.zeros(20, int), index=idx, n_attributes=1
    )
    for ix in seen:
        counts = np.bincount(ix, minlength=5)
        assert len(ix) == 20 and np.all(counts % 4 == 0)
    assert any(len(np.unique(ix)) < 5 for ix in seen)


def test_bootstrap_sample_weight_follows_its_rows():
    """Aggregated targets (distinct score + rater count) keep their weights through the resampling."""
    seen = []

    class Recorder(SkQuantile):
        def fit(self, X, y, attribute=None, index=None, n_attributes=None, sample_weight=None):
            seen.append((np.asarray(index), np.asarray(y), np.asarray(sample_weight)))
            self.coef_, self.intercept_ = np.zeros((1, 3, 1)), np.zeros((1, 3))
            return self

    X = np.arange(5.0)[:, None]
    idx = np.repeat(np.arange(5), 3)  # 3 distinct scores per item
    y = np.tile([0.0, 0.5, 1.0], 5)
    w = 10.0 * idx + 2 * y + 1  # a weight that identifies its row
    BootstrapQuantileHeads(n_boot=3, levels=[0.25, 0.5, 0.75], base=Recorder).fit(
        X, y, attribute=np.zeros(15, int), index=idx, n_attributes=1, sample_weight=w
    )
    for ix, yy, ww in seen:
        assert np.array_equal(ww, 10.0 * ix + 2 * yy + 1)
    with pytest.raises(ValueError, match="long-format"):
        BootstrapQuantileHeads(n_boot=1, base=Recorder).fit(X, np.zeros(5), sample_weight=np.ones(5))
    with pytest.raises(ValueError, match=r"sample_weight must be \[L\]"):
        BootstrapQuantileHeads(n_boot=1, base=Recorder).fit(X, y, attribute=np.zeros(15, int), index=idx, sample_weight=np.ones(3))


def test_with_project_quantile_heads():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    X = np.c_[x, np.abs(x[:, 1])]  # the noise scale is linear in the features
    y = x[:, 0] + (0.2 + np.abs(x[:, 1])) * rng.standard_normal(300)
    bq = BootstrapQuantileHeads(n_boot=3, alpha=1e-3, seed=0).fit(X, y)
    dec = bq.decompose(X[:40])
    assert bq.coef_.shape == (3, 1, 19, 3)
    assert torch.allclose(dec["total"], dec["aleatoric"] + dec["epistemic"], atol=1e-10)
    assert spearmanr(dec["aleatoric"][:, 0], np.abs(x[:40, 1])).statistic > 0.8


# ---------------------------------------------------------------------------- Figure 6
def test_disagreement_numbers_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    n, N = 60, 5
    base_c, base_r = rng.normal(size=n), rng.normal(size=n)
    shifts = rng.normal(size=N)
    # section "shift": members are translations of one another -> zero margin variance
    C = np.c_[base_c][:, [0] * N] + shifts
    R = np.c_[base_r][:, [0] * N] + shifts
    # section "noisy": independent member noise
    C[30:] += rng.normal(scale=0.5, size=(30, N))
    sections = ["shift"] * 30 + ["noisy"] * 30
    out = ensemble_disagreement(C, R, sections, tmp_path / "fig6.png")
    s, z = out["sections"]["shift"], out["sections"]["noisy"]
    assert s["var_margin"]["max"] == pytest.approx(0.0, abs=1e-12)
    assert s["sign_disagreement"] == 0.0
    assert s["var_chosen"]["mean"] == pytest.approx(np.var(shifts, ddof=1))
    assert z["var_margin"]["mean"] == pytest.approx(float(np.var(C[30:] - R[30:], axis=1, ddof=1).mean()))
    assert z["var_margin"]["min"] > 0
    assert (tmp_path / "fig6.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="N >= 2"):
        ensemble_disagreement(C[:, :1], R[:, :1], sections)


# ---------------------------------------------------------------------------- config
def test_config_selects_the_ensemble(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("model: ensemble\nensemble:\n  n_members: 4\n  bootstrap: true\n")
    cfg = load_config(TrainConfig, p, ["ensemble.lr=0.02"])
    assert cfg.model == "ensemble" and cfg.ensemble.n_members == 4 and cfg.ensemble.bootstrap
    assert cfg.ensemble.lr == 0.02
    assert load_config(TrainConfig, None).model == "qrm"
    p.write_text("ensemble:\n  members: 4\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['ensemble.members'\]"):
        load_config(TrainConfig, p)


def test_train_ensemble_wiring(tmp_path, monkeypatch):
    """``distrm train`` with model: ensemble: data -> features -> heads -> saved, loadable model
    (backbone and feature extraction replaced by a deterministic stand-in)."""
    from distrm.cli import train as cli_train
    from distrm.training.bt_ensemble import train_ensemble

    Xc, Xr, _ = bt_data(400, 5)
    pairs = [PreferencePair(f"p{i}", f"c{i}", f"r{i}", source="syn", id=str(i)) for i in range(400)]
    stand_in_backbone(monkeypatch, {**{f"c{i}": Xc[i] for i in range(400)}, **{f"r{i}": Xr[i] for i in range(400)}}, pairs=pairs)
    out = tmp_path / "run"
    cfg = load_config(TrainConfig, cli_train.default_config_path(), [
        "model=ensemble", f"output_dir={out}", "ensemble.n_members=3", "ensemble.epochs=40", "ensemble.lr=0.05", "progress=false",
    ])
    model = train_ensemble(cfg)
    log = json.loads((out / "train_log.json").read_text())
    assert log["train_pair_accuracy"] > 0.75 and len(log["member_train_accuracy"]) == 3
    loaded = load_reward_model(out)
    assert isinstance(loaded, EnsembleRewardModel) and loaded.config.backbone_identity == "fake@1"
    assert torch.equal(loaded.score_features(Xc).members, model.score_features(Xc).members)
