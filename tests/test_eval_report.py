"""The pairs driver on a RewardBench-format file with a saved model (features stubbed by a
text hash, so no backbone is needed), the calibration grouping, and the HTML report
(rendered in headless Chromium when it is installed)."""

import argparse
import hashlib
import json
import re

import numpy as np
import pytest
import torch

from distrm.distribution import default_levels
from distrm.eval import common
from distrm.eval.calibration import MultiRaterItems, grouped_metrics, select_attribute
from distrm.eval.pairs import run_pairs
from distrm.eval.report import bin_probabilities, build_report, find_chromium, screenshot
from distrm.heads.gate import GatingNetwork
from distrm.models.qrm import DistributionalRewardModel, ModelConfig

D = 8


def fake_features(model, prompts, responses, store=None, batch_size=32):
    """Deterministic features from the text; dimension 0 is the response length."""
    rows = []
    for p, r in zip(prompts, responses):
        seed = int(hashlib.sha256((str(p) + "\x00" + r).encode()).hexdigest()[:8], 16)
        v = np.random.default_rng(seed).normal(size=D)
        v[0] = len(r) / 10
        rows.append(v)
    X = torch.as_tensor(np.array(rows))
    return X, X.clone()


def saved_model(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="none", feature_dim=D, attributes=["helpful", "safe"], levels=default_levels(19, torch.float64).tolist(),
        gate="learned", gate_hidden=16, gate_n_hidden=3, debias_source=None,
    )  # fmt: skip
    coef = torch.zeros(2, 19, D)
    coef[0, :, 0] = 1.0  # attribute "helpful" grows with length
    coef[1, :, 1] = torch.linspace(-2, 2, 19)  # "safe": spread driven by feature 1
    g = GatingNetwork(D, 2, 16, 3).eval()
    m = DistributionalRewardModel(cfg, coef, torch.zeros(2, 19), g)
    m.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_run_pairs_and_report(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "features", fake_features)
    path = saved_model(tmp_path)
    rows = [
        {"prompt": f"q{i}", "chosen": "x" * (20 + i), "rejected": "y" * (10 + (i % 3) * 10), "subset": s, "id": i}
        for i, s in enumerate(["alpacaeval-easy"] * 6 + ["math-prm"] * 6 + ["refusals-dangerous"] * 4)
    ]
    f = tmp_path / "rb.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    res = run_pairs([str(path)], sets=[], files=[str(f)], risks=["cvar:alpha=0.1"], n_examples=3, log=lambda s: None)
    assert res["weighting"] == "rewardbench"
    names = [r["name"] for r in res["rows"]]
    assert names[-1] == "longer response wins" and any("cvar" in n for n in names)
    length = res["rows"][-1]["result"]
    # chosen lengths 20+i vs 10/20/30: count by hand
    want = sum(20 + i > 10 + (i % 3) * 10 for i in range(16))
    assert sum(c["correct"] for c in length["subsets"].values()) == want
    assert sum(c["ties"] for c in length["subsets"].values()) == sum(20 + i == 10 + (i % 3) * 10 for i in range(16))
    assert len(next(iter(res["examples"].values()))) == 3
    pj = common.write_json(tmp_path / "pairs.json", res)

    # calibration grouping on the same model
    model = common.load_any_model(path)
    items = MultiRaterItems(["p"] * 5, [f"r{i}" for i in range(5)], ["safe", "safe", "helpful", "helpful", "nope"],
                            [[0.1, 0.9], [0.5, 0.5, 0.6], [1.0, 2.0], [0.0, 0.0], [1.0, 1.0]], ["s1"] * 5)  # fmt: skip
    X, P = fake_features(model, items.prompts, items.responses)
    out = model.score_features(X, P, items.responses)
    dist, keep = select_attribute(out.attributes, out.attribute_names, items.attributes)
    assert keep.tolist() == [True, True, True, True, False]
    cal = grouped_metrics(dist, items, keep)
    assert set(cal) == {"s1/safe", "s1/helpful"} and cal["s1/safe"]["n_items"] == 2
    cj = common.write_json(tmp_path / "cal.json", {"kind": "calibration", "results": {"QRM": cal}, "metrics_note": "x", "scale": "y"})

    html = build_report([pj, cj])
    assert html.count("data:image/png;base64,") >= 3 + 1 + 2  # examples, bars, reliability + scatter
    assert "RewardBench weighting" in html and "cvar:alpha=0.1" in html
    assert not re.search(r"src=['\"](?!data:)", html)  # self-contained: no external images
    assert "Variance per section" in html
    (tmp_path / "r.html").write_text(html)
    if find_chromium():
        png = screenshot(tmp_path / "r.html", tmp_path / "r.png", height=900)
        assert png.stat().st_size > 10_000


def test_bin_probabilities_exact():
    from distrm.distribution import RewardDistribution

    # uniform on [0, 1] at fine levels: bins of width 0.25 hold 0.25 each (tails negligible)
    lv = torch.linspace(0, 1, 401, dtype=torch.float64)[1:-1]
    d = RewardDistribution.from_quantiles(lv[None].clone(), lv)
    p = bin_probabilities(d, np.array([-0.1, 0.25, 0.5, 0.75, 1.1]))
    assert p == pytest.approx([0.25, 0.25, 0.25, 0.25], abs=1e-9)


