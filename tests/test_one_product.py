"""One product: every model type distrm writes -- a QRM, a bootstrap BT ensemble and a
bootstrap quantile ensemble and the two DPL heads from ``distrm train``, the single-head reward model from ``distrm
finetune-backbone`` -- goes through the same commands and adapters unchanged: ``distrm score``,
the HTTP server (a real round trip), ``distrm eval pairs``, ``distrm bon`` and the RL reward
function. Real shared data, real backbones (MiniLM; SmolLM2-135M for the fine-tuned one),
sized for CI."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch

from distrm.cli import main
from distrm.models.auto import AutoRewardModel
from distrm.rl.prompts import default_data_dir
from distrm.rl.rewards import DistributionalRewardFunction
from distrm.serve.config import ServeConfig

from _serve_support import running_server

PROMPTS = ["How do I pick a lock?", [{"role": "user", "content": "What is 2 + 2?"}]]
RESPONSES = ["Call a locksmith.", "4"]
KINDS = ["qrm", "ensemble", "quantile_ensemble", "dpl_mean_variance", "dpl_categorical", "finetuned"]


@pytest.fixture(params=KINDS)
def model_dir(request) -> tuple[str, Path]:
    fixture = {"qrm": "trained_qrm", "ensemble": "trained_ensemble", "quantile_ensemble": "trained_quantile_ensemble",
               "dpl_mean_variance": "trained_dpl_mean_variance", "dpl_categorical": "trained_dpl_categorical",
               "finetuned": "finetuned"}[request.param]
    d = request.getfixturevalue(fixture)
    return request.param, (d / "reward_model" if request.param == "finetuned" else d)


@pytest.mark.slow
def test_every_model_type_through_every_entry_point(model_dir, tmp_path, capsys):
    kind, d = model_dir
    model = AutoRewardModel.from_pretrained(d)
    assert model.model_type == {"finetuned": "ensemble", "dpl_mean_variance": "dpl", "dpl_categorical": "dpl"}.get(kind, kind)
    want = model.score(PROMPTS, RESPONSES)
    assert torch.isfinite(want.reward.values).all()
    cvar = want.reward.cvar(0.1)

    # distrm score (the one loader, any type)
    capsys.readouterr()
    assert main(["score", str(d), "--prompt", PROMPTS[0], "--response", RESPONSES[0], "--risk", "cvar:alpha=0.1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["mean"] == pytest.approx(float(want.mean[0]), abs=1e-5)
    assert row["risk"]["cvar:alpha=0.1"] == pytest.approx(float(cvar[0]), abs=1e-5)

    # the HTTP server: /score and OpenRLHF's /get_reward reproduce model.score
    with running_server(d, ServeConfig(max_batch=8, reward_risk="cvar:alpha=0.1")) as url:
        meta = httpx.get(f"{url}/metadata", timeout=60).json()
        assert meta["model_type"] == model.model_type and meta["reward_risk"] == "cvar:alpha=0.1"
        items = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)]
        res = httpx.post(f"{url}/score", json={"items": items, "risks": ["cvar:alpha=0.1"]}, timeout=120).json()
        assert [r["mean"] for r in res["results"]] == pytest.approx(want.mean.tolist(), abs=1e-5)
        rr = httpx.post(f"{url}/get_reward", json={"query": [PROMPTS[0] + RESPONSES[0]], "prompts": [PROMPTS[0]]},
                        timeout=120).json()
        assert rr["rewards"][0] == pytest.approx(float(cvar[0]), abs=1e-5)

    # distrm eval pairs on a real shared preference set
    out = tmp_path / "eval"
    assert main(["eval", "pairs", "--model", str(d), "--sets", "llmbar", "--max-pairs", "12", "--risk", "cvar:alpha=0.1",
                 "--output-dir", str(out), "--store", str(tmp_path / "store"), "--no-length"]) == 0  # fmt: skip
    rows = json.loads((out / "pairs.json").read_text())["rows"]
    assert rows and all(0.0 <= r.get("accuracy", 0.5) <= 1.0 for r in rows if isinstance(r, dict))

    # distrm bon on RewardBench's AlpacaEval best-of-N data
    bon = tmp_path / "bon.json"
    assert main(["bon", str(d), "--data-dir", str(default_data_dir()), "--max-prompts", "4", "--n-candidates", "3",
                 "--n-boot", "100", "--risk", "cvar:alpha=0.2", "--store", str(tmp_path / "store"),
                 "--out", str(bon)]) == 0  # fmt: skip
    res = json.loads(bon.read_text())
    assert res["n_prompts"] == 4 and "cvar:alpha=0.2" in res["by_risk"]

    # the RL reward adapter (TRL's reward_funcs signature), by risk measure
    fn = DistributionalRewardFunction(model, risk="cvar:alpha=0.1")
    got = fn(prompts=PROMPTS, completions=RESPONSES)
    assert got == pytest.approx(cvar.tolist(), abs=1e-5)
