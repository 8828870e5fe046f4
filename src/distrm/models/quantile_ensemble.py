"""QuantileEnsembleRewardModel: B bootstrap quantile-head models on one frozen backbone.

A QRM says how raters spread (aleatoric uncertainty) but not how sure the heads are of that
spread; a Bradley-Terry ensemble says how much its members disagree (epistemic) but has no
rater spread. Fitting the QRM's quantile heads B times, each on a bootstrap resample of the
rated items (:class:`~distrm.heads.ensemble.BootstrapQuantileHeads`), gives both at once.

Scoring, for reward feature phi(x, y), member b, attribute m, fixed weights w (no gate:
the weights do not depend on the prompt):

    Q_bm(tau)  = sort_tau(W_bm phi + c_bm)                 member b's attribute m
    R_b        = mix_m(w_m, Q_bm)                          member b's reward, ``config.mix``
                                                           ("quantile_average" as QRM, or "probability")
    reward     = (1/B) sum_b F_{R_b}                       equal-weight probability mixture
    attribute m = (1/B) sum_b F_{Q_bm}                     the same, per attribute

so ``ScoreOutput.reward`` is the total predictive distribution, and by the law of total
variance its variance is

    Var = E_b[Var R_b] + Var_b[E R_b]                     (aleatoric + epistemic, 1/B)

which :meth:`QuantileEnsembleRewardModel.uncertainty` returns per item (exactly, from the
members' own distributions; ``ScoreOutput.uncertainty`` and ``to_dict`` carry it too).

Output levels. The pooled distributions (reward and attributes) are summarised at the heads'
K levels plus B - 1 more evenly spaced inside each tail (:func:`output_levels`; K + 2(B - 1)
in all, none added for B = 1). Why: members disagree most in their tails, and in the
mixture member b's outermost quantile holds mass tau_1 / B. At the heads' levels alone the
mixture's outer tau_1 would be one constant (the convention that invents no tail), dropping
the members' spread there: on synthetic data where members disagree, up to 40% of the
variance and most of CVaR(0.1)'s epistemic part; with the tail levels, within about 6%.

Saved like the other types: ``config.json`` (``"model_type": "quantile_ensemble"``) +
``model.safetensors`` (``heads.coef`` [B, M, K, d], ``heads.intercept`` [B, M, K]); pickle
is refused. Training is :func:`distrm.training.quantile_ensemble.train_quantile_ensemble`
(``distrm train --set model=quantile_ensemble``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from distrm import __version__
from distrm.distribution import RewardDistribution
from distrm.heads.ensemble import BootstrapQuantileHeads
from distrm.models.base import BackboneFields, RewardModel, ScoreOutput, check_shape

MODEL_TYPE = "quantile_ensemble"
MIX_METHODS = ("quantile_average", "probability")


@dataclass
class QuantileEnsembleModelConfig(BackboneFields):
    """What ``config.json`` of a saved bootstrap quantile ensemble holds (the backbone's
    fields: :class:`BackboneFields`)."""

    attributes: list[str]
    levels: list[float]
    n_members: int
    weights: list[float] | None = None  # fixed attribute weights (normalised when scoring); None: uniform
    mix: str = "quantile_average"  # how a member mixes its attributes (members are always mixed by probability)
    model_type: str = MODEL_TYPE
    training: dict[str, Any] = field(default_factory=dict)  # provenance: hyperparameters, data sizes
    distrm_version: str = __version__


def _check_config(c: QuantileEnsembleModelConfig) -> None:
    """Refuse a config that cannot describe a working model (one line naming the field)."""
    if c.model_type != MODEL_TYPE:
        raise ValueError(f"config.model_type must be {MODEL_TYPE!r}, got {c.model_type!r}")
    lv = c.levels or []
    if not lv or any(not 0 < t < 1 for t in lv) or any(b <= a for a, b in zip(lv, lv[1:])):
        raise ValueError(f"quantile levels must be strictly increasing in (0, 1), got {lv}")
    if c.n_members < 1 or not c.attributes:
        raise ValueError(f"need n_members >= 1 and at least one attribute, got {c.n_members} and {c.attributes}")
    if c.mix not in MIX_METHODS:
        raise ValueError(f"mix must be one of {list(MIX_METHODS)}, got {c.mix!r}")
    if c.weights is not None:
        w = c.weights
        if len(w) != len(c.attributes) or any(not x >= 0 for x in w) or not sum(w) > 0:
            raise ValueError(f"weights must be {len(c.attributes)} non-negative numbers (one per attribute) with a "
                             f"positive sum, got {w}")


def output_levels(levels: Sequence[float], n_members: int) -> torch.Tensor:
    """The heads' levels plus ``n_members - 1`` evenly spaced levels inside each tail (see the
    module docstring): tau_1 j / B below tau_1 and 1 - (1 - tau_K) j / B above tau_K."""
    lv = torch.tensor(list(levels), dtype=torch.float64)
    j = torch.arange(1, n_members, dtype=torch.float64) / n_members
    return torch.cat([lv[0] * j, lv, (1 - (1 - lv[-1]) * j).flip(0)])


def heads_from_state(coef: torch.Tensor, intercept: torch.Tensor, levels: Sequence[float]) -> BootstrapQuantileHeads:
    """A fitted :class:`BootstrapQuantileHeads` from saved tensors (it has no loader of its
    own), so a loaded model scores through the very ``predict`` training used."""
    heads = BootstrapQuantileHeads(n_boot=coef.shape[0], levels=list(levels))
    heads.coef_, heads.intercept_ = coef.double(), intercept.double()
    heads.levels_ = torch.tensor(list(levels), dtype=torch.float64)
    heads.n_features_in_ = coef.shape[-1]
    return heads


class QuantileEnsembleRewardModel(RewardModel):
    """B quantile-head models (bootstrap members) -> the members' probability mixture as the
    reward distribution, with its aleatoric / epistemic variance split."""

    model_type = MODEL_TYPE
    config_class = QuantileEnsembleModelConfig

    def __init__(self, config: QuantileEnsembleModelConfig, heads: BootstrapQuantileHeads, backbone: Any = None) -> None:
        _check_config(config)
        B, M, K, d = config.n_members, len(config.attributes), len(config.levels), config.feature_dim
        coef, intercept = heads.coef_, heads.intercept_
        if tuple(coef.shape) != (B, M, K, d) or tuple(intercept.shape) != (B, M, K):
            raise ValueError(f"head weights {tuple(coef.shape)}/{tuple(intercept.shape)} do not match the config "
                             f"({B} members x {M} attributes x {K} levels x {d} features)")
        if not torch.allclose(torch.as_tensor(heads.levels_, dtype=torch.float64), torch.tensor(config.levels, dtype=torch.float64)):
            raise ValueError(f"the heads' levels {torch.as_tensor(heads.levels_).tolist()} differ from the config's {config.levels}")
        self.config = config
        self.heads = heads  # the unit: scoring goes through its predict, no copy of the weights here
        self._backbone = backbone

    @classmethod
    def from_heads(cls, heads: BootstrapQuantileHeads, attributes: Sequence[str], backbone: str = "none",
                   **config: Any) -> "QuantileEnsembleRewardModel":
        """Wrap fitted :class:`BootstrapQuantileHeads` (``coef_ [B, M, K, d]``, ``levels_``)."""
        B, _, _, d = heads.coef_.shape
        cfg = QuantileEnsembleModelConfig(backbone=backbone, feature_dim=d, attributes=list(attributes),
                                          levels=torch.as_tensor(heads.levels_).tolist(), n_members=B, **config)
        return cls(cfg, heads)

    # ------------------------------------------------------------------ what the output looks like
    @property
    def levels(self) -> torch.Tensor:
        """Levels of the reward and attribute distributions (:func:`output_levels`)."""
        return output_levels(self.config.levels, self.config.n_members)

    @property
    def attribute_names(self) -> list[str]:
        return list(self.config.attributes)

    @property
    def default_mix(self) -> str:
        return self.config.mix

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "n_members": self.config.n_members, "uncertainty": ["aleatoric", "epistemic"]}

    # ------------------------------------------------------------------ scoring
    def _features(self, reward_features: Any) -> torch.Tensor:
        X = torch.as_tensor(reward_features).double()
        if X.ndim != 2 or X.shape[1] != self.config.feature_dim:
            raise ValueError(f"reward features must be [n, {self.config.feature_dim}], got {tuple(X.shape)}")
        return X

    def member_distributions(self, reward_features: Any) -> RewardDistribution:
        """Per-member, per-attribute distributions, values [n, M, B, K] (the heads' own)."""
        return self.heads.member_distributions(self._features(reward_features))

    def attribute_weights(self, n: int) -> torch.Tensor:
        """[n, M] the fixed attribute weights, normalised (uniform when the config has none)."""
        w = self.config.weights or [1.0] * len(self.config.attributes)
        w = torch.tensor(w, dtype=torch.float64)
        return (w / w.sum()).expand(n, -1).clone()

    def member_rewards(self, per: RewardDistribution, g: torch.Tensor) -> RewardDistribution:
        """[n, B, K] each member's reward: its attributes [n, M, B, K] mixed by ``config.mix``."""
        B = per.values.shape[2]
        stacked = RewardDistribution(values=per.values.transpose(1, 2), levels=per.levels)  # [n, B, M, K]
        gb = g.unsqueeze(1).expand(-1, B, -1)
        return RewardDistribution.mix(stacked, gb, method=self.config.mix)

    def _pool(self, dist: RewardDistribution) -> RewardDistribution:
        """The equal-weight probability mixture over the second-to-last (member) axis, at the
        output levels."""
        eq = torch.full(dist.values.shape[:-1], 1.0 / dist.values.shape[-2], dtype=dist.values.dtype)
        return RewardDistribution.mix(dist, eq, method="probability", levels=self.levels)

    @staticmethod
    def split(members: RewardDistribution) -> dict[str, torch.Tensor]:
        """Law-of-total-variance split of the equal-weight mixture of ``members`` [..., B, K]:
        mean, total (from second moments, so the identity is a check), aleatoric E_b[v_b] and
        epistemic Var_b[m_b] (1/B), each [...]."""
        m, v, m2 = members.mean(), members.variance(), members.second_moment()
        mean = m.mean(-1)
        return {"mean": mean, "total": m2.mean(-1) - mean * mean, "aleatoric": v.mean(-1),
                "epistemic": ((m - mean.unsqueeze(-1)) ** 2).mean(-1)}

    def uncertainty(self, reward_features: Any) -> dict[str, torch.Tensor]:
        """[n] each: the reward's mean, total variance and its aleatoric / epistemic parts."""
        per = self.member_distributions(reward_features)
        return self.split(self.member_rewards(per, self.attribute_weights(per.values.shape[0])))

    def attribute_distribution(self, reward_features: Any, responses: Sequence[str] | None = None,
                               debias: bool = True) -> RewardDistribution:
        """[n, M, L] each attribute's predictive distribution, pooled over members (no
        debiasing: this model has none, so ``debias`` changes nothing)."""
        return self._pool(self.member_distributions(reward_features))

    def score_features(self, reward_features: Any, prompt_features: Any = None,
                       responses: Sequence[str] | None = None) -> ScoreOutput:
        """Score from precomputed features; ``prompt_features`` and ``responses`` are accepted
        for call compatibility and not used (fixed weights, no length debiasing)."""
        per = self.member_distributions(reward_features)
        g = self.attribute_weights(per.values.shape[0])
        members = self.member_rewards(per, g)
        split = self.split(members)
        return ScoreOutput(attributes=self._pool(per), weights=g, reward=self._pool(members),
                           attribute_names=self.attribute_names,
                           uncertainty={k: split[k] for k in ("aleatoric", "epistemic")})

    # ------------------------------------------------------------------ save / load
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"heads.coef": self.heads.coef_, "heads.intercept": self.heads.intercept_}

    def card_summary(self) -> str:
        c = self.config
        return (f"A bootstrap ensemble of {c.n_members} quantile reward models on one frozen backbone, each fitted on a "
                f"bootstrap resample of the rated items. For a (prompt, response) it outputs, per attribute, {len(self.levels)} "
                f"quantiles of the rating pooled over the members (the heads' {len(c.levels)} levels and {c.n_members - 1} "
                "more in each tail, where members disagree most), fixed attribute weights, and as the reward distribution "
                f"the equal-weight probability mixture of the members' rewards (each member mixes its "
                f"{len(c.attributes)} attributes by {c.mix}): the total predictive distribution, whose variance splits into "
                "aleatoric (rater spread, within members) and epistemic (disagreement between members) parts. Its mean is "
                "the scalar reward; risk measures (CVaR, exponential utility, lower quantiles, ...) summarise its lower tail.")

    def card_training(self) -> dict[str, Any] | None:
        return self.config.training or None

    @classmethod
    def from_state(cls, config: QuantileEnsembleModelConfig, tensors: dict[str, torch.Tensor], where: str,
                   backbone: Any = None) -> "QuantileEnsembleRewardModel":
        try:
            _check_config(config)
        except ValueError as e:
            raise ValueError(f"{where.rsplit('/', 1)[0]}/config.json: {e}") from None
        B, M, K, d = config.n_members, len(config.attributes), len(config.levels), config.feature_dim
        coef = check_shape(where, "heads.coef", tensors.get("heads.coef"), (B, M, K, d))
        intercept = check_shape(where, "heads.intercept", tensors.get("heads.intercept"), (B, M, K))
        return cls(config, heads_from_state(coef, intercept, config.levels), backbone)