def test_cli_registers_eval_and_report():
    from distrm.cli import eval as ev
    from distrm.cli import report as rp
    from distrm.config import config_from_args

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    ev.register(sub)
    rp.register(sub)
    a = parser.parse_args(["eval", "pairs", "--sets", "none", "--file", "x.jsonl", "--risk", "cvar:alpha=0.1", "--no-length"])
    cfg = config_from_args(ev.EvalPairsConfig, a)
    assert a.func.__name__ == "run_pairs_cmd" and cfg.risk == ["cvar:alpha=0.1"] and cfg.file == ["x.jsonl"]
    assert cfg.sets == "none" and cfg.length is False
    a = parser.parse_args(["report", "a.json", "-o", "r.html"])
    assert a.func.__name__ == "run_report"


def test_ensemble_variance_per_section_in_pairs_json_and_report(tmp_path, monkeypatch):
    """An ensemble's per-pair member variances (chosen and margin) per section, equal to a
    hand computation, and their histograms in the report."""
    from types import SimpleNamespace

    from distrm.models.bt_ensemble import EnsembleRewardModel

    monkeypatch.setattr(common, "features", fake_features)
    W = torch.as_tensor(np.random.default_rng(1).normal(size=(5, D)))
    EnsembleRewardModel.from_heads(SimpleNamespace(coef_=W)).save_pretrained(tmp_path / "ens")
    rows = [{"prompt": f"q{i}", "chosen": "x" * (5 + i), "rejected": "y" * 7, "subset": s, "id": i}
            for i, s in enumerate(["alpacaeval-easy"] * 5 + ["refusals-dangerous"] * 4)]  # fmt: skip
    f = tmp_path / "rb.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    res = run_pairs([str(tmp_path / "ens")], sets=[], files=[str(f)], n_examples=0, log=lambda s: None)
    (v,) = res["variance"].values()
    assert v["kind"] == "ensemble" and v["sections"] == ["Chat"] * 5 + ["Safety"] * 4
    Xc, _ = fake_features(None, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    Xr, _ = fake_features(None, [r["prompt"] for r in rows], [r["rejected"] for r in rows])
    C, R = (Xc @ W.T).numpy(), (Xr @ W.T).numpy()
    assert np.allclose(v["var_chosen"], C.var(1, ddof=1), rtol=1e-6)
    assert np.allclose(v["var_margin"], (C - R).var(1, ddof=1), rtol=1e-6)
    assert v["summary"]["Safety"]["n"] == 4
    assert v["summary"]["Safety"]["var_margin"]["mean"] == pytest.approx((C - R)[5:].var(1, ddof=1).mean(), rel=1e-6)
    html = build_report([common.write_json(tmp_path / "pairs.json", res)])
    assert "Variance per section" in html and "mean var (margin)" in html and "members split on the sign" in html


def test_variance_payload_point_estimate_and_quantile():
    from distrm.distribution import RewardDistribution
    from distrm.eval.pairs import variance_payload

    point = RewardDistribution(values=torch.tensor([[1.0], [2.0]]), kind="ensemble")  # ridge+gate: one member
    v = variance_payload(point, point, ["Chat", "Safety"])
    assert v["var_chosen"] == [0.0, 0.0] and v["var_margin"] is None and v["summary"]["Safety"]["n"] == 1
    lv = default_levels(19, torch.float64)
    q = RewardDistribution.from_quantiles(torch.stack([lv, 2 * lv]), lv)
    v = variance_payload(q, q, ["Chat", "Chat"])
    assert v["var_chosen"][1] == pytest.approx(4 * v["var_chosen"][0]) and v["summary"]["Chat"]["n"] == 2


def test_calibration_uses_attributes_before_the_length_debias():
    """Raters scored the attribute: calibration compares the heads' prediction, not the
    ranking-time shift r_m - p_m v(y)."""
    from distrm.eval.calibration import rated_attributes

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="none", feature_dim=D, attributes=["a", "b"], levels=default_levels(19, torch.float64).tolist(),
                      gate="learned", gate_hidden=16, gate_n_hidden=3, debias_source="length")  # fmt: skip
    coef = torch.randn(2, 19, D)
    m = DistributionalRewardModel(cfg, coef, torch.zeros(2, 19), GatingNetwork(D, 2, 16, 3).eval(), debias=torch.tensor([0.0, 0.9]))
    X = torch.randn(4, D, dtype=torch.float64)
    resp = ["one two three", "a " * 50, "x", "y z"]
    raw = rated_attributes(m, X, resp).values
    shifted = m.attribute_distribution(X, resp).values
    assert torch.allclose(raw[:, 0], shifted[:, 0])  # p = 0: unchanged
    assert not torch.allclose(raw[:, 1], shifted[:, 1])  # p = 0.9: the served attribute is shifted by 0.9 v(y)
    assert torch.allclose(raw, torch.einsum("nd,mkd->nmk", X, coef.double()).sort(-1).values)
