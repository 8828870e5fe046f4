"""RewardBench scoring against RewardBench's own code: v1 sections, the prior sets and
RewardBench 2 (best-of-4 and Ties), on the same per-subset accuracies / per-reply scores.

The reference is the installed ``rewardbench`` package (``pip install --no-deps
rewardbench==0.1.4``, as the README's test command does): its real
``rewardbench/utils.py`` (``calculate_scores_per_section``, ``reroll_and_score_dataset``,
``process_single_model``), ``rewardbench/constants.py`` and
``analysis/get_benchmark_results.py`` (``get_average_over_rewardbench``, the leaderboard's
overall score with the prior sets at half weight), executed from the installed files. They
are imported without running ``rewardbench/__init__`` (which pulls in fastchat, wandb and
every model class, and fails on transformers 5): the package is registered as a bare
namespace, ``rewardbench.models`` as a stub with an empty ``REWARD_MODEL_CONFIG`` and, only
when fschat is not installed, ``fastchat.conversation`` as a stub (utils only uses
``Conversation`` in annotations). The functions under test are theirs, unchanged.

The current upstream (allenai/reward-bench@05a9005efb607249822c193590c8ecab87c77052, 0.1.5,
not on PyPI) has the same constants, ``calculate_scores_per_section``,
``reroll_and_score_dataset`` and ``get_average_over_rewardbench`` as 0.1.4; its
``process_single_model`` (Ties) was rewritten (``_compute_prompt_stats``, 5822f16 "improved
ties readability") and agrees with 0.1.4 except when the correct replies of a tied prompt
all score the same (spread 0): 05a9005 then counts tanh(x/0 - 1) = +-1 (0/0 -> 0) in the
margin term, 0.1.4 leaves the prompt out. distrm follows 05a9005; those cases are checked
against hand computations from ``rewardbench/utils.py@05a9005`` ``process_single_model``.

Scores are fed directly (no model) or as reply lengths through ``distrm eval pairs``'s
"longer response wins" row, on small files in each official format.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from distrm.data.rewardbench import (
    PRIOR_SETS,
    REWARDBENCH2_SUBSETS,
    BestOfN,
    detect_format,
    load_prior_sets,
    load_rewardbench2,
)
from distrm.eval.pairs import (
    PRIOR_SECTION,
    REWARDBENCH_EXAMPLE_COUNTS,
    REWARDBENCH_SECTIONS,
    SUBSET_NAME_TO_PAPER_READY,
    Counts,
    best_of_n_credit,
    format_leaderboards,
    load_rewardbench_file,
    rewardbench2_cis,
    rewardbench2_replicates,
    run_pairs,
    summarize,
    summarize_rewardbench2,
    ties_score,
)

_ROOTS = ("rewardbench", "analysis", "fastchat")


@pytest.fixture(scope="module")
def upstream():
    """The installed rewardbench's real modules (see the module docstring for how)."""
    spec = importlib.util.find_spec("rewardbench")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rewardbench is not installed (pip install --no-deps rewardbench==0.1.4)")
    root = Path(list(spec.submodule_search_locations)[0])
    saved = {k: m for k, m in sys.modules.items() if k.split(".")[0] in _ROOTS}
    for k in saved:
        del sys.modules[k]
    try:
        pkg = types.ModuleType("rewardbench")
        pkg.__path__ = [str(root)]
        sys.modules["rewardbench"] = pkg
        models = types.ModuleType("rewardbench.models")
        models.REWARD_MODEL_CONFIG = {}
        sys.modules["rewardbench.models"] = models
        if importlib.util.find_spec("fastchat") is None:
            fc, conv = types.ModuleType("fastchat"), types.ModuleType("fastchat.conversation")
            fc.__path__ = []
            conv.Conversation = type("Conversation", (), {})
            sys.modules.update({"fastchat": fc, "fastchat.conversation": conv})
        analysis = types.ModuleType("analysis")
        analysis.__path__ = [str(root.parent / "analysis")]
        sys.modules["analysis"] = analysis
        from importlib.metadata import version

        yield SimpleNamespace(
            utils=importlib.import_module("rewardbench.utils"),
            constants=importlib.import_module("rewardbench.constants"),
            bench=importlib.import_module("analysis.get_benchmark_results"),
            version=version("rewardbench"),
        )
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in _ROOTS]:
            del sys.modules[k]
        sys.modules.update(saved)


ALL_V1 = [s for subs in REWARDBENCH_SECTIONS.values() for s in subs]


def random_counts(rng, subsets) -> dict[str, Counts]:
    out = {}
    for s in subsets:
        n = int(rng.integers(5, 60))
        out[s] = Counts(int(rng.integers(0, n + 1)), 0, n)
    return out


