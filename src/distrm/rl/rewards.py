"""Any distrm reward model as a TRL reward function.

TRL's ``RLOOTrainer`` / ``GRPOTrainer`` call each reward function as
``f(prompts=, completions=, completion_ids=, <dataset columns>, trainer_state=, log_extra=,
log_metric=)`` and expect one float (or ``None``: "not scorable", excluded from the
leave-one-out baseline) per completion. A distributional model returns a whole reward
distribution per completion, so the adapter reduces it with a *risk measure* chosen by
config (``"mean"``, ``"cvar:alpha=0.1"``, ``"exp_utility:lam=5"``, ...). That one string is
the whole difference between risk-neutral and risk-aware RLHF (QRM section 3.5).

It also keeps what a scalar reward throws away: per batch, the distribution's mean and its
left-tail quantiles (tau = 0.05 .. 0.25, the paper's Figure 3) go to ``history`` (and a JSONL
file), and to the trainer's metrics through TRL's ``log_metric`` hook when one is attached.
The per-completion variance of the last batch is kept for the variance-weighted KL hook
(:mod:`distrm.rl.kl`).
"""

from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from distrm.distribution import RewardDistribution
from distrm.risk import RISK_MEASURES, RiskMeasure  # noqa: F401  (re-exported)

# the tail levels QRM's Figure 3 tracks
TAIL_LEVELS: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20, 0.25)

class ScoresDistributions(Protocol):
    """What the adapter needs from a model: DistributionalRewardModel, EnsembleRewardModel
    or anything else whose ``score`` returns an object with a ``.reward`` distribution."""

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> Any: ...


def prompt_from_trl(prompt: Any) -> Any:
    """TRL prompt (plain text or a list of chat messages) -> a distrm ``Prompt``.

    Messages keep only role and text: multimodal content parts are reduced to their text
    parts, since the reward backbones are text-only. ``None`` stays ``None`` (unscorable)."""
    if prompt is None or isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):  # a single message
        prompt = [prompt]
    out = []
    for m in prompt:
        out.append({"role": str(m.get("role", "user")), "content": _text_of(m.get("content"))})
    return out


def completion_from_trl(completion: Any) -> str | None:
    """TRL completion (text, one message, or a list of messages) -> response text.

    A conversational completion is ``[{"role": "assistant", "content": ...}]``; several
    messages (tool calls, multi-part answers) are joined with a blank line."""
    if completion is None or isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _text_of(completion.get("content"))
    return "\n\n".join(_text_of(m.get("content")) for m in completion if isinstance(m, dict))


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image"}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return str(content)


