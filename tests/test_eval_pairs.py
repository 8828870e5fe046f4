"""Pairwise accuracy: strict wins, ties, RewardBench weighting, file loading."""

import json

import numpy as np
import pandas as pd
import pytest

from distrm.data.records import PreferencePair
from distrm.eval.pairs import (
    REWARDBENCH_EXAMPLE_COUNTS,
    Counts,
    compare,
    count_by_subset,
    detect_weighting,
    evaluate_scores,
    length_scores,
    load_rewardbench_file,
    summarize,
)


def test_ties_are_wrong_and_counted():
    ok, tie = compare(np.array([1.0, 2.0, 3.0]), np.array([0.5, 2.0, 4.0]))
    assert ok.tolist() == [True, False, False]
    assert tie.tolist() == [False, True, False]
    c = count_by_subset(["s", "s", "s"], ok, tie)["s"]
    assert (c.correct, c.ties, c.total) == (1, 1, 3)


def test_nan_scores_refused():
    with pytest.raises(ValueError):
        compare(np.array([np.nan]), np.array([0.0]))


def test_rewardbench_weighting_matches_hand_computation():
    per = {
        "math-prm": Counts(447, 0, 447),  # 100%
        "hep-python": Counts(82, 0, 164),  # 50%
        "alpacaeval-easy": Counts(90, 0, 100),
        "llmbar-natural": Counts(50, 10, 100),
    }
    res = summarize(per, "rewardbench")
    # math-prm is up-weighted to 984: (984 * 1 + 164 * 0.5) / (984 + 164)
    assert res["sections"]["Reasoning"]["accuracy"] == pytest.approx((984 + 82) / (984 + 164))
    assert res["sections"]["Chat"]["accuracy"] == pytest.approx(0.9)
    assert res["sections"]["Chat Hard"]["ties"] == 10
    assert res["overall"] == pytest.approx(np.mean([0.9, 0.5, (984 + 82) / (984 + 164)]))
    assert "Safety" not in res["sections"]
    assert "xstest-should-refuse" in res["missing_rewardbench_subsets"]


def test_plain_weighting_pools_sections():
    per = {"llmbar-natural": Counts(60, 0, 100), "llmbar-adver-manual": Counts(10, 0, 40), "hh-rlhf-harmless": Counts(5, 0, 10)}
    res = summarize(per, "plain")
    assert res["sections"]["Chat Hard"]["accuracy"] == pytest.approx(70 / 140)
    assert res["sections"]["Safety"]["accuracy"] == pytest.approx(0.5)
    assert res["overall"] == pytest.approx(0.5)


def test_detect_weighting():
    assert detect_weighting(["alpacaeval-easy", "llmbar-natural", "math-prm"]) == "rewardbench"
    assert detect_weighting(["llmbar-natural", "llmbar-adver-manual"]) == "plain"  # our LLMBar copy alone
    assert detect_weighting(["alpacaeval-easy", "my-own-set"]) == "plain"
    assert REWARDBENCH_EXAMPLE_COUNTS["math-prm"] == 984  # up-weighted from 447 to equal code (6 x 164)


def test_length_heuristic_and_evaluate_scores():
    pairs = [PreferencePair("p", "long answer here", "short", "x", "1"), PreferencePair("p", "ab", "cd", "x", "2", subset="sub")]
    c = length_scores([p.prompt for p in pairs], [p.chosen for p in pairs])
    r = length_scores([p.prompt for p in pairs], [p.rejected for p in pairs])
    res = evaluate_scores(pairs, ["x", "x"], c, r)
    assert res["x"].correct == 1 and res["sub"].ties == 1


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_load_rewardbench_file(tmp_path, fmt):
    rows = [
        {"prompt": "q1", "chosen": "a", "rejected": "b", "subset": "alpacaeval-easy", "id": 1},
        {"prompt": "q2", "chosen": "c", "rejected": "d", "subset": "math-prm", "id": 2},
        {"prompt": "q3", "chosen": None, "rejected": "d", "subset": "math-prm", "id": 3},
    ]
    p = tmp_path / f"rb.{fmt}"
    if fmt == "jsonl":
        p.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "json":
        p.write_text(json.dumps(rows))
    else:
        pd.DataFrame(rows).to_parquet(p)
    ps = load_rewardbench_file(str(p))
    assert len(ps.pairs) == 2
    assert ps.report["skipped"] == {"missing/non-text chosen": 1}
    assert detect_weighting(pp.subset for pp in ps.pairs) == "rewardbench"


