"""EnsembleRewardModel: N linear Bradley-Terry heads on one frozen backbone, one object.

The uncertainty-aware RLHF paper's ensemble (section 4): a shared foundation model and
N = 10 parallel linear reward heads trained with the summed loss. Its output for (x, y) is
the N member rewards r_1..r_N, i.e. a :class:`RewardDistribution` of kind "ensemble" (each
member mass 1/N): mean (1/N) sum_i r_i, variance (1/N) sum_i (r_i - mean)^2 (population
variance, what ``RewardDistribution.variance`` integrates exactly), and every risk measure.

Saved like :class:`~distrm.models.qrm.DistributionalRewardModel`: ``config.json`` (with
``"model_type": "ensemble"``, which :func:`distrm.models.auto.load_reward_model` dispatches on) +
``model.safetensors`` (``heads.coef`` [N, d], ``heads.intercept`` [N]); pickle is refused.

Training (``distrm train`` with ``model: ensemble``) is :func:`distrm.training.bt_ensemble.train_ensemble`: the
training split of the configured preference data, frozen backbone features from the
feature store, :class:`~distrm.heads.ensemble.BTEnsembleHeads`. The paper's first step,
fine-tuning the backbone with one head, is a separate command; here ``init: single_head``
fits one head on the frozen features and attaches the N heads at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from distrm import __version__
from distrm.distribution import RewardDistribution
from distrm.models.base import BackboneFields, RewardModel, ScoreOutput, check_shape

MODEL_TYPE = "ensemble"


@dataclass
class EnsembleModelConfig(BackboneFields):
    """What ``config.json`` of a saved ensemble holds (the backbone's fields: :class:`BackboneFields`)."""

    n_members: int
    model_type: str = MODEL_TYPE
    training: dict[str, Any] = field(default_factory=dict)  # provenance: hyperparameters, data sizes
    distrm_version: str = __version__


class EnsembleRewardModel(RewardModel):
    """N linear reward heads on frozen features -> a RewardDistribution of N members (N = 1:
    the single reward head ``distrm finetune-backbone`` writes)."""

    model_type = MODEL_TYPE
    config_class = EnsembleModelConfig

    def __init__(self, config: EnsembleModelConfig, coef: torch.Tensor, intercept: torch.Tensor | None = None, backbone: Any = None) -> None:
        N, d = config.n_members, config.feature_dim
        if intercept is None:
            intercept = torch.zeros(N, dtype=torch.float64)
        if tuple(coef.shape) != (N, d) or tuple(intercept.shape) != (N,):
            raise ValueError(
                f"head weights {tuple(coef.shape)}/{tuple(intercept.shape)} do not match the config "
                f"({N} members x {d} features)"
            )
        if config.model_type != MODEL_TYPE:
            raise ValueError(f"config.model_type must be {MODEL_TYPE!r}, got {config.model_type!r}")
        self.config = config
        self.coef = coef.double()
        self.intercept = intercept.double()
        self._backbone = backbone

    @classmethod
    def from_heads(cls, heads: Any, backbone: str = "none", backbone_identity: str | None = None, **config: Any) -> "EnsembleRewardModel":
        """Wrap fitted :class:`BTEnsembleHeads` (anything with ``coef_ [N, d]``)."""
        coef = torch.as_tensor(heads.coef_).double()
        cfg = EnsembleModelConfig(
            backbone=backbone, feature_dim=coef.shape[1], n_members=coef.shape[0], backbone_identity=backbone_identity, **config
        )
        return cls(cfg, coef)

    # ------------------------------------------------------------------ scoring
    def member_rewards(self, reward_features: torch.Tensor) -> torch.Tensor:
        """[n, N] r_i = w_i^T phi + b_i."""
        X = torch.as_tensor(np.asarray(reward_features) if not torch.is_tensor(reward_features) else reward_features).double()
        if X.ndim != 2 or X.shape[1] != self.config.feature_dim:
            raise ValueError(f"reward features must be [n, {self.config.feature_dim}], got {tuple(X.shape)}")
        return X @ self.coef.T + self.intercept

    def score_features(
        self, reward_features: torch.Tensor, prompt_features: torch.Tensor | None = None, responses: Sequence[str] | None = None
    ) -> ScoreOutput:
        """Score from precomputed features. ``prompt_features`` and ``responses`` are accepted
        for call compatibility with :class:`DistributionalRewardModel` and not used (no gate,
        no length debiasing)."""
        members = self.member_rewards(reward_features)
        n = members.shape[0]
        return ScoreOutput(
            attributes=RewardDistribution.from_members(members.unsqueeze(1)),
            weights=torch.ones(n, 1, dtype=torch.float64),
            reward=RewardDistribution.from_members(members),
            attribute_names=["reward"],
        )

    # ------------------------------------------------------------------ save / load
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"heads.coef": self.coef, "heads.intercept": self.intercept}

    def card_summary(self) -> str:
        n = self.config.n_members
        if n == 1:
            return ("A linear Bradley-Terry reward head on a (reward-tuned) backbone: for a (prompt, response) it outputs "
                    "one scalar reward (a one-member distribution).")
        return (f"An ensemble of {n} linear Bradley-Terry reward heads on one frozen backbone: for a (prompt, "
                "response) it outputs the members' rewards as a reward distribution; their mean is the scalar reward, their "
                "spread the epistemic uncertainty, and risk measures (mean - std, CVaR over members, ...) are lower bounds.")

    def card_training(self) -> dict[str, Any] | None:
        return self.config.training or None

    @classmethod
    def from_state(cls, config: EnsembleModelConfig, tensors: dict[str, torch.Tensor], where: str, backbone: Any = None) -> "EnsembleRewardModel":
        N, d = config.n_members, config.feature_dim
        coef = check_shape(where, "heads.coef", tensors.get("heads.coef"), (N, d))
        intercept = check_shape(where, "heads.intercept", tensors.get("heads.intercept"), (N,))
        return cls(config, coef, intercept, backbone)
