"""DPLRewardModel: a distributional preference learning head on one frozen backbone.

Siththaranjan et al. 2023 (see :mod:`distrm.heads.dpl`): a reward *distribution* fitted on
preference pairs alone, its spread the disagreement the pairs show that no recorded feature
of the annotators explains (hidden context). Users have far more pairs than absolute
ratings; a QRM needs ratings, an ensemble's spread is epistemic (how unsure the heads are),
while DPL's is aleatoric: how much the people who judged such responses differ.

One model type, ``"dpl"``, with ``config.head`` naming the head:

* ``"mean_variance"`` -- utility ~ N(mu(x), sigma(x)^2), mu and log sigma linear in the
  reward feature: tensors ``heads.coef`` [2, d] (rows mu, log sigma) and ``heads.intercept`` [2];
* ``"categorical"`` -- utility on ``len(config.atoms)`` fixed atoms, probabilities
  softmax(W phi + b): ``heads.coef`` [J, d], ``heads.intercept`` [J].

Why one type with a ``head`` field rather than two types: both heads share the folder
format (P linear maps on the feature), the training path and every downstream use; the
field is what differs, and a loader dispatching on it would only repeat ``from_state``.

The reward is ``RewardDistribution`` of kind "quantile" at ``config.n_levels`` cell
midpoints (:func:`distrm.heads.dpl.cell_levels`; exact mean, and for the normal head exact
variance). Scoring goes through the head's own ``predict_dist``: the loaded model holds a
fitted head rebuilt from the saved tensors (:func:`heads_from_state`), not a copy of its
arithmetic. Training: :func:`distrm.training.dpl.train_dpl` (``distrm train --set model=dpl``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from distrm import __version__
from distrm.distribution import RewardDistribution
from distrm.heads.dpl import CategoricalDPLHeads, MeanVarianceDPLHeads, cell_levels
from distrm.models.base import BackboneFields, RewardModel, ScoreOutput, check_shape

MODEL_TYPE = "dpl"
HEADS = ("mean_variance", "categorical")


@dataclass
class DPLModelConfig(BackboneFields):
    """What ``config.json`` of a saved DPL model holds (the backbone's fields: :class:`BackboneFields`)."""

    head: str  # "mean_variance" or "categorical"
    n_levels: int = 100  # quantile cells of the reward distribution
    atoms: list[float] | None = None  # the categorical head's utility atoms (sorted); None for mean_variance
    model_type: str = MODEL_TYPE
    training: dict[str, Any] = field(default_factory=dict)  # provenance: hyperparameters, data sizes
    distrm_version: str = __version__


def _check_config(c: DPLModelConfig) -> None:
    """Refuse a config that cannot describe a working model (one line naming the field)."""
    if c.model_type != MODEL_TYPE:
        raise ValueError(f"config.model_type must be {MODEL_TYPE!r}, got {c.model_type!r}")
    if c.head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}, got {c.head!r}")
    if c.n_levels < 2:
        raise ValueError(f"n_levels must be >= 2, got {c.n_levels}")
    if c.feature_dim < 1:
        raise ValueError(f"feature_dim must be >= 1, got {c.feature_dim}")
    if c.head == "categorical":
        a = c.atoms or []
        if len(a) < 2 or any(not math.isfinite(x) for x in a) or any(y <= x for x, y in zip(a, a[1:])):
            raise ValueError(f"atoms must be >= 2 finite, strictly increasing numbers for a categorical head, got {c.atoms}")
    elif c.atoms is not None:
        raise ValueError(f"atoms apply to the categorical head only; a mean_variance config has {c.atoms}")


def n_params(c: DPLModelConfig) -> int:
    """P, the number of linear maps the head has (rows of ``heads.coef``)."""
    return 2 if c.head == "mean_variance" else len(c.atoms or [])


def heads_from_state(c: DPLModelConfig, coef: torch.Tensor, intercept: torch.Tensor) -> Any:
    """A fitted head from saved tensors (the heads have no loader of their own)."""
    if c.head == "mean_variance":
        head: Any = MeanVarianceDPLHeads(n_levels=c.n_levels)
    else:
        atoms = torch.tensor(c.atoms, dtype=torch.float64)
        head = CategoricalDPLHeads(n_bins=len(atoms), support_min=float(atoms[0]), support_max=float(atoms[-1]),
                                   n_levels=c.n_levels)
        head.atoms_ = atoms
    head.coef_, head.intercept_ = coef.double(), intercept.double()
    head.n_features_in_ = coef.shape[1]
    return head