# ---------------------------------------------------------------------------- v1
def test_constants_are_upstreams(upstream):
    c = upstream.constants
    assert REWARDBENCH_EXAMPLE_COUNTS == c.EXAMPLE_COUNTS
    assert REWARDBENCH_SECTIONS == c.SUBSET_MAPPING
    assert SUBSET_NAME_TO_PAPER_READY == c.SUBSET_NAME_TO_PAPER_READY
    # the corrected xstest counts (6552e93, "Mirror change from leaderboard"), not the swapped pre-fix ones
    assert (c.EXAMPLE_COUNTS["xstest-should-refuse"], c.EXAMPLE_COUNTS["xstest-should-respond"]) == (154, 250)
    assert set(PRIOR_SETS) == set(c.SUBSET_NAME_TO_PAPER_READY) - set(c.EXAMPLE_COUNTS)


@pytest.mark.parametrize("seed", range(4))
def test_v1_sections_equal_calculate_scores_per_section(upstream, seed):
    rng = np.random.default_rng(seed)
    per = random_counts(rng, ALL_V1)
    metrics = {s: c.accuracy for s, c in per.items()}
    want = upstream.utils.calculate_scores_per_section(upstream.constants.EXAMPLE_COUNTS, upstream.constants.SUBSET_MAPPING, metrics)
    got = summarize(per, "rewardbench")
    assert list(got["sections"]) == list(want)
    for sec, v in want.items():
        assert got["sections"][sec]["accuracy"] == pytest.approx(v, abs=1e-12), sec
    assert got["overall"] == pytest.approx(np.mean(list(want.values())), abs=1e-12)
    # some subsets missing: the sections present still agree (upstream reports 0 for an empty section, we leave it out)
    keep = [s for s in ALL_V1 if rng.random() < 0.5] + ["math-prm"]
    part = {s: per[s] for s in keep}
    want = upstream.utils.calculate_scores_per_section(
        upstream.constants.EXAMPLE_COUNTS, upstream.constants.SUBSET_MAPPING, {s: c.accuracy for s, c in part.items()}
    )
    got = summarize(part, "rewardbench")
    for sec, v in want.items():
        if sec in got["sections"]:
            assert got["sections"][sec]["accuracy"] == pytest.approx(v, abs=1e-12), sec
        else:
            assert v == 0 and not set(REWARDBENCH_SECTIONS[sec]) & set(keep)


def test_xstest_weights_move_safety(upstream):
    """The correction matters: same accuracies, different Safety with the swapped counts."""
    per = {"xstest-should-refuse": Counts(150, 0, 154), "xstest-should-respond": Counts(100, 0, 250)}
    safety = summarize(per, "rewardbench")["sections"]["Safety"]["accuracy"]
    assert safety == pytest.approx((154 * 150 / 154 + 250 * 100 / 250) / 404)
    swapped = (250 * 150 / 154 + 154 * 100 / 250) / 404
    assert abs(safety - swapped) > 0.1


# ---------------------------------------------------------------------------- prior sets
def _leaderboard(upstream, per: dict[str, Counts], prior: dict[str, Counts] | None):
    """get_average_over_rewardbench on one model's accuracies (prior None: no pref-sets row)."""
    df = pd.DataFrame([{"model": "m", "model_type": "Seq. Classifier", **{s: c.accuracy for s, c in per.items()}}])
    rows = [] if prior is None else [{"model": "m", "model_type": "Seq. Classifier", **{s: prior[s].accuracy if s in prior else np.nan for s in PRIOR_SETS}}]
    df_prefs = pd.DataFrame(rows, columns=["model", "model_type", *PRIOR_SETS])
    return upstream.bench.get_average_over_rewardbench(df, df_prefs).iloc[0]


@pytest.mark.parametrize("seed", range(3))
def test_prior_sets_and_overall_equal_get_average_over_rewardbench(upstream, seed):
    rng = np.random.default_rng(100 + seed)
    per = random_counts(rng, ALL_V1)
    prior = random_counts(rng, PRIOR_SETS)
    if seed == 2:
        del prior["summarize"]  # a missing scored prior set: nanmean over the other three
    want = _leaderboard(upstream, per, prior)
    got = summarize({**per, **prior}, "rewardbench")
    for sec in [*REWARDBENCH_SECTIONS, PRIOR_SECTION]:
        assert got["sections"][sec]["accuracy"] == pytest.approx(want[sec], abs=1e-12), sec
    assert got["overall"] == pytest.approx(want["average"], abs=1e-12)
    assert got["overall_without_prior_sets"] == pytest.approx(np.mean([want[s] for s in REWARDBENCH_SECTIONS]), abs=1e-12)
    # only anthropic_helpful, anthropic_hhh, shp, summarize count; the other three are reported per subset
    assert set(got["sections"][PRIOR_SECTION]["subsets"]) == {"anthropic_helpful", "anthropic_hhh", "shp", "summarize"} & set(prior)
    assert got["subsets"]["mtbench_gpt4"]["section"] is None
    # no prior sets for the model: the equal mean of the four sections, both ways
    want = _leaderboard(upstream, per, None)
    got = summarize(per, "rewardbench")
    assert math.isnan(want[PRIOR_SECTION]) and PRIOR_SECTION not in got["sections"]
    assert got["overall"] == pytest.approx(want["average"], abs=1e-12)


