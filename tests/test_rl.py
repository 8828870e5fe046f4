"""Risk-aware RL: the TRL reward adapter, the per-sample KL hook, best-of-N, the CLI smoke run."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from distrm.distribution import RewardDistribution
from distrm.risk import RISK_MEASURES
from distrm.rl.bon import candidate_scores, evaluate_picks, load_rewardbench_bon, select
from distrm.rl.rewards import DistributionalRewardFunction, RiskMeasure, completion_from_trl, prompt_from_trl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


class _Out:
    def __init__(self, reward: RewardDistribution) -> None:
        self.reward = reward


class StubModel:
    """Deterministic distributions from the response text; records what it was asked."""

    def __init__(self, kind: str = "ensemble") -> None:
        self.kind = kind
        self.calls: list[tuple[list, list]] = []

    def values(self, response: str) -> list[float]:
        n = len(response.split())
        spread = 0.1 * (1 + len(response) % 3)
        return [0.2 * n + spread * (k - 2) + (0.5 * spread if k == 0 else 0.0) for k in range(5)]

    def score(self, prompts, responses):
        self.calls.append((list(prompts), list(responses)))
        v = torch.tensor([self.values(r) for r in responses], dtype=torch.float64)
        if self.kind == "ensemble":
            return _Out(RewardDistribution.from_members(v))
        return _Out(RewardDistribution.from_quantiles(v, [0.1, 0.3, 0.5, 0.7, 0.9]))


SPECS = {
    "mean": "mean",
    "exp_utility": "exp_utility:lam=2",
    "certainty_equivalent": "certainty_equivalent:lam=2",
    "cvar": "cvar:alpha=0.2",
    "quantile": "quantile:tau=0.1",
    "mean_minus_std": "mean_minus_std:c=1.5",
    "mean_minus_variance": "mean_minus_variance:beta=0.5",
}


# ---------------------------------------------------------------------------- reward adapter
@pytest.mark.parametrize("kind", ["ensemble", "quantile"])
@pytest.mark.parametrize("measure", RISK_MEASURES)
def test_adapter_every_risk_measure_matches_distribution(kind: str, measure: str) -> None:
    model = StubModel(kind)
    rf = DistributionalRewardFunction(model, SPECS[measure])
    completions = ["good answer", "a much longer and more careful answer", "no"]
    out = rf(prompts=["q1", "q2", "q3"], completions=completions)
    dist = model.score([], completions).reward
    name, params = RiskMeasure.parse(SPECS[measure]).name, RiskMeasure.parse(SPECS[measure]).params
    expected = dist.risk(name, **params)
    assert out == pytest.approx(expected.tolist(), rel=1e-9, abs=1e-12)
    assert rf.__name__ == f"distrm_{measure}"
    if measure != "mean":  # risk-averse measures sit below the mean for these spread-out distributions
        assert all(o < m for o, m in zip(out, dist.mean().tolist()))


def test_adapter_chat_format_and_trl_kwargs() -> None:
    model = StubModel()
    logged: dict[str, float] = {}
    extra: dict[str, list] = {}
    rf = DistributionalRewardFunction(model, "cvar:alpha=0.25", name="qrm_cvar")
    prompts = [[{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]] * 2
    completions = [[{"role": "assistant", "content": "hello there"}], [{"role": "assistant", "content": [{"type": "text", "text": "yo"}]}]]
    out = rf(
        prompts=prompts, completions=completions, completion_ids=[[1, 2], [3]], trainer_state=None,
        log_metric=lambda k, v: logged.__setitem__(k, v), log_extra=lambda k, v: extra.__setitem__(k, v), some_column=["a", "b"],
    )
    assert len(out) == 2 and all(isinstance(x, float) for x in out)
    seen_prompts, seen_responses = model.calls[0]
    assert seen_responses == ["hello there", "yo"]
    assert seen_prompts[0] == [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    for t in ("0.05", "0.10", "0.15", "0.20", "0.25"):
        assert f"qrm_cvar/q{t}" in logged
    assert logged["qrm_cvar/dist_mean"] == pytest.approx(sum(sum(model.values(r)) / 5 for r in seen_responses) / 2)
    assert len(extra["qrm_cvar/dist_mean"]) == 2
    assert rf.history[-1]["n_scored"] == 2


def test_adapter_none_and_nonfinite_handling(tmp_path: Path) -> None:
    class NaNModel(StubModel):
        def score(self, prompts, responses):
            o = super().score(prompts, responses)
            v = o.reward.values.clone()
            v[0] = float("nan")  # the model failed on the first scorable row
            return _Out(RewardDistribution.from_members(v))

    model = NaNModel()
    rf = DistributionalRewardFunction(model, "mean", log_path=tmp_path / "r.jsonl")
    out = rf(prompts=["a", None, "c", "d"], completions=["x y", "z", None, "w"])
    assert out[0] is None  # NaN from the model -> None (excluded by TRL), never a number
    assert out[1] is None and out[2] is None  # no prompt / no completion: not sent to the model
    assert isinstance(out[3], float)
    assert model.calls[0] == (["a", "d"], ["x y", "w"])
    assert math.isnan(rf.last_variance[1]) and math.isnan(rf.last_variance[2])
    assert rf(prompts=[None], completions=["x"]) == [None]
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [x["n_scored"] for x in lines] == [1, 0]  # the NaN row is not counted as scored


def test_risk_measure_validation() -> None:
    assert RiskMeasure.parse("ce:lam=3").name == "certainty_equivalent"
    assert RiskMeasure.parse({"name": "cvar", "alpha": 0.1}).spec == "cvar:alpha=0.1"
    for bad in ["exp_utility", "quantile", "cvar:alpha=0", "cvar:tau=0.1", "median", "quantile:tau=2", "exp_utility:lam=0"]:
        with pytest.raises(ValueError):
            RiskMeasure.parse(bad)
    with pytest.raises(TypeError):
        DistributionalRewardFunction(object(), "mean")


def test_trl_format_helpers() -> None:
    assert prompt_from_trl("x") == "x"
    assert prompt_from_trl({"role": "user", "content": "q"}) == [{"role": "user", "content": "q"}]
    assert completion_from_trl([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\n\nb"
    assert completion_from_trl(None) is None


# ---------------------------------------------------------------------------- KL weights
def test_kl_weights_formulas() -> None:
    import trl  # noqa: F401  (a dependency of distrm[rl]: missing = a failure, not a skip)
    from distrm.rl.kl import kl_weights

    v = torch.tensor([1.0, 2.0, 3.0, float("nan")])
    assert kl_weights(v, "ratio", clip=None).tolist() == pytest.approx([0.5, 1.0, 1.5, 1.0])
    assert kl_weights(v, "affine", c=2.0, clip=None).tolist() == pytest.approx([2.0, 3.0, 4.0, 1.0])
    assert kl_weights(v, "raw", c=0.1, clip=None).tolist() == pytest.approx([0.1, 0.2, 0.3, 1.0])
    assert kl_weights(torch.tensor([0.0, 100.0]), "ratio", clip=(0.1, 1.5)).tolist() == pytest.approx([0.1, 1.5])
    with pytest.raises(ValueError):
        kl_weights(v, "nope")


def _tiny_policy(tmp_path: Path) -> str:
    """A random-init 1-layer Llama with a word-level tokenizer, saved so TRL can build its
    reference copy from the path. Random weights are fine: this tests the trainer's arithmetic."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>"] + "the a movie was good bad great awful plot acting i liked hated it and but very".split()
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    d = tmp_path / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def _seq_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attn = torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits[:, -completion_ids.shape[1] - 1 : -1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return (lp * completion_mask).sum(1)


@pytest.mark.parametrize("weighting", ["ratio", "affine"])
def test_variance_weighted_rloo_advantages_match_formula(tmp_path: Path, weighting: str) -> None:
    import trl  # noqa: F401  (a dependency of distrm[rl]: missing = a failure, not a skip)
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RLOOConfig

    from distrm.rl.kl import VarianceWeightedRLOOTrainer, kl_weights

    path = _tiny_policy(tmp_path)
    rf = DistributionalRewardFunction(StubModel(), "mean")
    beta, c, clip = 0.5, 2.0, (0.1, 10.0)
    args = RLOOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
        beta=beta, max_steps=1, report_to=[], use_cpu=True, bf16=False, save_strategy="no", seed=0, gradient_checkpointing=False,
    )
    tr = VarianceWeightedRLOOTrainer(
        model=path, reward_funcs=[rf], args=args, train_dataset=Dataset.from_dict({"prompt": ["the movie was", "i liked the"]}),
        processing_class=AutoTokenizer.from_pretrained(path), kl_weighting=weighting, kl_c=c, kl_clip=clip,
    )
    with torch.no_grad():  # move the policy off the reference so KL_i != 0
        for p in tr.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    tr.model.train()
    out = tr._generate_and_score_completions([{"prompt": "the movie was"}] * 2 + [{"prompt": "i liked the"}] * 2)

    pol = _seq_logps(tr.model, out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"])
    assert torch.allclose(pol, out["old_logps"], atol=1e-4)  # our forward reproduces TRL's log-probs
    ref = _seq_logps(tr.ref_model, out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"])
    kl = pol - ref
    assert kl.abs().max() > 1e-3
    r = torch.tensor(rf.last_rewards, dtype=torch.float32)
    w = kl_weights(rf.last_variance, weighting, c, clip).float()
    assert w.std() > 0  # the stub gives different variances, so weighting matters
    shaped = r - beta * w * kl
    g = shaped.view(-1, 2)
    expected = (g - g.flip(1)).view(-1)  # k = 2: baseline is the sibling's shaped reward
    assert torch.allclose(out["advantages"], expected, atol=1e-4)
    vanilla = (r - beta * kl).view(-1, 2)
    assert not torch.allclose(out["advantages"], (vanilla - vanilla.flip(1)).view(-1), atol=1e-4)
    assert tr.beta.applied == 1 and tr.beta.weights is None
    assert tr._metrics["train"]["kl_weight/mean"]


def test_variance_weighted_trainer_refuses_without_variance(tmp_path: Path) -> None:
    import trl  # noqa: F401  (a dependency of distrm[rl]: missing = a failure, not a skip)
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RLOOConfig

    from distrm.rl.kl import VarianceWeightedRLOOTrainer

    path = _tiny_policy(tmp_path)
    args = RLOOConfig(output_dir=str(tmp_path / "o"), per_device_train_batch_size=2, max_steps=1, report_to=[], use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="last_variance"):
        VarianceWeightedRLOOTrainer(
            model=path, reward_funcs=[lambda prompts, completions, **k: [0.0] * len(prompts)], args=args,
            train_dataset=Dataset.from_dict({"prompt": ["the"]}), processing_class=AutoTokenizer.from_pretrained(path),
        )


# ---------------------------------------------------------------------------- best-of-N
def test_bon_selection_logic() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.5], [float("nan"), 0.2, 0.1], [1.0, 2.0, 3.0], [float("nan")] * 3])
    valid = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert select(scores, valid).tolist() == [1, 1, 1, -1]  # tie -> lowest index; NaN / masked never picked
    pref = torch.tensor([[1.2, 1.9, 1.5], [1.0, 1.6, 1.1], [1.3, 1.4, 1.8], [1.5, 1.5, 1.5]])
    m = evaluate_picks(torch.tensor([1, 1, 0, -1]), pref)
    assert m.n_prompts == 3
    assert m.win_rate == pytest.approx(2 / 3) and m.loss_rate == pytest.approx(1 / 3)
    assert m.soft_win_rate == pytest.approx((0.9 + 0.6 + 0.3) / 3)