class DPLRewardModel(RewardModel):
    """A DPL head (mean-variance or categorical) on frozen features -> the utility's
    distribution as the reward."""

    model_type = MODEL_TYPE
    config_class = DPLModelConfig

    def __init__(self, config: DPLModelConfig, heads: Any, backbone: Any = None) -> None:
        _check_config(config)
        P, d = n_params(config), config.feature_dim
        if tuple(heads.coef_.shape) != (P, d) or tuple(heads.intercept_.shape) != (P,):
            raise ValueError(f"head weights {tuple(heads.coef_.shape)}/{tuple(heads.intercept_.shape)} do not match the "
                             f"config ({config.head}: {P} maps x {d} features)")
        self.config = config
        self.heads = heads
        self._backbone = backbone

    @classmethod
    def from_heads(cls, heads: Any, backbone: str = "none", **config: Any) -> "DPLRewardModel":
        """Wrap a fitted :class:`MeanVarianceDPLHeads` or :class:`CategoricalDPLHeads`."""
        categorical = isinstance(heads, CategoricalDPLHeads)
        cfg = DPLModelConfig(backbone=backbone, feature_dim=heads.coef_.shape[1],
                             head="categorical" if categorical else "mean_variance", n_levels=heads.n_levels,
                             atoms=heads.atoms_.tolist() if categorical else None, **config)
        return cls(cfg, heads)

    # ------------------------------------------------------------------ what the output looks like
    @property
    def levels(self) -> torch.Tensor:
        return cell_levels(self.config.n_levels)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "head": self.config.head}

    # ------------------------------------------------------------------ scoring
    def _features(self, reward_features: Any) -> torch.Tensor:
        X = torch.as_tensor(reward_features).double()
        if X.ndim != 2 or X.shape[1] != self.config.feature_dim:
            raise ValueError(f"reward features must be [n, {self.config.feature_dim}], got {tuple(X.shape)}")
        return X

    def score_features(self, reward_features: Any, prompt_features: Any = None,
                       responses: Sequence[str] | None = None) -> ScoreOutput:
        """Score from precomputed features; ``prompt_features`` and ``responses`` are accepted
        for call compatibility and not used (no gate, no length debiasing)."""
        reward = self.heads.predict_dist(self._features(reward_features))
        n = reward.values.shape[0]
        attrs = RewardDistribution(values=reward.values.unsqueeze(1), levels=reward.levels, kind=reward.kind)
        return ScoreOutput(attributes=attrs, weights=torch.ones(n, 1, dtype=torch.float64), reward=reward,
                           attribute_names=self.attribute_names)

    # ------------------------------------------------------------------ save / load
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"heads.coef": self.heads.coef_, "heads.intercept": self.heads.intercept_}

    def card_summary(self) -> str:
        c = self.config
        what = ("a normal distribution N(mu, sigma^2) whose mean and log standard deviation are linear in the backbone's "
                "feature" if c.head == "mean_variance" else
                f"a categorical distribution over {len(c.atoms or [])} fixed utility atoms (softmax of linear logits)")
        return (f"A distributional preference learning (DPL, Siththaranjan et al. 2023) reward model on one frozen backbone, "
                f"fitted on preference pairs alone: for a (prompt, response) it outputs {what}, as {c.n_levels} quantiles. "
                "Its mean is the scalar reward; its spread is how much the annotators' preferences on such responses "
                "disagree beyond what the data record (hidden context), and risk measures (CVaR, lower quantiles, "
                "mean - std) discount responses that some annotators strongly dislike.")

    def card_training(self) -> dict[str, Any] | None:
        return self.config.training or None

    @classmethod
    def from_state(cls, config: DPLModelConfig, tensors: dict[str, torch.Tensor], where: str,
                   backbone: Any = None) -> "DPLRewardModel":
        try:
            _check_config(config)
        except ValueError as e:
            raise ValueError(f"{where.rsplit('/', 1)[0]}/config.json: {e}") from None
        P, d = n_params(config), config.feature_dim
        coef = check_shape(where, "heads.coef", tensors.get("heads.coef"), (P, d))
        intercept = check_shape(where, "heads.intercept", tensors.get("heads.intercept"), (P,))
        return cls(config, heads_from_state(config, coef, intercept), backbone)