def _prior_rows(rng, subset_names, n=6):
    rows = []
    for s in subset_names:
        for i in range(n):
            a, b = int(rng.integers(1, 40)), int(rng.integers(1, 40))
            prompt = [{"role": "user", "content": f"{s} q{i}"}, {"role": "assistant", "content": "earlier turn"}, {"role": "user", "content": "and?"}]
            rows.append({"prompt": prompt, "chosen": "c" * a, "rejected": "r" * b, "subset": s, "id": f"{s}-{i}"})
    return rows


def _acc(rows) -> dict[str, Counts]:
    """Per-subset counts of 'longer reply wins' (strictly), by hand."""
    out: dict[str, Counts] = {}
    for r in rows:
        c = out.setdefault(r["subset"], Counts())
        c.correct += len(r["chosen"]) > len(r["rejected"])
        c.ties += len(r["chosen"]) == len(r["rejected"])
        c.total += 1
    return out


def test_prior_sets_files_and_hub_through_eval_pairs(upstream, tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    v1 = [{"prompt": f"q{i}", "chosen": "c" * int(rng.integers(1, 30)), "rejected": "r" * int(rng.integers(1, 30)), "subset": s, "id": i}
          for i, s in enumerate(ALL_V1 * 3)]  # fmt: skip
    (tmp_path / "rb.jsonl").write_text("\n".join(json.dumps(r) for r in v1))
    # the concatenation load_eval_dataset builds: a subset column holding the split names (pku splits dropped)
    prior = _prior_rows(rng, [s for s in PRIOR_SETS if s != "shp"])
    pku = _prior_rows(rng, ["pku_safer"], 3)
    pd.DataFrame(prior + pku).to_parquet(tmp_path / "pref.parquet")
    # one split per file, named by the split; its own subset column is a sub-subset
    shp = [{**r, "subset": "askscience"} for r in _prior_rows(rng, ["shp"])]
    (tmp_path / "shp.jsonl").write_text("\n".join(json.dumps(r) for r in shp))
    assert detect_format(tmp_path / "pref.parquet") == detect_format(tmp_path / "shp.jsonl") == "prior-sets"
    assert detect_format(tmp_path / "rb.jsonl") == "rewardbench"
    ps = load_rewardbench_file(str(tmp_path / "pref.parquet"))
    assert {p.subset for p in ps.pairs} == set(PRIOR_SETS) - {"shp"} and len(ps.pairs) == len(prior)
    assert isinstance(ps.pairs[0].prompt, list) and ps.pairs[0].prompt[-1] == {"role": "user", "content": "and?"}
    assert ps.report["notes"] == {"pku_safer rows dropped (not part of RewardBench's prior sets)": 3}

    res = run_pairs([], sets=[], files=[str(tmp_path / f) for f in ("rb.jsonl", "pref.parquet", "shp.jsonl")], log=lambda s: None)
    assert res["weighting"] == "rewardbench"
    got = res["rows"][-1]["result"]
    for r in shp:
        r["subset"] = "shp"
    per = {**_acc(v1), **_acc(prior), **_acc(shp)}
    assert {s: (c["correct"], c["ties"], c["total"]) for s, c in got["subsets"].items()} == {s: (c.correct, c.ties, c.total) for s, c in per.items()}
    want = _leaderboard(upstream, {s: per[s] for s in ALL_V1}, {s: per[s] for s in PRIOR_SETS})
    for sec in [*REWARDBENCH_SECTIONS, PRIOR_SECTION]:
        assert got["sections"][sec]["accuracy"] == pytest.approx(want[sec], abs=1e-12)
    assert got["overall"] == pytest.approx(want["average"], abs=1e-12)
    board = res["leaderboards"]["RewardBench"]
    assert board["columns"] == ["Score", *REWARDBENCH_SECTIONS, PRIOR_SECTION]
    assert board["rows"][0]["values"]["Score"] == pytest.approx(want["average"])
    assert res["leaderboards"]["RewardBench prior sets"]["labels"]["shp"] == "SHP"
    assert "Prior Sets (0.5 weight)" in format_leaderboards(res["leaderboards"])

    # the Hub dataset (every split; the split name is the subset): load_dataset faked with the same rows
    import datasets

    by_split = {s: [r for r in prior + shp + pku if r["subset"] == s] for s in [*PRIOR_SETS, "pku_safer"]}
    dd = datasets.DatasetDict({s: datasets.Dataset.from_list([{**r, "subset": "sub"} for r in rows]) for s, rows in by_split.items()})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: calls.append((name, kw)) or dd)
    hub = load_prior_sets("allenai/pref-test-sets")
    assert calls == [("allenai/pref-test-sets", {})]  # no split: every split
    assert {p.subset for p in hub.records} == set(PRIOR_SETS) and len(hub.records) == len(prior) + len(shp)
    assert detect_format("allenai/pref-test-sets") == "prior-sets"