def test_bon_risk_changes_the_pick() -> None:
    # candidate 0: high mean, fat left tail; candidate 1: slightly lower mean, tight
    members = torch.tensor([[[-2.0, 3.0, 3.0, 3.0], [1.4, 1.5, 1.5, 1.6]]]).reshape(2, 4)
    dist = RewardDistribution.from_members(members)
    assert select(candidate_scores(dist, 2, "mean")).tolist() == [0]
    assert select(candidate_scores(dist, 2, "cvar:alpha=0.25")).tolist() == [1]
    assert select(candidate_scores(dist, 2, "mean_minus_std:c=1")).tolist() == [1]
    with pytest.raises(ValueError):
        candidate_scores(dist, 3, "mean")


def test_bon_paired_bootstrap() -> None:
    from distrm.rl.bon import paired_bootstrap, pick_outcomes, random_pick_outcomes

    g = torch.Generator().manual_seed(0)
    pref = 1 + torch.rand(400, 4, generator=g)
    best, worst = pref.argmax(1), pref.argmin(1)
    outs = {"mean": pick_outcomes(worst, pref), "same": pick_outcomes(worst, pref), "better": pick_outcomes(best, pref),
            "random": random_pick_outcomes(pref)}
    ci = paired_bootstrap(outs, "mean", n_boot=2000)
    w = ci["mean"]["win"]
    assert w["value"] == pytest.approx(float((pref.min(1).values > 1.5).double().mean()))
    assert w["ci"][0] <= w["value"] <= w["ci"][1] and "diff" not in w
    assert ci["same"]["win"]["diff"] == 0 and ci["same"]["win"]["diff_ci"] == [0.0, 0.0] and ci["same"]["win"]["p_two_sided"] == 1.0
    b = ci["better"]
    assert b["win"]["diff_ci"][0] > 0 and b["loss"]["diff_ci"][1] < 0 and b["win"]["p_two_sided"] < 0.01
    # the random pick's expected win rate lies between the worst and the best pick
    assert w["value"] < ci["random"]["win"]["value"] < b["win"]["value"]
    # paired: the CI of the difference is narrower than the two marginal CIs side by side
    r = ci["random"]["soft_win"]
    assert r["diff_ci"][1] - r["diff_ci"][0] < (r["ci"][1] - r["ci"][0]) + (ci["mean"]["soft_win"]["ci"][1] - ci["mean"]["soft_win"]["ci"][0])
    with pytest.raises(ValueError, match="baseline"):
        paired_bootstrap(outs, "nope")
    with pytest.raises(ValueError, match="one value per prompt"):
        paired_bootstrap({"mean": outs["mean"], "short": pick_outcomes(best[:10], pref[:10])}, "mean")
    with pytest.raises(ValueError, match="every prompt"):
        pick_outcomes(torch.tensor([0, -1]), pref[:2])