def test_malformed_rewardbench_file_errors_with_counts(tmp_path):
    # a broken JSON line: the error names the file and the line
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q2", "chosen": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        load_rewardbench_file(str(p))
    # rows of several wrong kinds: each skip reason counted; nothing usable -> error with the counts
    rows = [[1, 2], {"prompt": "q", "chosen": 3, "rejected": "b"}, {"prompt": "q", "rejected": "b"}, {"chosen": "a", "rejected": "b"}]
    q = tmp_path / "none.json"
    q.write_text(json.dumps(rows))
    with pytest.raises(ValueError) as e:
        load_rewardbench_file(str(q))
    msg = str(e.value)
    assert "'not an object': 1" in msg and "'missing/non-text chosen': 2" in msg and "'missing/non-text prompt': 1" in msg
    # the same rows next to one good row: loaded, and the skips are reported, not dropped silently
    q.write_text(json.dumps(rows + [{"prompt": "q", "chosen": "a", "rejected": "b", "subset": "s"}]))
    ps = load_rewardbench_file(str(q))
    assert len(ps.pairs) == 1 and ps.report["rows_read"] == 5
    assert ps.report["skipped"] == {"not an object": 1, "missing/non-text chosen": 2, "missing/non-text prompt": 1}


def test_missing_file_and_cli_error(tmp_path, capsys):
    from distrm.cli import main

    with pytest.raises(FileNotFoundError):
        load_rewardbench_file(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a"}\n')
    rc = main(["eval", "pairs", "--sets", "none", "--file", str(bad), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc != 0 and "missing/non-text rejected': 1" in err
    assert not (tmp_path / "o" / "pairs.json").exists()


def test_eval_sets_cover_every_shared_set():
    """Every registered preference set is in `eval pairs`' default list, every multi-rater
    set in `eval calibration`'s (single-rater sets are named, so a new set cannot be missed)."""
    from distrm.data import registry
    from distrm.eval.calibration import CALIBRATION_SETS
    from distrm.eval.pairs import SHARED_PAIR_SETS, section_of, subset_name

    pair_sets = {registry.get(n).name for n in SHARED_PAIR_SETS}
    want_pairs = {d.name for d in registry.DATASETS.values() if "pairs" in d.kinds and d.subset is None}
    assert pair_sets == want_pairs
    single_rater = {"ultrafeedback", "pku-saferlhf", "helpsteer2-fixture"}
    cal_sets = {registry.get(n).name for n in CALIBRATION_SETS.values()}
    want_cal = {d.name for d in registry.DATASETS.values() if "rated" in d.kinds} - single_rater
    assert cal_sets == want_cal
    # sections of the shared sets: LLMBar = Chat Hard, HH-RLHF + PKU = Safety, the rest Chat
    want = {"llmbar": "Chat Hard", "hh-rlhf": "Safety", "pku-saferlhf": "Safety", "ultrafeedback": "Chat", "orca": "Chat", "autoj": "Chat"}
    for name in SHARED_PAIR_SETS:
        p = PreferencePair("p", "a", "b", registry.get(name).name, "1")
        assert section_of(subset_name(p, name), "plain") == want[registry.get(name).name], name
    for sub in ("llmbar-natural", "llmbar-adver-GPTOut", "ultrafeedback-train", "ultrafeedback-eval", "orca-dpo-pairs"):
        assert section_of(sub, "plain") in ("Chat Hard", "Chat")