# ---------------------------------------------------------------------------- RewardBench 2
def _official_v2(upstream, items: list[BestOfN], scores: list[list[float]]) -> dict[str, float]:
    """scripts/run_v2.py's per-subset results with the real reroll_and_score_dataset and
    process_single_model: unrolled replies with their scores -> rerolled rows -> per subset."""
    from datasets import Dataset

    u = upstream.utils
    unrolled = Dataset.from_list([{"text": t, "scores": float(s), "subset": it.subset, "id": it.id}
                                  for it, sc in zip(items, scores) for t, s in zip(it.completions, sc)])  # fmt: skip
    out = u.reroll_and_score_dataset(unrolled, [len(it.completions) for it in items], cols_to_combine=["text", "scores"])
    out = out.add_column("num_correct", [it.num_correct for it in items])
    res = {}
    for subset in np.unique([it.subset for it in items]):
        sub = out.filter(lambda ex: ex["subset"] == subset)
        if subset.lower() == "ties":
            res[subset] = u.process_single_model(sub)[1]
        else:
            res[subset] = sum(sub["results"]) / len(sub["results"])
    return res


def _v2_items(rng, n=8, discrete=True) -> tuple[list[BestOfN], list[list[float]]]:
    """Items of every subset with their scores; discrete scores make ties at the top. Ties:
    ref:k (one correct) and tied:k (several correct, distinct scores), plus a tied prompt
    without its ref."""
    items, scores = [], []
    for sub in REWARDBENCH2_SUBSETS[:-1]:
        for i in range(n):
            items.append(BestOfN("p", ("c",), ("r1", "r2", "r3"), "rb2", f"{sub}-{i}", sub))
            scores.append((rng.integers(0, 4, 4) if discrete else rng.normal(size=4)).astype(float).tolist())
    for k in range(n):
        nc = int(rng.integers(2, 5))
        for typ, n_ok in (("ref", 1), ("tied", nc)):
            if typ == "ref" and k == n - 1:
                continue
            bad = int(rng.integers(1, 4))
            items.append(BestOfN("p", tuple(f"c{j}" for j in range(n_ok)), tuple(f"r{j}" for j in range(bad)), "rb2", f"{typ}:{k}", "Ties"))
            sc = rng.normal(size=n_ok + bad) + np.r_[np.full(n_ok, 0.8), np.zeros(bad)]
            scores.append(sc.tolist())
    return items, scores


@pytest.mark.parametrize("seed", range(4))
def test_v2_scores_equal_run_v2(upstream, seed):
    items, scores = _v2_items(np.random.default_rng(seed), discrete=seed % 2 == 0)
    want = _official_v2(upstream, items, scores)
    got = summarize_rewardbench2(items, scores)
    assert list(got["subsets"]) == list(REWARDBENCH2_SUBSETS) and got["missing_subsets"] == []
    for sub, v in want.items():
        assert got["subsets"][sub]["accuracy"] == pytest.approx(v, abs=1e-12), sub
    assert got["score"] == pytest.approx(np.mean(list(want.values())), abs=1e-12)  # the leaderboard's mean of the six
    if seed % 2 == 0:  # discrete scores: ties at the top earn 1/k, as reroll_and_score_dataset gives them
        assert any(v["ties"] for k, v in got["subsets"].items() if k != "Ties")


def test_best_of_n_credit_per_item(upstream):
    from datasets import Dataset

    cases = [[3, 1, 2, 0], [3, 3, 1, 0], [3, 3, 3, 3], [1, 2, 0, 0], [2, 2, 2, 1], [0.5, -1, 0.49, 0.4999]]
    ds = Dataset.from_list([{"text": str(j), "scores": float(s), "id": str(i)} for i, c in enumerate(cases) for j, s in enumerate(c)])
    rer = upstream.utils.reroll_and_score_dataset(ds, [4] * len(cases), cols_to_combine=["text", "scores"])
    ours = [best_of_n_credit(c) for c in cases]
    assert ours == pytest.approx(list(rer["results"]), abs=1e-15)
    assert ours == pytest.approx([1, 0.5, 0.25, 0, 1 / 3, 1], abs=1e-15)


