"""The verdict logic of benchmarks/table1.py's claims section: a claim is judged on the
difference between two rows against the seed spread and a paired bootstrap over the
evaluation pairs, so a difference inside either noise level must not read as "holds"."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def t1():
    spec = importlib.util.spec_from_file_location("table1_under_test", ROOT / "benchmarks" / "table1.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def _entry(correct: np.ndarray, sets: list[str], set_names: tuple[str, ...]) -> dict:
    per = {s: float(correct[[n == s for n in sets]].mean()) for s in set_names}
    return {"pairs": {"sets": per, "correct": "".join("1" if c else "0" for c in correct)}}


def test_judge_needs_both_noise_levels(t1):
    assert t1.judge("greater", 0.05, 0.01, [0.02, 0.08]) == "holds"
    assert t1.judge("greater", 0.05, 0.03, [0.02, 0.08]).startswith("not resolved")  # inside 2 x seed spread
    assert t1.judge("greater", 0.05, 0.01, [-0.01, 0.10]).startswith("not resolved")  # CI covers 0
    assert t1.judge("greater", -0.05, 0.01, [-0.08, -0.02]) == "opposite holds"
    assert t1.judge("less", -0.02, 0.001, None) == "holds"  # lower is better (CRPS)
    assert t1.judge("not_worse", -0.01, 0.02, [-0.03, 0.01]) == "holds"
    assert t1.judge("not_worse", -0.05, 0.01, [-0.08, -0.02]).startswith("does not hold")
    assert t1.judge("below", 0.62, 0.0, None, threshold=0.99) == "holds"
    few = t1.sign_test([True] * 7 + [False] * 6, [False] * 7 + [True] * 6)  # 7 of 13 groups positive
    many = t1.sign_test([True] * 12 + [False], [False] * 12 + [True])
    assert t1.judge("positive", 0.07, 0.005, None, groups=few).startswith("not resolved")  # p = 0.5
    assert t1.judge("positive", 0.07, 0.005, None, groups=many) == "holds"
    assert t1.judge("below", 0.999, 0.0, None, threshold=0.99) == "does not hold"


def test_paired_bootstrap_is_paired_and_stratified(t1):
    rng = np.random.default_rng(0)
    a = {"x": rng.integers(0, 2, 300).astype(float), "y": rng.integers(0, 2, 100).astype(float)}
    assert t1.paired_bootstrap(a, {k: v.copy() for k, v in a.items()}, 500) == [0.0, 0.0]  # same outcomes: no difference
    better = {k: np.maximum(v, (rng.random(len(v)) < 0.3).astype(float)) for k, v in a.items()}
    lo, hi = t1.paired_bootstrap(better, a, 500)
    assert 0 < lo < hi  # A is right wherever B is, and more often


def test_check_claims_reads_per_seed_results(t1):
    sets = [s for s in t1.SETS for _ in range(200)]
    rng = np.random.default_rng(1)
    base = rng.random(len(sets)) < 0.55
    per_seed = {"bb": {
        "QRM": {s: _entry(base | (rng.random(len(sets)) < 0.25), sets, t1.SETS) for s in range(3)},
        "ridge+gate": {s: _entry(base, sets, t1.SETS) for s in range(3)},
        "BT head": {s: _entry(base, sets, t1.SETS) for s in range(3)},
    }}  # fmt: skip
    out = {r["id"]: r for r in t1.check_claims(per_seed, {"bb": np.asarray(sets)}, 300)}
    assert out["qrm_vs_armorm"]["verdict"] == "holds" and out["qrm_vs_armorm"]["diff"] > 0.05
    assert "dpl_mv_vs_bt" not in out  # rows that were not run are not judged
    md = t1.claims_markdown(list(out.values()))
    assert "qrm_vs_armorm" in md and "holds" in md


def test_claims_reach_the_html_report(t1, tmp_path):
    from distrm.eval.report import build_report

    sets = [s for s in t1.SETS for _ in range(50)]
    ok = np.arange(len(sets)) % 3 > 0
    per_seed = {"bb": {"QRM": {0: _entry(ok, sets, t1.SETS)}, "ridge+gate": {0: _entry(~ok, sets, t1.SETS)}}}
    checked = t1.check_claims(per_seed, {"bb": np.asarray(sets)}, 100)
    rows, md = t1.aggregate(per_seed)
    path = tmp_path / "table1.json"
    path.write_text(json.dumps({"kind": "table1", "markdown": md, "claims_markdown": t1.claims_markdown(checked)}))
    html = build_report([path])
    assert "<h3>Claims</h3>" in html and "<b>qrm_vs_armorm</b>" in html and "holds" in html
    assert html.count("<table>") == 2  # the rows, then the one claim's verdicts
