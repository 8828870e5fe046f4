"""End to end on real shared data (slow): the length reference row on LLMBar through the
registry must match a count made straight from the raw files, and a tiny QRM trained on
MiniLM features goes through `eval pairs` and `eval calibration`. Skipped until the data
registry / backbone modules exist in this checkout."""

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.slow


def _need(*mods: str) -> None:
    """The project's own modules are imported (an import error fails the test); only the shared
    data folder, which lives outside the repository, may be absent."""
    import importlib

    for m in mods:
        importlib.import_module(m)
    if not DATA.is_dir():
        pytest.skip("shared data not found")


def test_length_row_on_llmbar_matches_raw_count():
    _need("distrm.data.registry", "distrm.data.splits")
    from distrm.eval.pairs import load_shared_set, run_pairs

    ps = load_shared_set("llmbar", str(DATA), set(), 0.2)
    want_total, want_correct = 0, 0
    for f in sorted((DATA / "llmbar").glob("LLMBar_*.json")):
        for r in json.loads(f.read_text()):
            c, j = (r["output_1"], r["output_2"]) if r["label"] == 1 else (r["output_2"], r["output_1"])
            want_total += 1
            want_correct += len(c) > len(j)
    assert len(ps.pairs) == want_total
    res = run_pairs([], sets=["llmbar"], data_dir=str(DATA), log=lambda s: None)
    subs = res["rows"][-1]["result"]["subsets"]
    assert sum(v["total"] for v in subs.values()) == want_total
    assert sum(v["correct"] for v in subs.values()) == want_correct


def test_tiny_qrm_pairs_and_calibration(tmp_path):
    _need("distrm.data.registry", "distrm.data.splits", "distrm.features.backbones", "distrm.features", "distrm.heads.quantile")
    from distrm.cli.train import default_config_path
    from distrm.config import TrainConfig, load_config
    from distrm.eval.calibration import run_calibration
    from distrm.eval.pairs import run_pairs
    from distrm.training.qrm import train

    out = tmp_path / "qrm"
    cfg = load_config(TrainConfig, default_config_path(), [f"output_dir={out}", "data.max_rows_per_source=60", "gate.epochs=3",
                                                          f"data.data_dir={DATA}", "progress=false"])  # fmt: skip
    train(cfg)
    res = run_pairs([str(out)], sets=["llmbar"], data_dir=str(DATA), max_pairs=40, risks=["cvar:alpha=0.1"], log=lambda s: None)
    assert [r["risk"] for r in res["rows"]] == ["mean", "cvar:alpha=0.1", None]
    cal = run_calibration([str(out)], sets=["dices-350"], data_dir=str(DATA), max_items=30, log=lambda s: None)
    assert len(cal["results"]) == 2  # the model and the ridge+Gaussian baseline