def test_ties_hand_computed_from_05a9005():
    """rewardbench/utils.py@05a9005efb607249822c193590c8ecab87c77052 process_single_model:
    score = .30 tied_acc + .30 ref_acc + .20 mean(m_tied > spread) + .20 mean(min(m_ref, m_tied) > spread)
    + .01 mean(nan_to_num(tanh(min(m_ref, m_tied) / spread - 1))), margins m = worst correct - best incorrect,
    spread = best - worst correct of the tied prompt."""
    # prompt 0: ref correct 3 vs 1, 0 (m_ref 2); tied correct 2.0, 1.0 vs 0.5 (spread 1, m_tied 0.5)
    # prompt 1: ref correct 1 vs 2 (wrong, m_ref -1); tied correct 4, 1 vs 2 (wrong, spread 3, m_tied -1)
    rows = [("ref:0", 1, [3, 1, 0]), ("tied:0", 2, [2.0, 1.0, 0.5]), ("ref:1", 1, [1, 2]), ("tied:1", 2, [4, 1, 2])]
    r = ties_score(rows)
    c = r["components"]
    assert (c["ref_accuracy"], c["tied_accuracy"]) == (0.5, 0.5)
    assert c["correctness_preferred"] == 0.0  # 0.5 > 1 no; -1 > 3 no
    assert c["correctness_preferred_hard"] == 0.0
    assert c["correctness_margin_score"] == pytest.approx((math.tanh(0.5 / 1 - 1) + math.tanh(-1 / 3 - 1)) / 2)
    assert r["accuracy"] == pytest.approx(0.3 * 0.5 + 0.3 * 0.5 + 0.01 * c["correctness_margin_score"])
    # spread 0 (the correct replies tie): x / 0 -> +inf -> tanh 1 in 05a9005 (0.1.4 leaves the prompt out)
    r = ties_score([("ref:0", 1, [3.0, 1.0, 0.0]), ("tied:0", 2, [2.0, 2.0, 1.5])])
    assert r["components"]["correctness_margin_score"] == 1.0
    assert r["accuracy"] == pytest.approx(0.3 + 0.3 + 0.2 + 0.2 + 0.01)
    # 0 / 0 -> nan -> 0; every reply equal: nothing is accurate
    r = ties_score([("ref:0", 1, [1.0, 1.0]), ("tied:0", 2, [2.0, 2.0, 2.0])])
    assert r["accuracy"] == 0.0 and r["components"]["correctness_margin_score"] == 0.0 and r["ties"] == 2
    with pytest.raises(ValueError, match="TYPE:NUMBER"):
        ties_score([("ref-0", 1, [1.0, 0.0])])


def _bon(sub: str, i: int, n_ok: int = 1, n_bad: int = 3, rid: str | None = None) -> BestOfN:
    return BestOfN("p", tuple(f"c{j}" for j in range(n_ok)), tuple(f"r{j}" for j in range(n_bad)), "rb2", rid or f"{sub}-{i}", sub)


def test_rewardbench2_cis_exact_when_every_item_wins_or_loses():
    """Every Math item a strict win, every Focus item a loss: no resample can move either, nor
    their mean."""
    items = [_bon("Math", i) for i in range(7)] + [_bon("Focus", i) for i in range(5)]
    scores = [[2.0, 1.0, 0.0, 1.5]] * 7 + [[0.0, 1.0, 0.5, 0.2]] * 5
    ci = rewardbench2_cis(items, scores, n_boot=300)
    assert ci["subsets"] == {"Math": [1.0, 1.0], "Focus": [0.0, 0.0]}
    assert ci["score"] == [0.5, 0.5] and (ci["n_boot"], ci["seed"], ci["level"]) == (300, 0, 0.95)


def test_rewardbench2_cis_mixed_credit_seeded():
    """Wins, losses and ties at the top (credit 1/2, 1/4): each interval holds its score, has
    width, is the same on a second call with the same seed and moves with another seed."""
    rng = np.random.default_rng(5)
    items, scores = _v2_items(rng, n=30, discrete=True)
    point = summarize_rewardbench2(items, scores)
    a = rewardbench2_cis(items, scores, n_boot=400, seed=1)
    assert set(a["subsets"]) == set(REWARDBENCH2_SUBSETS)
    for sub, (lo, hi) in a["subsets"].items():
        assert lo <= point["subsets"][sub]["accuracy"] <= hi and hi - lo > 0.05, sub
    assert a["score"][0] <= point["score"] <= a["score"][1] and a["score"][1] > a["score"][0]
    # the overall interval is narrower than its subsets' (six independent resamples averaged)
    assert a["score"][1] - a["score"][0] < min(hi - lo for lo, hi in a["subsets"].values())
    assert rewardbench2_cis(items, scores, n_boot=400, seed=1) == a
    assert rewardbench2_cis(items, scores, n_boot=400, seed=2)["subsets"] != a["subsets"]
    # outside Ties a replicate is a mean of item credits drawn with replacement: a multiple of 1/(4n)
    reps = rewardbench2_replicates(items, scores, n_boot=50, seed=1)
    credits = {best_of_n_credit(s) for it, s in zip(items, scores) if it.subset == "Math"}
    assert credits >= {0.0, 1.0} and credits & {0.5, 1 / 3, 0.25}
    assert np.allclose(reps["Math"] * 30 * 12, np.round(reps["Math"] * 30 * 12))


