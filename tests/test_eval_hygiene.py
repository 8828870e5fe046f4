"""Evaluation hygiene in ``distrm eval pairs``: rank AUROC of an uncertainty for the model's
wrong decisions (with a bootstrap interval), bootstrap intervals on every accuracy, the
evaluation prompts a model was trained on (recorded at training, counted, optionally dropped)
and the skipped / empty / identical pairs counted on screen."""

import json

import numpy as np
import pytest
from scipy.stats import norm

from distrm.data.records import PreferencePair
from distrm.data.splits import pack_prompt_digests, prompt_digest, unpack_prompt_digests
from distrm.eval.metrics import auroc, auroc_with_ci
from distrm.eval.pairs import (
    UNKNOWN_TRAINING_PROMPTS,
    Counts,
    accuracy_cis,
    format_table,
    pair_hygiene,
    run_pairs,
    summarize,
)


# ------------------------------------------------------------------ AUROC
def test_auroc_known_values_and_brute_force():
    y = np.array([0, 0, 0, 1, 1], bool)
    assert auroc([1, 2, 3, 4, 5], y) == 1.0  # every wrong pair more uncertain: perfect
    assert auroc([5, 4, 3, 2, 1], y) == 0.0  # reversed
    assert auroc([7, 7, 7, 7, 7], y) == 0.5  # a constant says nothing: every comparison a tie
    assert auroc([1, 2, 3, 3, 5], y) == pytest.approx((2.5 + 3) / 6)  # one tie between classes counts half
    rng = np.random.default_rng(3)
    for _ in range(5):
        s = rng.integers(0, 6, 150).astype(float)  # many ties
        y = rng.random(150) < 0.35
        brute = np.mean([(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]])
        assert auroc(s, y) == pytest.approx(brute, abs=1e-12)


def test_auroc_undefined_is_reported_not_nan():
    assert auroc([1, 2, 3], [False, False, False]) is None
    r = auroc_with_ci([1, 2, 3], [True, True, True])
    assert r["auroc"] is None and r["ci"] is None and r["reason"] == "no right decisions"
    assert auroc_with_ci([1, 2], [False, False])["reason"] == "no wrong decisions"
    with pytest.raises(ValueError, match="NaN"):
        auroc([np.nan, 1.0], [True, False])


def test_auroc_interval_deterministic_and_covers_the_truth():
    rng = np.random.default_rng(0)
    s = rng.normal(size=300)
    y = rng.random(300) < norm.cdf(s)  # more uncertain -> more often wrong
    a, b = auroc_with_ci(s, y, seed=7), auroc_with_ci(s, y, seed=7)
    assert a == b and a["ci"][0] < a["auroc"] < a["ci"][1] and a["n_undefined"] == 0
    assert auroc_with_ci(s, y, seed=8)["ci"] != a["ci"]
    # coverage: positives ~ N(d, 1), negatives ~ N(0, 1) have AUROC Phi(d / sqrt 2)
    d = 0.6
    truth = norm.cdf(d / np.sqrt(2))
    hits = 0
    for k in range(60):
        r = np.random.default_rng(100 + k)
        yk = np.r_[np.ones(60, bool), np.zeros(90, bool)]
        sk = np.r_[r.normal(d, 1, 60), r.normal(0, 1, 90)]
        lo, hi = auroc_with_ci(sk, yk, n_boot=400, seed=k)["ci"]
        hits += lo <= truth <= hi
    assert 0.82 <= hits / 60 <= 1.0  # nominal 0.95


# ------------------------------------------------------------------ accuracy intervals
def test_accuracy_intervals_deterministic_and_cover():
    per = {"llmbar-natural": Counts(60, 3, 100), "llmbar-adver-manual": Counts(10, 0, 40), "hh-rlhf-harmless": Counts(5, 0, 10)}
    a = accuracy_cis(per, "plain", seed=1)
    assert a == accuracy_cis(per, "plain", seed=1)
    res = summarize(per, "plain")
    for s, c in per.items():
        lo, hi = a["subsets"][s]
        assert lo <= c.accuracy <= hi
    for sec, v in res["sections"].items():
        lo, hi = a["sections"][sec]
        assert lo <= v["accuracy"] <= hi
    assert a["overall"][0] <= res["overall"] <= a["overall"][1]
    # RewardBench weighting: the overall score's interval is recomputed through the weights
    rb = accuracy_cis({"math-prm": Counts(400, 0, 447), "hep-python": Counts(82, 0, 164), "alpacaeval-easy": Counts(90, 0, 100)},
                      "rewardbench")
    assert set(rb["sections"]) == {"Chat", "Reasoning"} and rb["overall"][0] < rb["overall"][1]
    # coverage of a binomial accuracy
    hits = 0
    for k in range(100):
        c = int(np.random.default_rng(k).binomial(120, 0.7))
        lo, hi = accuracy_cis({"s": Counts(c, 0, 120)}, "plain", n_boot=300, seed=k)["subsets"]["s"]
        hits += lo <= 0.7 <= hi
    assert 0.85 <= hits / 100 <= 1.0