@pytest.mark.skipif(not (DATA / "rewardbench-bon").is_dir(), reason="shared rewardbench-bon data not present")
def test_load_rewardbench_bon_aligned() -> None:
    d = load_rewardbench_bon(DATA / "rewardbench-bon", n_candidates=3, max_prompts=20)
    assert len(d.ids) == 20 and d.preference.shape == (20, 3)
    assert bool(((d.preference >= 1) & (d.preference <= 2)).all())
    assert all(len(c) == 3 and all(isinstance(x, str) for x in c) for c in d.candidates)


# ---------------------------------------------------------------------------- CLI smoke
def _cli(argv: list[str]) -> int:
    """``distrm`` main if the whole CLI imports, else a parser with only the rl command
    (other command modules may be mid-development in this checkout)."""
    try:
        from distrm.cli import build_parser, main

        build_parser()
    except ImportError:
        from distrm.cli import rl

        p = argparse.ArgumentParser(prog="distrm")
        rl.register(p.add_subparsers(dest="command"))
        a = p.parse_args(argv)
        return int(a.func(a) or 0)
    return main(argv)


def _assert_tail_ordered(rec: dict, where: str) -> None:
    qs = [rec[f"q{t:.2f}"] for t in (0.05, 0.1, 0.15, 0.2, 0.25)]
    assert all(q is not None and math.isfinite(q) for q in qs), f"{where}: non-finite tail quantiles {qs}"
    assert all(a <= b + 1e-12 for a, b in zip(qs, qs[1:])), f"{where}: tail quantiles not non-decreasing {qs}"


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "hh-rlhf").is_dir(), reason="shared data not present")
def test_distrm_rl_rloo_smoke(tmp_path: Path) -> None:
    """A distrm ensemble trained through the library on real HH-RLHF pairs, saved, loaded by
    ``distrm rl rloo`` through the hub loader, then 3 real TRL RLOO steps on SmolLM2 + LoRA."""
    import peft  # noqa: F401  (a dependency of distrm[rl]: missing = a failure, not a skip)
    import trl  # noqa: F401
    from safetensors.torch import load_file

    from distrm.config import BackboneConfig, DataConfig, EnsembleConfig, TrainConfig
    from distrm.models.bt_ensemble import EnsembleRewardModel
    from distrm.training.bt_ensemble import train_ensemble
    from distrm.models.auto import load_reward_model

    rm = tmp_path / "reward"
    train_ensemble(TrainConfig(
        output_dir=str(rm), model="ensemble", progress=False,
        data=DataConfig(data_dir=str(DATA), rated=[], pairs=["hh-rlhf"], max_rows_per_source=300),
        backbone=BackboneConfig(name="minilm", dtype="bfloat16", batch_size=64, store=str(tmp_path / "features")),
        ensemble=EnsembleConfig(n_members=5, bootstrap=True, optimizer="lbfgs"),
    ))
    loaded = load_reward_model(rm)
    assert isinstance(loaded, EnsembleRewardModel) and loaded.config.n_members == 5
    assert bool((loaded.coef != 0).any())

    out = tmp_path / "run"
    rc = _cli([
        "rl", "rloo", "--config", str(ROOT / "configs" / "rl" / "rloo-tiny.yaml"), "--output-dir", str(out),
        "--reward-model", str(rm), "--risk", "cvar:alpha=0.25",
        "--set", "trainer.max_steps=3", "--set", "trainer.max_completion_length=8", "--set", "trainer.learning_rate=1e-3",
        "--set", "prompts.n_eval=2", "--set", "eval.judges=[vader]", "--set", f"prompts.data_dir={DATA}",
    ])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 3
    assert [e["step"] for e in m["evals"]] == [0, 3]

    # the policy's LoRA adapter moved: every lora_B (PEFT initialises them to zero) and in all
    # most of the adapter tensors differ from their values before training
    ch = m["lora_change"]
    n_b = ch["n_tensors"] // 2
    assert ch["n_tensors"] > 0 and ch["n_lora_B_changed"] == n_b, ch
    assert ch["n_changed"] >= n_b and ch["max_abs_change"] > 0 and ch["relative_change"] > 0, ch
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    b_tensors = [v for k, v in saved.items() if "lora_B" in k]
    assert len(b_tensors) == n_b and all(bool((v != 0).any()) for v in b_tensors)

    # logged reward distribution: every training batch and every held-out eval has a finite
    # mean and finite, ordered tail quantiles q0.05 <= ... <= q0.25
    batches = m["reward_batches"]
    assert len(batches) >= 3 and all(b["risk"] == "cvar:alpha=0.25" for b in batches)
    for i, b in enumerate(batches):
        assert b["n_scored"] == b["n"] and math.isfinite(b["dist_mean"]) and math.isfinite(b["risk_mean"])
        _assert_tail_ordered(b, f"reward batch {i}")
        assert b["risk_mean"] <= b["dist_mean"] + 1e-9  # CVaR never exceeds the mean
    for e in m["evals"]:
        assert math.isfinite(e["reward_mean"])
        _assert_tail_ordered(e, f"eval at step {e['step']}")
    # ... and reached the trainer's own log through TRL's log_metric hook
    logged = [x for x in m["train_log"] if any(k.endswith("/q0.05") for k in x)]
    assert logged, "no reward quantiles in the trainer log"
    assert any("kl" in x for x in m["train_log"])