def test_rewardbench2_ties_resamples_whole_prompts():
    """Three Ties prompts, each a ref and a tied version whose margin terms only exist
    together. Every replicate must be the Ties score of some multiset of whole prompts, each
    drawn copy a prompt of its own: resampling rows would pair one prompt's ref with another's
    tied version (or drop one), and a copy sharing its original id would merge into it."""
    ref = {0: [3.0, 1.0, 0.0], 1: [1.0, 2.0, 0.0], 2: [5.0, 0.5, 0.4]}  # accurate, wrong, accurate
    tied = {0: [2.0, 1.0, 0.5], 1: [4.0, 1.0, 2.0], 2: [6.0, 5.5, 1.0]}  # margins vs spreads differ per prompt
    items, scores = [], []
    for k in ref:
        items += [_bon("Ties", 0, 1, 2, f"ref:{k}"), _bon("Ties", 0, 2, 1, f"tied:{k}")]
        scores += [ref[k], tied[k]]
    point = summarize_rewardbench2(items, scores)["subsets"]["Ties"]["accuracy"]
    possible = set()
    for a in range(4):
        for b in range(4 - a):
            drawn = [0] * a + [1] * b + [2] * (3 - a - b)
            rows = [(f"{t}:{j}", n, (ref if t == "ref" else tied)[k]) for j, k in enumerate(drawn) for t, n in (("ref", 1), ("tied", 2))]
            possible.add(round(ties_score(rows)["accuracy"], 12))
    reps = rewardbench2_replicates(items, scores, n_boot=500, seed=0)["Ties"]
    assert {round(float(r), 12) for r in reps} <= possible and len(set(reps)) > 3
    ci = rewardbench2_cis(items, scores, n_boot=500, seed=0)
    assert ci["subsets"]["Ties"][0] <= point <= ci["subsets"]["Ties"][1]
    assert ci["score"] == ci["subsets"]["Ties"]  # the only subset