def test_table_shows_intervals_and_full_subset_names():
    long = "a-subset-name-much-longer-than-twenty-seven-characters"
    per = {long: Counts(3, 0, 4), "other": Counts(1, 1, 2)}
    res = {**summarize(per, "plain"), "ci": accuracy_cis(per, "plain")}
    text = format_table([{"name": "m [mean]", "result": res}])
    assert long in text
    lo, hi = res["ci"]["overall"]
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in text
    assert "3/4 (75.0 [" in text and "95% percentile bootstrap interval" in text


# ------------------------------------------------------------------ data hygiene
def test_prompt_digests_canonical_and_checked():
    chat = [{"role": "system", "content": "be nice"}, {"role": "user", "content": " hi "}]
    assert prompt_digest("hi") == prompt_digest(chat) != prompt_digest("hi there")
    packed = pack_prompt_digests(["b", "a"], [PreferencePair("a", "x", "y", "s", "1")])
    assert len(packed) == 32 and unpack_prompt_digests(packed) == {prompt_digest("a"), prompt_digest("b")}
    with pytest.raises(ValueError, match="config.json.*multiple of 16"):
        unpack_prompt_digests(packed[:-1], "m/config.json")


def test_hygiene_counts():
    pairs = [PreferencePair("p", "a", "b", "s", "1"), PreferencePair("p", " ", "b", "s", "2"),
             PreferencePair("p", "same ", "same", "s", "3")]
    assert pair_hygiene(pairs) == {"empty_responses": 1, "identical_responses": 1}


def _write_rb(path, pairs, subset):
    path.write_text("\n".join(json.dumps({"prompt": p[0], "chosen": p[1], "rejected": p[2], "subset": subset}) for p in pairs))