def test_trainer_args_fix_yaml_number_strings() -> None:
    import trl
    from distrm.rl.rloo import trainer_args

    # YAML 1.1 reads 1e-3 as a string; it must reach the optimizer as a float
    a = trainer_args({"learning_rate": "1e-3", "max_steps": "3", "beta": 0.05}, trl.RLOOConfig)
    assert a == {"learning_rate": 1e-3, "max_steps": 3, "beta": 0.05}
    assert isinstance(a["learning_rate"], float) and isinstance(a["max_steps"], int)
    with pytest.raises(ValueError, match="trainer.learning_rate"):
        trainer_args({"learning_rate": "fast"}, trl.RLOOConfig)
    with pytest.raises(ValueError, match="trainer.learnin_rate"):
        trainer_args({"learnin_rate": 1e-3}, trl.RLOOConfig)


def test_hh_dialogue_prompt_parsing() -> None:
    from distrm.rl.prompts import hh_dialogue

    t = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant: I can't help with that."
    assert hh_dialogue(t) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how do I pick a lock?"},
    ]
    assert hh_dialogue("no turns here") is None


@pytest.mark.skipif(not (DATA / "hh-rlhf").is_dir(), reason="shared data not present")
def test_prompt_split_is_disjoint_and_seed_independent() -> None:
    from distrm.data.records import prompt_key
    from distrm.rl.prompts import load_prompts

    a = load_prompts(["beavertails", "imdb"], DATA, n_train=None, n_eval=None, seed=0)
    b = load_prompts(["beavertails", "imdb"], DATA, n_train=None, n_eval=None, seed=1)
    assert {prompt_key(p) for p in a.train}.isdisjoint(prompt_key(p) for p in a.eval)
    assert a.eval == b.eval and a.train != b.train  # held-out set fixed; only the order of training prompts moves
    assert isinstance(a.eval[0], (str, list))


