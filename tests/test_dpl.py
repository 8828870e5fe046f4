"""DPL heads (distrm.heads.dpl) and the DPL model type (distrm.models.dpl): a known synthetic
hidden-context case recovered, the output distribution's moments, and the folder format."""

from __future__ import annotations

import json

import pytest
import torch
from scipy.stats import spearmanr

from distrm.heads.baselines import BTHead
from distrm.heads.dpl import CategoricalDPLHeads, MeanVarianceDPLHeads, discrete_cell_quantiles, normal_cell_quantiles
from distrm.models.auto import AutoRewardModel
from distrm.models.dpl import DPLRewardModel

from conftest import reseal


def hidden_context_pairs(n_items: int = 300, n_pairs: int = 3000, d: int = 8, seed: int = 0, beta: float = 8.0):
    """Two annotator groups, one hidden. Feature 1 is a quality both agree on; feature 0 is a
    contested property present in 30% of the items (0 elsewhere): group A's utility is
    x1 + x0, group B's x1 - x0, each comparison judged by a random group (Bradley-Terry with
    slope ``beta``, the same group for both responses). The groups disagree on an item by
    |u_A - u_B| = 2 x0: nowhere on 70% of the items, a lot on the rest. Features 2.. are noise.
    Returns (X [n_items, d], chosen index, rejected index, disagreement [n_items])."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n_items, d, generator=g, dtype=torch.float64)
    contested = torch.rand(n_items, generator=g) < 0.3
    X[:, 0] = torch.where(contested, 0.5 + torch.rand(n_items, generator=g, dtype=torch.float64), torch.zeros(n_items, dtype=torch.float64))
    X[:, 1] = 0.5 * torch.randn(n_items, generator=g, dtype=torch.float64)
    ia, ib = torch.randint(0, n_items, (n_pairs,), generator=g), torch.randint(0, n_items, (n_pairs,), generator=g)
    keep = ia != ib
    ia, ib = ia[keep], ib[keep]
    group = torch.randint(0, 2, (len(ia),), generator=g) * 2 - 1
    u_a, u_b = X[ia, 1] + group * X[ia, 0], X[ib, 1] + group * X[ib, 0]
    a_wins = torch.rand(len(ia), generator=g, dtype=torch.float64) < torch.sigmoid(beta * (u_a - u_b))
    return X, torch.where(a_wins, ia, ib), torch.where(a_wins, ib, ia), 2 * X[:, 0]


def bimodality_coefficient(p: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """Sarle's (skewness^2 + 1) / kurtosis of each row's discrete distribution: 1 for two
    equal atoms, 5/9 for a uniform, 1/3 for a normal; above 5/9 reads as bimodal."""
    m = p @ atoms
    c = atoms[None, :] - m[:, None]
    var = (p * c**2).sum(-1)
    return (((p * c**3).sum(-1) / var**1.5) ** 2 + 1) / ((p * c**4).sum(-1) / var**2)


@pytest.fixture(scope="module")
def synthetic():
    X, ch, rj, dis = hidden_context_pairs()
    Xt, cht, rjt, _ = hidden_context_pairs(seed=1)
    return X, ch, rj, dis, (Xt[cht], Xt[rjt])


def test_mean_variance_sigma_tracks_the_hidden_disagreement(synthetic, capsys):
    X, ch, rj, dis, (tc, tr) = synthetic
    mv = MeanVarianceDPLHeads(l2=1e-3).fit(X[ch], X[rj])
    mu, sigma = mv.predict_params(X)
    rho = spearmanr(sigma.numpy(), dis.numpy()).correlation
    assert rho > 0.5, f"Spearman(sigma, group disagreement) = {rho:.3f}"
    assert spearmanr(mu.numpy(), X[:, 1].numpy()).correlation > 0.9  # the mean is the agreed quality
    # the baseline: a plain BT head on the same pairs; DPL ranks as well and explains the
    # held-out preferences better (higher likelihood: it knows where they are a coin flip)
    bt = BTHead(l2=1e-3).fit(X[ch], X[rj])
    acc_bt = float(((tc - tr) @ bt.coef_ > 0).double().mean())
    m_c, m_r = mv.predict_params(tc)[0], mv.predict_params(tr)[0]
    acc_mv = float((m_c > m_r).double().mean())
    ll_bt = float(torch.nn.functional.logsigmoid((tc - tr) @ bt.coef_).mean())
    ll_mv = float(torch.log(mv.predict_pair_proba(tc, tr)).mean())
    with capsys.disabled():
        print(f"\nhidden context: Spearman(sigma, disagreement) {rho:.3f}; held-out accuracy BT {acc_bt:.3f} vs DPL "
              f"mean-variance {acc_mv:.3f}; log-likelihood per pair BT {ll_bt:.4f} vs DPL {ll_mv:.4f}")
    assert acc_mv >= acc_bt - 0.02
    assert ll_mv > ll_bt


def test_categorical_is_bimodal_where_the_groups_disagree(synthetic, capsys):
    X, ch, rj, dis, (tc, tr) = synthetic
    cat = CategoricalDPLHeads(n_bins=10, l2=1e-3, entropy_weight=0.1, init_std=0.1, max_iter=300).fit(X[ch], X[rj])
    bc = bimodality_coefficient(cat.predict_proba(X), cat.atoms_)
    hi, lo = bc[dis > 0], bc[dis == 0]
    frac_hi, frac_lo = float((hi > 5 / 9).double().mean()), float((lo > 5 / 9).double().mean())
    bt = BTHead(l2=1e-3).fit(X[ch], X[rj])
    acc_bt = float(((tc - tr) @ bt.coef_ > 0).double().mean())
    acc_cat = float((cat.predict_mean(tc) > cat.predict_mean(tr)).double().mean())
    with capsys.disabled():
        print(f"\nhidden context, categorical: bimodal (coefficient > 5/9) on {frac_hi:.0%} of contested items vs "
              f"{frac_lo:.0%} of the others (mean coefficient {float(hi.mean()):.3f} vs {float(lo.mean()):.3f}); "
              f"held-out accuracy {acc_cat:.3f} (BT {acc_bt:.3f})")
    assert frac_hi >= 0.8 and float(hi.mean()) > float(lo.mean()) + 0.1
    assert acc_cat >= acc_bt - 0.03
    # its spread also tracks the disagreement
    assert spearmanr(cat.predict_dist(X).std().numpy(), dis.numpy()).correlation > 0.5


def test_output_distributions_have_the_heads_exact_moments():
    z = normal_cell_quantiles(100)
    from distrm.distribution import RewardDistribution
    from distrm.heads.dpl import cell_levels

    d = RewardDistribution(values=2.0 + 3.0 * z, levels=cell_levels(100))
    assert float(d.mean()) == pytest.approx(2.0, abs=1e-12) and float(d.std()) == pytest.approx(3.0, abs=1e-12)
    assert float(d.cvar(0.1)) == pytest.approx(2.0 - 3.0 * 1.7550, abs=0.02)  # normal CVaR_0.1 = mu - 1.755 sigma
    p = torch.tensor([[0.2, 0.0, 0.5, 0.3], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    atoms = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=torch.float64)
    q = RewardDistribution(values=discrete_cell_quantiles(p, atoms, 100), levels=cell_levels(100))
    assert q.mean().tolist() == pytest.approx((p @ atoms).tolist(), abs=1e-12)
    assert float(q.quantile(0.1)[0]) == 0.0 and float(q.quantile(0.5)[0]) == pytest.approx(2 / 3)
    assert q.values[1].tolist() == pytest.approx([1 / 3] * 100)


def test_bad_input_refused():
    with pytest.raises(ValueError, match="must both be"):
        MeanVarianceDPLHeads().fit(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="n_bins"):
        CategoricalDPLHeads(n_bins=1).fit(torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="non-finite"):
        MeanVarianceDPLHeads().fit(torch.full((3, 2), float("nan")), torch.ones(3, 2))


@pytest.mark.parametrize("head", ["mean_variance", "categorical"])
def test_save_reload_round_trip_and_load_refusals(head, synthetic, tmp_path):
    X, ch, rj, _, _ = synthetic
    h = (MeanVarianceDPLHeads(l2=1e-2, max_iter=50) if head == "mean_variance"
         else CategoricalDPLHeads(n_bins=6, l2=1e-2, max_iter=50, support_min=-1, support_max=2))
    h.fit(X[ch][:500], X[rj][:500])
    model = DPLRewardModel.from_heads(h)
    want = model.score_features(X[:20])
    folder = model.save_pretrained(tmp_path / "m")
    back = AutoRewardModel.from_pretrained(folder)
    assert isinstance(back, DPLRewardModel) and back.config.head == head and back.kind == "quantile"
    got = back.score_features(X[:20])
    assert torch.equal(got.reward.values, want.reward.values)
    assert got.mean.tolist() == pytest.approx(want.mean.tolist(), abs=0)
    assert back.describe()["head"] == head

    cfg = json.loads((folder / "config.json").read_text())
    bad = dict(cfg, head="gaussian")
    reseal(folder, bad)
    with pytest.raises(ValueError, match=r"config.json: head must be one of"):
        AutoRewardModel.from_pretrained(folder)
    reseal(folder, dict(cfg, feature_dim=cfg["feature_dim"] + 1))
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'heads.coef' has shape"):
        AutoRewardModel.from_pretrained(folder)
    if head == "categorical":
        reseal(folder, dict(cfg, atoms=[0.0, 0.5, 0.5, 1.0, 2.0, 3.0]))
        with pytest.raises(ValueError, match="atoms must be"):
            AutoRewardModel.from_pretrained(folder)
    else:
        reseal(folder, dict(cfg, atoms=[0.0, 1.0]))
        with pytest.raises(ValueError, match="atoms apply to the categorical head only"):
            AutoRewardModel.from_pretrained(folder)


def test_nonfinite_weights_refused(synthetic, tmp_path):
    from safetensors.torch import load_file, save_file

    from distrm.models.base import write_manifest

    X, ch, rj, _, _ = synthetic
    folder = DPLRewardModel.from_heads(MeanVarianceDPLHeads(max_iter=20).fit(X[ch][:200], X[rj][:200])).save_pretrained(tmp_path / "m")
    t = load_file(str(folder / "model.safetensors"))
    t["heads.coef"][1, 0] = float("inf")
    save_file(t, str(folder / "model.safetensors"))
    write_manifest(folder, "dpl")
    with pytest.raises(ValueError, match="non-finite"):
        AutoRewardModel.from_pretrained(folder)


def test_train_config_section(tmp_path):
    from importlib import resources

    from distrm.config import TrainConfig, load_config

    cfg = load_config(TrainConfig, str(resources.files("distrm") / "configs" / "dpl-minilm.yaml"),
                      ["dpl.head=categorical", "dpl.n_bins=12"])
    assert cfg.model == "dpl" and cfg.dpl.head == "categorical" and cfg.dpl.n_bins == 12
    with pytest.raises(ValueError, match=r"dpl.head: expected one of \['mean_variance', 'categorical'\]"):
        load_config(TrainConfig, None, ["dpl.head=gaussian"])
    with pytest.raises(ValueError, match="n_bins must be >= 2"):
        load_config(TrainConfig, None, ["dpl.n_bins=1"])


def test_train_dpl_wiring(synthetic, tmp_path, monkeypatch):
    """``distrm train`` with model: dpl: data -> features -> l2 by CV -> head -> saved, loadable
    model and a train log beside the BT baseline (backbone and feature extraction replaced by
    a deterministic stand-in, the hidden-context features as the 'responses')."""
    from conftest import stand_in_backbone

    from distrm.config import TrainConfig, load_config
    from distrm.data.records import PreferencePair
    from distrm.training.dpl import train_dpl

    X, ch, rj, _, _ = synthetic
    n = 600
    pairs = [PreferencePair(f"p{i % 150}", f"c{i}", f"r{i}", source="syn", id=str(i)) for i in range(n)]
    table = {**{f"c{i}": X[ch[i]].numpy() for i in range(n)}, **{f"r{i}": X[rj[i]].numpy() for i in range(n)}}
    stand_in_backbone(monkeypatch, table, pairs=pairs)
    out = tmp_path / "run"
    cfg = load_config(TrainConfig, None, ["model=dpl", f"output_dir={out}", "dpl.max_iter=100", "progress=false"])
    model = train_dpl(cfg)
    log = json.loads((out / "train_log.json").read_text())
    assert log["l2_cv"]["l2"] == model.config.training["l2"] and log["data"]["pairs"] == n
    assert log["train_pair_accuracy"] > 0.7 and log["bt_baseline"]["train_pair_accuracy"] > 0.7
    assert log["train_log_likelihood_per_pair"] > log["bt_baseline"]["train_log_likelihood_per_pair"]
    loaded = AutoRewardModel.from_pretrained(out)
    assert isinstance(loaded, DPLRewardModel) and loaded.config.backbone_identity == "fake@1"
    assert loaded.config.training_prompts  # recorded for eval's overlap count
    assert torch.equal(loaded.score_features(X).reward.values, model.score_features(X).reward.values)
