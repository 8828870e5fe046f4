"""Every shared dataset loads with the counts its README states; parsing of embedded
conversation formats; registry resolution; default training / eval sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distrm.data import registry
from distrm.data.formats import parse_hh_transcript, parse_nemo_chat, split_final_reply
from distrm.data.generic import load_pairs_file, load_rated_file
from distrm.data.records import PreferencePair, RatedResponse
from distrm.data.splits import split

try:
    DATA = registry.default_data_dir()
except FileNotFoundError:
    DATA = None
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "llmbar").is_dir(), reason="shared data folder not found")


@pytest.fixture(scope="module")
def loaded() -> dict:
    """Every registered dataset, loaded once for the whole module."""
    return {n: registry.load_all(n, data_dir=DATA) for n in registry.names()}


def _valid_rated(r: RatedResponse) -> None:
    assert r.response.strip() and r.scores
    for a in r.scores:
        assert a in r.scales and r.scales[a][0] < r.scales[a][1]
        assert all(0.0 <= v <= 1.0 for v in r.rater_scores(a)), (r.id, a)


@needs_data
def test_every_dataset_loads(loaded):
    for name, kinds in loaded.items():
        assert kinds, name
        for kind, v in kinds.items():
            assert len(v) > 0, (name, kind)
            assert v.report.rows_read > 0, (name, kind)


@needs_data
def test_pair_counts_and_skips(loaded):
    hh = loaded["hh-rlhf"]["pairs"]
    assert hh.report.rows_read == 2312
    assert len(hh) + hh.report.n_skipped == 2312
    assert hh.report.skipped["chosen/rejected prompts differ"] == 5
    assert hh.report.skipped["empty response"] == 4
    assert all(p.prompt[-1]["role"] == "user" for p in hh)

    orca = loaded["orca"]["pairs"]
    assert len(orca) == 284 and orca.report.n_skipped == 0
    assert orca.records[0].prompt[0]["role"] == "system"

    llm = loaded["llmbar"]["pairs"]
    by_subset = {s: sum(p.subset == s for p in llm) for s in registry.shared.LLMBAR_SUBSETS}
    assert by_subset == {"llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46}

    aj = loaded["autoj"]["pairs"]
    assert aj.report.rows_read == 1392 and aj.report.skipped["tie"] == 373
    assert len(aj) == 1392 - aj.report.n_skipped

    pku = loaded["pku-saferlhf"]["pairs"]
    assert len(pku) == 5135
    assert pku.report.counts["duplicate rows (kept)"] > 0  # counted, not dropped

    uf = loaded["ultrafeedback"]["pairs"]
    assert uf.report.rows_read == 1200 and uf.report.skipped["tie"] == 136
    assert len(uf) == 1200 - uf.report.n_skipped


@needs_data
def test_llmbar_subset_names_resolve():
    nat = registry.load_pairs("llmbar-natural", data_dir=DATA)
    assert len(nat) == 100 and {p.subset for p in nat} == {"llmbar-natural"}


@needs_data
def test_rated_sets(loaded):
    for name, kinds in loaded.items():
        for r in kinds.get("rated", []):
            _valid_rated(r)
    uf = loaded["ultrafeedback"]["rated"]
    assert len(uf) == 2 * 1200 - uf.report.n_skipped
    assert uf.records[0].scales["ultrafeedback-overall_score"] == (1.0, 10.0)

    for which in ("prometheus-mtbench", "prometheus-vicuna"):
        pr = loaded[which]["rated"]
        assert len(pr) == 320 and all(len(r.rater_scores("prometheus-score")) == 3 for r in pr)

    d990, d350 = loaded["dices-990"]["rated"], loaded["dices-350"]["rated"]
    assert len(d990) == 990 and len(d350) == 350
    assert {len(r.rater_scores("dices-safe")) for r in d350} == {123}
    assert min(len(r.rater_scores("dices-safe")) for r in d990) >= 69
    assert d990.report.counts["'Unsure' ratings (mapped to 0.5)"] == 3751
    # majority "Yes" = unsafe: "Don't worry u just die" is rated mostly unsafe
    die = next(r for r in d990 if r.response.startswith("Don't worry u just die"))
    assert sum(die.rater_scores("dices-safe")) / len(die.rater_scores("dices-safe")) < 0.5

    nr = loaded["newsroom"]["rated"]
    assert len(nr) == 420 and all(len(r.scores) == 4 and all(len(r.rater_scores(a)) == 3 for a in r.scores) for r in nr)
    rc = loaded["recipes"]["rated"]
    assert len(rc) == 52 and all(len(r.scores) == 6 for r in rc)

    ca = loaded["convabuse"]["rated"]
    assert len(ca) == 4185
    assert ca.report.rows_read == 12768
    n_ratings = sum(len(r.rater_scores("convabuse-is_abuse")) for r in ca)
    assert n_ratings + ca.report.n_skipped == 12768

    hs = loaded["helpsteer2-fixture"]["rated"]
    assert len(hs) == 8 and set(hs.records[0].scores) == {f"helpsteer-{a}" for a in ("helpfulness", "correctness", "coherence", "complexity", "verbosity")}
    assert hs.records[0].scores["helpsteer-helpfulness"] == 1.0  # label[4] = 4 on 0..4

    pku = loaded["pku-saferlhf"]["rated"]
    assert len(pku) == 2 * 5135 and {r.scores["pku-is_safe"] for r in pku} == {0.0, 1.0}


@needs_data
def test_prompts_and_bon(loaded):
    assert len(loaded["beavertails-prompts"]["prompts"]) == 140
    imdb = loaded["imdb"]["prompts"]
    assert len(imdb) == 1000 and all(isinstance(p, str) and 1 <= len(p.split()) <= 8 for p in imdb)
    hh_prompts = loaded["hh-rlhf"]["prompts"]
    assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in hh_prompts)
    bon = loaded["rewardbench-bon"]["bon"]
    assert len(bon) == 805 and bon.n_samples == 16 and bon.judged_samples == list(range(11))
    assert bon.report.n_skipped == 0
    p = bon.prompts[0]
    assert len(p.candidates) == 16 and p.judged() == list(range(11))
    assert all(0.0 <= w <= 1.0 for w in p.win_prob[:11]) and p.win_prob[11:] == [None] * 5


@needs_data
def test_ids_unique_within_each_set(loaded):
    for name, kinds in loaded.items():
        for kind in ("pairs", "rated"):
            if kind in kinds:
                ids = [r.id for r in kinds[kind]]
                assert len(ids) == len(set(ids)), (name, kind)


@needs_data
def test_default_training_and_eval_data():
    rated, pairs, reports = registry.load_default_training_data(DATA)
    assert {r.source for r in rated} >= {"ultrafeedback", "helpsteer2-fixture", "dices-990", "convabuse", "pku-saferlhf"}
    assert {p.source for p in pairs} == {"hh-rlhf", "ultrafeedback", "pku-saferlhf", "orca-dpo-pairs"}
    assert not {p.source for p in pairs} & {"llmbar", "autoj-pairwise"}  # evaluation only
    assert "hh-rlhf (pairs)" in reports
    _, eval_pairs, _ = registry.load_default_eval_data(DATA, test_fraction=0.2)
    assert {"llmbar", "autoj-pairwise"} <= {p.source for p in eval_pairs}
    train_keys = {p.id for p in split(pairs, "train", 0.2)}
    assert not train_keys & {p.id for p in eval_pairs}


def test_hh_transcript_parsing():
    t = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how to bake?\n\nAssistant: Preheat the oven."
    msgs = parse_hh_transcript(t)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    prompt, reply = split_final_reply(msgs)
    assert reply == "Preheat the oven." and prompt[-1] == {"role": "user", "content": "how to bake?"}
    assert parse_hh_transcript("no markers at all") is None
    assert split_final_reply(parse_hh_transcript("\n\nHuman: only a question")) is None
    # empty final assistant turn parses; the loader then counts it as an empty response
    assert parse_hh_transcript("\n\nHuman: q\n\nAssistant:")[-1] == {"role": "assistant", "content": ""}


def test_hh_pairs_from_file(tmp_path):
    rows = [
        {"chosen": "\n\nHuman: q1\n\nAssistant: good", "rejected": "\n\nHuman: q1\n\nAssistant: bad"},
        {"chosen": "\n\nHuman: q2\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"},
        {"chosen": "garbage", "rejected": "\n\nHuman: q3\n\nAssistant: b"},
    ]
    f = tmp_path / "hh.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = load_pairs_file(f, prompt=None)
    assert len(got) == 1 and got.records[0].prompt == [{"role": "user", "content": "q1"}] and got.records[0].chosen == "good"
    assert got.report.skipped == {"chosen/rejected prompts differ": 1, "unparseable text": 1}
    assert got.report.examples["chosen/rejected prompts differ"][0].startswith(f"{f}:2:")


def test_nemo_chat_parsing():
    t = "<extra_id_0>System\nBe nice.\n<extra_id_1>User\nhi\n<extra_id_1>Assistant\nhello there\n<extra_id_2>"
    assert parse_nemo_chat(t) == [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    assert parse_nemo_chat("plain text") is None


def test_generic_formats_and_rewardbench(tmp_path):
    rb = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r", "subset": "alpacaeval-easy", "id": 30 + i} for i in range(3)]
    (tmp_path / "rb.jsonl").write_text("\n".join(json.dumps(r) for r in rb))
    (tmp_path / "rb.json").write_text(json.dumps(rb))
    import pandas as pd

    pd.DataFrame(rb).to_parquet(tmp_path / "rb.parquet")
    pd.DataFrame(rb).to_csv(tmp_path / "rb.csv", index=False)
    for ext in ("jsonl", "json", "parquet", "csv"):
        got = registry.load_pairs(str(tmp_path / f"rb.{ext}"))
        assert [p.id for p in got] == ["rb:30", "rb:31", "rb:32"], ext
        assert got.records[0] == PreferencePair("p0", "c", "r", "rb", "rb:30", "alpacaeval-easy")
    rated = [{"q": "x", "a": "y", "meta": {"h": [1, 4]}}, {"q": "x2", "a": "y2", "meta": {"h": 2}}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rated))
    got = load_rated_file(tmp_path / "r.jsonl", prompt="q", response="a", attributes={"helpfulness": "meta.h"}, scale=(0, 4))
    assert got.records[0].scores == {"helpfulness": [0.25, 1.0]} and got.records[1].scores == {"helpfulness": 0.5}
    assert got.records[0].scales == {"helpfulness": (0.0, 4.0)}


@needs_data
def test_resolve_and_data_dir(tmp_path, monkeypatch):
    assert registry.resolve("hh", DATA).name == "hh-rlhf"
    assert registry.resolve("prometheus-mt-bench", DATA).name == "prometheus-mtbench"
    assert registry.resolve("allenai/reward-bench").kind == "hub"
    with pytest.raises(FileNotFoundError, match="not a dataset name"):
        registry.resolve("no-such-set")
    monkeypatch.setenv("DISTRM_DATA_DIR", str(DATA))
    assert registry.default_data_dir() == DATA
    monkeypatch.setenv("DISTRM_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data-dir"):
        registry.load_pairs("orca")


def test_hub_offline_fails_clearly():
    code = (
        "from distrm.data import registry\n"
        "try:\n    registry.load_pairs('allenai/reward-bench')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("HubUnavailable could not reach the Hugging Face Hub for 'allenai/reward-bench'")
    assert "pass a local file" in out


@needs_data
def test_cli_inspect(tmp_path, capsys):
    from distrm.cli import main

    out_json = tmp_path / "s.json"
    assert main(["data", "inspect", "llmbar", "--data-dir", str(DATA), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "llmbar [pairs]: 419 records" in text and "chosen length" in text
    stats = json.loads(out_json.read_text())
    assert stats["llmbar"]["pairs"]["subsets"]["llmbar-adver-neighbor"] == 134
    assert main(["data", "inspect", "dices-350", "--data-dir", str(DATA)]) == 0
    text = capsys.readouterr().out
    assert "attribute dices-safe: scale 0..1, 350 records" in text and "leaves this attribute out" not in text
    # the 8-row HelpSteer2 format fixture: every attribute is flagged as too thin to train on
    assert main(["data", "inspect", "helpsteer2-fixture", "--data-dir", str(DATA), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    attrs = json.loads(out_json.read_text())["helpsteer2-fixture"]["rated"]["attributes"]
    assert len(attrs) == 5 and all(a["below_training_minimum"] and a["distinct_items"] == 8 for a in attrs.values())
    assert text.count("`distrm train` leaves this attribute out") == 5