@pytest.mark.skipif(not (DATA / "rewardbench-bon").is_dir(), reason="shared rewardbench-bon data not present")
def test_distrm_bon_cli_reports_rates_with_cis(tmp_path: Path, capsys) -> None:
    """`distrm bon` end to end: a saved distrm model scores real candidates; every rule gets
    win/loss rates inside [0, 1] with CIs around them, and paired differences vs mean-picking."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _serve_support import build_model_dir

    model = build_model_dir(tmp_path / "model")
    out = tmp_path / "bon.json"
    rc = _cli(["bon", str(model), "--data-dir", str(DATA), "--max-prompts", "6", "--n-candidates", "3", "--n-boot", "200",
               "--risk", "cvar:alpha=0.2", "--store", str(tmp_path / "store"), "--out", str(out),
               "--plot", str(tmp_path / "bon.png")])
    assert rc == 0
    assert (tmp_path / "bon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads(out.read_text())
    assert res["n_prompts"] == 6 and res["n_candidates"] == 3
    assert set(res["by_risk"]) == {"mean", "cvar:alpha=0.2"}
    for spec, v in res["by_risk"].items():
        lo, hi = v["ci"]["win"]["ci"]
        assert 0 <= lo <= v["win_rate"] <= hi <= 1
        assert v["win_rate"] + v["loss_rate"] <= 1 + 1e-9  # a verdict of exactly 1.5 is neither
    assert "diff_ci" in res["by_risk"]["cvar:alpha=0.2"]["ci"]["win"]
    assert "best-of-3" in capsys.readouterr().out