class DistributionalRewardFunction:
    """A distrm model as a TRL reward function, reduced by a risk measure.

    Args:
        model: anything with ``score(prompts, responses)`` returning ``.reward`` (a
            :class:`RewardDistribution` over the n pairs).
        risk: the risk measure (spec string, dict or :class:`RiskMeasure`); ``"mean"`` is the
            risk-neutral baseline.
        name: the name TRL logs the reward under (``rewards/<name>/mean``); defaults to
            ``distrm_<measure>``.
        log_path: optional JSONL file; one line per scored batch.
        tail_levels: quantile levels logged per batch.
        batch_size: passed to ``model.score`` when it accepts one (feature extraction).
        keep_history: keep per-batch stats in memory (``history``); cheap, on by default.
    """

    def __init__(
        self,
        model: ScoresDistributions,
        risk: "str | dict[str, Any] | RiskMeasure" = "mean",
        name: str | None = None,
        log_path: str | Path | None = None,
        tail_levels: Sequence[float] = TAIL_LEVELS,
        batch_size: int | None = None,
        keep_history: bool = True,
    ) -> None:
        if not callable(getattr(model, "score", None)):
            raise TypeError(f"{type(model).__name__} has no score(prompts, responses) method")
        self.model = model
        self.risk = RiskMeasure.parse(risk)
        # TRL names reward functions by __name__ (falls back to the class name otherwise)
        self.__name__ = name or f"distrm_{self.risk.name}"
        self.tail_levels = tuple(float(t) for t in tail_levels)
        self.batch_size = batch_size
        self.keep_history = keep_history
        self.log_path = Path(log_path) if log_path else None
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, Any]] = []
        # per completion of the last call (NaN where unscored): read by the KL hook
        self.last_variance: torch.Tensor = torch.empty(0)
        self.last_rewards: list[float | None] = []
        self.last_distribution: RewardDistribution | None = None
        self._calls = 0
        self._accepts_batch_size = "batch_size" in _signature_params(model.score)

    def __repr__(self) -> str:
        return f"DistributionalRewardFunction(name={self.__name__!r}, risk={self.risk.spec!r})"

    # ------------------------------------------------------------------ scoring
    def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> tuple[list[float | None], RewardDistribution | None, list[int]]:
        """Score a batch: (rewards with None where unscorable, the distribution of the
        scorable rows, their indices). Public so evaluation can reuse exactly the RL path."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        ps = [prompt_from_trl(p) for p in prompts]
        cs = [completion_from_trl(c) for c in completions]
        keep = [i for i, (p, c) in enumerate(zip(ps, cs)) if p is not None and c is not None]
        out: list[float | None] = [None] * len(ps)
        if not keep:
            return out, None, keep
        kwargs = {"batch_size": self.batch_size} if (self.batch_size and self._accepts_batch_size) else {}
        scored = self.model.score([ps[i] for i in keep], [cs[i] for i in keep], **kwargs)
        dist = scored.reward if hasattr(scored, "reward") else scored
        if not isinstance(dist, RewardDistribution):
            raise TypeError(f"model.score must give a RewardDistribution in .reward, got {type(dist).__name__}")
        if dist.values.shape[0] != len(keep):
            raise ValueError(f"model scored {dist.values.shape[0]} pairs, expected {len(keep)}")
        vals = self.risk(dist).double()
        for j, i in enumerate(keep):
            v = float(vals[j])
            out[i] = v if math.isfinite(v) else None  # a NaN/inf reward would poison the baseline
        return out, dist, keep

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        **_columns: Any,
    ) -> list[float | None]:
        """TRL's reward-function signature; extra dataset columns are accepted and ignored."""
        t0 = time.perf_counter()
        rewards, dist, keep = self.score(prompts, completions)
        var = torch.full((len(rewards),), float("nan"), dtype=torch.float64)
        if dist is not None:
            var[keep] = dist.variance().double().cpu()
        self.last_variance = var
        self.last_rewards = list(rewards)
        self.last_distribution = dist
        stats = self._batch_stats(rewards, dist, trainer_state, time.perf_counter() - t0)
        self._calls += 1
        if self.keep_history:
            self.history.append(stats)
        if self.log_path:
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(stats) + "\n")
        if log_metric is not None:
            for k, v in stats.items():
                if k.startswith(("dist_", "q", "risk_")) and v is not None:
                    log_metric(f"{self.__name__}/{k}", float(v))
        if log_extra is not None and dist is not None:
            # per-completion distribution mean beside TRL's per-completion reward column
            means = [None] * len(rewards)
            for j, i in enumerate(keep):
                means[i] = float(dist.mean()[j])
            log_extra(f"{self.__name__}/dist_mean", means)
        return rewards

    def _batch_stats(self, rewards: list[float | None], dist: RewardDistribution | None, state: Any, secs: float) -> dict[str, Any]:
        scored = [r for r in rewards if r is not None]
        stats: dict[str, Any] = {
            "call": self._calls,
            "step": getattr(state, "global_step", None),
            "n": len(rewards),
            "n_scored": len(scored),
            "risk": self.risk.spec,
            "risk_mean": sum(scored) / len(scored) if scored else None,
            "seconds": round(secs, 4),
        }
        if dist is not None and dist.values.shape[0] > 0:
            stats["dist_mean"] = float(dist.mean().mean())
            stats["dist_std"] = float(dist.std().mean())
            qs = dist.quantile(torch.tensor(self.tail_levels, dtype=dist.values.dtype)).mean(0)
            for t, q in zip(self.tail_levels, qs.tolist()):
                stats[f"q{t:.2f}"] = q
        return stats


def _signature_params(fn: Callable) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def make_reward_function(model: ScoresDistributions, risk: "str | dict[str, Any] | RiskMeasure" = "mean", **kwargs: Any) -> DistributionalRewardFunction:
    """Convenience constructor mirroring TRL's ``reward_funcs=[...]`` usage."""
    return DistributionalRewardFunction(model, risk, **kwargs)