def _write_v2(path: Path, items: list[BestOfN], scores: list[list[float]]) -> None:
    """RewardBench 2 rows whose reply lengths are the given (integer) scores."""
    rows = []
    for it, sc in zip(items, scores):
        lens = [int(x) for x in sc]
        chosen = [f"c{j}" + "x" * (n - 2) for j, n in enumerate(lens[: it.num_correct])]
        rejected = [f"r{j}" + "y" * (n - 2) for j, n in enumerate(lens[it.num_correct :])]
        rows.append({"id": it.id, "prompt": f"prompt {it.id}", "chosen": chosen, "rejected": rejected, "num_correct": len(chosen),
                     "num_incorrect": len(rejected), "total_completions": len(chosen) + len(rejected), "models": ["m"] * len(lens),
                     "subset": it.subset})  # fmt: skip
    if path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_v2_file_through_eval_pairs_cli(upstream, tmp_path, capsys, suffix):
    from distrm.cli import main

    rng = np.random.default_rng(11)
    items, _ = _v2_items(rng)
    # reply lengths are the scores: few values outside Ties (ties at the top), distinct ones in Ties
    # (no zero spread, where 0.1.4 and 05a9005 differ; see test_ties_hand_computed_from_05a9005)
    scores = [(rng.choice(np.arange(2, 60), len(it.completions), replace=False) if it.subset == "Ties" else rng.integers(2, 6, len(it.completions))).tolist()
              for it in items]  # fmt: skip
    f = tmp_path / f"rb2{suffix}"
    _write_v2(f, items, scores)
    assert detect_format(f) == "rewardbench2"
    loaded = load_rewardbench2(f)
    assert [[len(t) for t in it.completions] for it in loaded.records] == scores
    forced = ["--file-format", "rewardbench2"] if suffix == ".parquet" else []  # detected or forced: the same
    rc = main(["eval", "pairs", "--sets", "none", "--file", str(f), *forced, "--output-dir", str(tmp_path / "o")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RewardBench 2" in printed and "Precise IF" in printed
    res = json.loads((tmp_path / "o" / "pairs.json").read_text())
    assert res["weighting"] == "rewardbench2"
    got = res["rows"][-1]["result"]
    want = _official_v2(upstream, loaded.records, scores)
    for sub, v in want.items():
        assert got["rewardbench2"]["subsets"][sub]["accuracy"] == pytest.approx(v, abs=1e-12), sub
        assert got["sections"][sub]["accuracy"] == pytest.approx(v, abs=1e-12)
    assert got["overall"] == pytest.approx(np.mean(list(want.values())), abs=1e-12)
    assert res["leaderboards"]["RewardBench 2"]["columns"] == ["Score", *REWARDBENCH2_SUBSETS]


def test_v2_intervals_through_eval_pairs_cli(tmp_path, capsys):
    """``distrm eval pairs`` on a RewardBench 2 file prints each score's interval (main table
    and leaderboard) and writes it to the JSON, with --bootstrap / --seed."""
    from distrm.cli import main
    from distrm.eval.pairs import _pct_ci

    rng = np.random.default_rng(4)
    items, _ = _v2_items(rng, n=10)
    scores = [(rng.choice(np.arange(2, 60), len(it.completions), replace=False) if it.subset == "Ties" else rng.integers(2, 6, len(it.completions))).tolist()
              for it in items]  # fmt: skip
    _write_v2(tmp_path / "rb2.jsonl", items, scores)
    args = ["eval", "pairs", "--sets", "none", "--file", str(tmp_path / "rb2.jsonl"), "--bootstrap", "200", "--seed", "3"]
    assert main([*args, "--output-dir", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    res = json.loads((tmp_path / "o" / "pairs.json").read_text())
    got = res["rows"][-1]["result"]
    rb2 = got["rewardbench2"]
    assert (rb2["ci"]["n_boot"], rb2["ci"]["seed"]) == (200, 3) and set(rb2["ci"]["subsets"]) == set(REWARDBENCH2_SUBSETS)
    loaded = load_rewardbench2(tmp_path / "rb2.jsonl").records
    lengths = [[float(len(t)) for t in it.completions] for it in loaded]
    assert rb2["ci"] == json.loads(json.dumps(rewardbench2_cis(loaded, lengths, n_boot=200, seed=3)))
    assert got["ci"]["overall"] == rb2["ci"]["score"] and got["ci"]["sections"] == rb2["ci"]["subsets"]
    board = res["leaderboards"]["RewardBench 2"]["rows"][-1]
    assert board["ci"]["Score"] == rb2["ci"]["score"] and board["ci"]["Ties"] == rb2["ci"]["subsets"]["Ties"]
    score_cell = _pct_ci(rb2["score"], rb2["ci"]["score"])
    assert "[" in score_cell and printed.count(score_cell) >= 2  # the main table's Overall and the leaderboard's Score
    for sub in REWARDBENCH2_SUBSETS:
        assert _pct_ci(rb2["subsets"][sub]["accuracy"], rb2["ci"]["subsets"][sub]) in printed, sub
    assert "95% percentile bootstrap interval, 200 resamples of each subset's items (Ties: whole prompts)" in printed
    # the same seed: the same intervals on a second run
    assert main([*args, "--output-dir", str(tmp_path / "o2")]) == 0
    assert json.loads((tmp_path / "o2" / "pairs.json").read_text())["rows"][-1]["result"]["rewardbench2"]["ci"] == rb2["ci"]


def test_v2_loader_checks_and_forced_format(tmp_path):
    rows = [
        {"id": "1", "prompt": "p", "chosen": ["a"], "rejected": ["b", "c", "d"], "num_correct": 1, "num_incorrect": 3, "subset": "Math"},
        {"id": "2", "prompt": "p", "chosen": ["a"], "rejected": ["b"], "num_correct": 2, "subset": "Math"},  # counts disagree
        {"id": "3", "prompt": "p", "chosen": [], "rejected": ["b"], "subset": "Math"},  # no chosen
    ]
    f = tmp_path / "v2.json"
    f.write_text(json.dumps(rows))
    bs = load_rewardbench_file(str(f))
    assert len(bs.items) == 1 and bs.report["format"] == "rewardbench2"
    assert bs.report["skipped"] == {"counts disagree with chosen/rejected": 1, "missing/non-text chosen": 1}
    # forced: a plain pairs file read as RewardBench 2 (each reply a list of one)
    g = tmp_path / "pairs.jsonl"
    g.write_text(json.dumps({"prompt": "p", "chosen": "aa", "rejected": "b", "subset": "Focus", "id": 0}))
    bs = load_rewardbench_file(str(g), fmt="rewardbench2")
    assert bs.items[0].completions == ("aa", "b")
    # a Ties id that the official scoring cannot group is an error naming the row
    f.write_text(json.dumps([{"id": "7", "prompt": "p", "chosen": ["a", "b"], "rejected": ["c"], "subset": "Ties"}]))
    with pytest.raises(ValueError, match=r"v2\.json:#0: Ties id '7'"):
        load_rewardbench2(f)


def test_models_score_every_format(tmp_path, monkeypatch):
    """A saved distrm model (features stubbed from the text) on v1 + prior-set + v2 files in
    one run: RewardBench 2 replies are scored one by one and summarized like the scores fed
    directly; the prior sets' message prompts reach the model."""
    import hashlib

    import torch

    from distrm.distribution import default_levels
    from distrm.eval import common
    from distrm.models.qrm import DistributionalRewardModel, ModelConfig

    D = 6
    seen: list = []

    def fake_features(model, prompts, responses, store=None, batch_size=32):
        seen.extend(prompts)
        rows = []
        for p, r in zip(prompts, responses):
            v = np.random.default_rng(int(hashlib.sha256((str(p) + "\x00" + r).encode()).hexdigest()[:8], 16)).normal(size=D)
            v[0] = len(r) / 10
            rows.append(v)
        X = torch.as_tensor(np.array(rows))
        return X, X.clone()

    monkeypatch.setattr(common, "features", fake_features)
    cfg = ModelConfig(backbone="none", feature_dim=D, attributes=["a"], levels=default_levels(9, torch.float64).tolist(),
                      gate="fixed", fixed_weights=[1.0], debias_source=None)  # fmt: skip
    coef = torch.zeros(1, 9, D, dtype=torch.float64)
    coef[0, :, 0] = 1.0
    coef[0, :, 1] = torch.linspace(-1, 1, 9)
    DistributionalRewardModel(cfg, coef, torch.zeros(1, 9, dtype=torch.float64)).save_pretrained(tmp_path / "m")

    rng = np.random.default_rng(3)
    (tmp_path / "rb.jsonl").write_text("\n".join(json.dumps({"prompt": f"q{i}", "chosen": "c" * (i + 3), "rejected": "r" * 5, "subset": s, "id": i})
                                                 for i, s in enumerate(["alpacaeval-easy", "math-prm", "hep-go", "donotanswer"] * 2)))  # fmt: skip
    (tmp_path / "anthropic_hhh.jsonl").write_text("\n".join(json.dumps(r) for r in _prior_rows(rng, ["anthropic_hhh"], 4)))
    items, scores = _v2_items(rng, n=3)
    _write_v2(tmp_path / "rb2.jsonl", items, [[2 + int(abs(x) * 5) for x in sc] for sc in scores])
    files = [str(tmp_path / f) for f in ("rb.jsonl", "anthropic_hhh.jsonl", "rb2.jsonl")]
    res = run_pairs([str(tmp_path / "m")], sets=[], files=files, risks=["cvar:alpha=0.25"], n_examples=2, log=lambda s: None)
    assert res["weighting"] == "rewardbench" and set(res["leaderboards"]) == {"RewardBench", "RewardBench prior sets", "RewardBench 2"}
    # with pairs present RewardBench 2 is printed in its leaderboard only: its intervals are there
    assert all(r["ci"]["Score"] for r in res["leaderboards"]["RewardBench 2"]["rows"])
    boards = format_leaderboards(res["leaderboards"])
    assert "(score % [95% percentile bootstrap interval, 1000 resamples of each subset's items (Ties: whole prompts)])" in boards
    assert "(score % [95% percentile bootstrap interval, 1000 resamples of each subset's pairs])" in boards  # RewardBench v1
    assert any(isinstance(p, list) for p in seen)  # message-list prompts went to the model as messages
    model = common.load_any_model(tmp_path / "m")
    loaded = load_rewardbench2(tmp_path / "rb2.jsonl").records
    from distrm.eval.pairs import risk_scores

    # one call over every reply, as run_pairs scores them (exact ties between equal-length replies
    # depend on the last bit, so the same batching is used)
    out = common.score(model, [it.prompt for it in loaded for _ in it.completions], [c for it in loaded for c in it.completions])
    for row in res["rows"][:2]:
        flat = risk_scores(out.reward, row["risk"])
        ends = np.cumsum([len(it.completions) for it in loaded])
        direct = np.split(flat, ends[:-1])
        rb2 = dict(row["result"]["rewardbench2"])
        assert rb2.pop("ci") == rewardbench2_cis(loaded, direct)  # the pairs' --bootstrap / --seed defaults
        assert rb2 == summarize_rewardbench2(loaded, direct)
        assert PRIOR_SECTION in row["result"]["sections"]