def test_model_without_training_prompts(tiny_model, tmp_path, feature_store, capsys):
    """A model saved without its training prompts: said so on screen, and excluding refused."""
    from distrm.cli import main

    tiny_model.save_pretrained(tmp_path / "m")
    f = tmp_path / "rb.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": f"answer number {i}", "rejected": "no", "subset": "s"} for i in range(8)]
    rows += [{"prompt": "q", "chosen": "", "rejected": "x", "subset": "s"}, {"prompt": "q", "chosen": "same", "rejected": "same", "subset": "s"},
             {"prompt": "q", "chosen": None, "rejected": "x", "subset": "s"}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    capsys.readouterr()
    args = ["eval", "pairs", "--model", str(tmp_path / "m"), "--sets", "none", "--file", str(f), "--store", str(feature_store),
            "--output-dir", str(tmp_path / "o")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"QRM:m: {UNKNOWN_TRAINING_PROMPTS}" in out
    assert "rows read 11, skipped 1 (missing/non-text chosen: 1)" in out
    assert "empty responses 1, identical chosen/rejected 1" in out
    assert "uncertainty vs wrong decisions" in out and "quantile spread" in out
    res = json.loads((tmp_path / "o" / "pairs.json").read_text())
    assert res["data"]["rb"]["train_prompt_overlap"] is None and res["data"]["rb"]["hygiene"]["identical_responses"] == 1
    assert res["train_prompts"] == {"QRM:m": None}
    with pytest.raises(ValueError, match="no evaluated model records its training prompts"):
        run_pairs([str(tmp_path / "m")], sets=[], files=[str(f)], store=str(feature_store), exclude_train_overlap=True,
                  log=lambda s: None)


# ------------------------------------------------------------------ trained models (slow tier)
def _train_config(folder):
    from distrm.config import TrainConfig, from_dict
    from distrm.eval.common import train_config_of

    return from_dict(TrainConfig, train_config_of(folder), "train_log.json")


@pytest.mark.slow
def test_trainers_record_their_training_prompts(trained_qrm, trained_ensemble):
    from distrm.models.auto import AutoRewardModel
    from distrm.training.qrm import load_rated_training_data, load_training_data

    rated, pairs, _, _ = load_rated_training_data(_train_config(trained_qrm))
    assert AutoRewardModel.from_pretrained(trained_qrm).config.training_prompts == pack_prompt_digests(rated, pairs)
    _, pairs, _ = load_training_data(_train_config(trained_ensemble))
    assert AutoRewardModel.from_pretrained(trained_ensemble).config.training_prompts == pack_prompt_digests(pairs)


@pytest.mark.slow
def test_eval_pairs_counts_and_excludes_training_prompts(trained_qrm, trained_ensemble, feature_store, tmp_path, capsys):
    """An evaluation file holding 4 of the models' own training pairs and 16 held-out ones:
    the 4 are counted per model and set, dropped with --exclude-train-overlap; the screen shows
    the accuracy intervals and every uncertainty's AUROC."""
    from distrm.cli import main
    from distrm.data import registry
    from distrm.data.splits import split
    from distrm.training.qrm import load_training_data

    cfg = _train_config(trained_ensemble)
    _, train_pairs, _ = load_training_data(cfg)
    seen = [p for p in train_pairs if isinstance(p.prompt, str)][:4]
    src = seen[0].source
    name = next(n for n, d in registry.DATASETS.items() if d.name == src or n == src)
    held = [p for p in split(registry.load_pairs(name, data_dir=cfg.data.data_dir).records, "test", cfg.data.test_fraction)
            if isinstance(p.prompt, str)][:16]
    assert len(seen) == 4 and len(held) == 16
    f = tmp_path / "mixed.jsonl"
    _write_rb(f, [(p.prompt, p.chosen, p.rejected) for p in seen + held], "mixed")
    base = ["eval", "pairs", "--model", str(trained_ensemble), "--model", str(trained_qrm), "--sets", "none", "--file", str(f),
            "--store", str(feature_store), "--examples", "0", "--no-length"]
    capsys.readouterr()
    assert main([*base, "--output-dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "ensemble:model: 4 pairs share a prompt with its training data" in out
    assert "QRM:model: 4 pairs share a prompt with its training data" in out
    res = json.loads((tmp_path / "a" / "pairs.json").read_text())
    d = res["data"]["mixed"]
    assert d["n_pairs"] == 20 and d["train_prompt_overlap"] == 4 and d["excluded_train_overlap"] is None
    # every accuracy printed with its interval, and the intervals in the JSON
    row = res["rows"][0]["result"]
    lo, hi = row["ci"]["overall"]
    assert lo <= row["overall"] <= hi and f"{100 * row['overall']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in out
    # uncertainty AUROCs: the ensemble's member variance, the QRM's quantile spread, each with the margin reference
    assert "uncertainty vs wrong decisions" in out
    ens, qrm = res["uncertainty"]["ensemble:model"], res["uncertainty"]["QRM:model"]
    assert set(ens["what"]) == {"ensemble variance", "small margin (reference)"}
    assert set(qrm["what"]) == {"quantile spread", "small margin (reference)"}
    for rep in (ens, qrm):
        v = rep["sets"]["mixed"]
        for a in v["auroc"].values():
            if 0 < v["n_wrong"] < v["n"]:
                assert 0 <= a["ci"][0] <= a["auroc"] <= a["ci"][1] <= 1
            else:
                assert a["auroc"] is None and a["reason"]
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("mixed (20 pairs"))
    assert "ensemble variance" in line or "quantile spread" in line

    assert main([*base, "--exclude-train-overlap", "--output-dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "4 pairs seen in training excluded" in out
    d = json.loads((tmp_path / "b" / "pairs.json").read_text())["data"]["mixed"]
    assert d["n_pairs"] == 16 and d["excluded_train_overlap"] == 4 and d["train_prompt_overlap"] == 0


@pytest.mark.slow
def test_quantile_ensemble_reports_aleatoric_and_epistemic(trained_quantile_ensemble, feature_store, tmp_path):
    f = tmp_path / "rb.jsonl"
    _write_rb(f, [(f"How do I make tea, step {i}?", f"Boil water, steep {i} minutes.", "No.") for i in range(12)], "tea")
    res = run_pairs([str(trained_quantile_ensemble)], sets=[], files=[str(f)], store=str(feature_store), n_examples=0,
                    length_row=False, log=lambda s: None)
    rep = res["uncertainty"]["quantile_ensemble:model"]
    assert set(rep["what"]) == {"quantile spread", "aleatoric", "epistemic", "small margin (reference)"}
    assert rep["sets"]["rb"]["n"] == 12
