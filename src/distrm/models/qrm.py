"""DistributionalRewardModel: backbone + attribute heads + gate -> reward distribution.

The released QRM model is one bias-free linear layer (hidden -> M x K) and a gate; ArmoRM
users ask for a way to merge their pieces into one loadable model. Here the pieces are one
object, saved Hugging Face style: ``config.json`` + ``model.safetensors`` (never pickle).

Scoring, for prompt x and response y with reward feature phi(x, y) and prompt feature psi(x):

    Q_m(tau | x, y) = sort_tau(W_m phi + b_m) - p_m v(y)      attribute m (debiased)
    g(x)           = softmax(gate(psi) / T)                  or fixed weights
    Q_mix(tau)     = sum_m g_m Q_m(tau)                      ("quantile_average", QRM's)
                     or the quantiles of sum_m g_m F_m        ("probability")

Point-estimate heads (ridge baseline) have K = 1 and are the same code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from distrm import __version__
from distrm.distribution import RewardDistribution
from distrm.heads.debias import length_signal
from distrm.heads.gate import GatingNetwork
from distrm.models.base import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, BackboneFields, RewardModel, ScoreOutput, check_shape, warn_empty  # noqa: F401

MODEL_TYPE = "qrm"


@dataclass
class ModelConfig(BackboneFields):
    """What ``config.json`` of a saved QRM holds (the backbone's fields: :class:`BackboneFields`)."""

    attributes: list[str]
    head: str = "quantile"  # "quantile" (K levels) or "ridge" (point estimate, K = 1)
    levels: list[float] | None = None
    gate: str = "learned"  # "learned" or "fixed"
    gate_hidden: int = 1024
    gate_n_hidden: int = 3
    gate_temperature: float = 5.0
    gate_batch_norm: bool = True  # False + gate_hidden_bias: ArmoRM's released gate (distrm.models.convert)
    gate_hidden_bias: bool = False
    gate_dropout: float = 0.0  # a Dropout layer after each hidden block (inactive when scoring; kept so the layer names match)
    fixed_weights: list[float] | None = None
    debias_source: str | None = "length"  # None, "length" or an attribute name
    mix: str = "quantile_average"
    # prompt-feature token of a causal backbone: "after_header" (distrm) or "before_header"
    # (the released QRM/ArmoRM gating token; see distrm.features.backbones)
    backbone_prompt_token: str = "after_header"
    scales: dict[str, list[float]] = field(default_factory=dict)  # attribute -> [low, high]
    model_type: str = MODEL_TYPE
    distrm_version: str = __version__

    @property
    def n_levels(self) -> int:
        return len(self.levels) if self.levels else 1


class DistributionalRewardModel(RewardModel):
    """QRM: per-attribute quantile heads mixed by a prompt gate (or fixed weights)."""

    model_type = MODEL_TYPE
    config_class = ModelConfig

    def __init__(
        self,
        config: ModelConfig,
        coef: torch.Tensor,
        intercept: torch.Tensor,
        gate: GatingNetwork | None = None,
        debias: torch.Tensor | None = None,
        backbone: Any = None,
    ) -> None:
        M, K, d = len(config.attributes), config.n_levels, config.feature_dim
        if tuple(coef.shape) != (M, K, d) or tuple(intercept.shape) != (M, K):
            raise ValueError(
                f"head weights {tuple(coef.shape)}/{tuple(intercept.shape)} do not match the config "
                f"({M} attributes x {K} levels x {d} features)"
            )
        if config.gate == "learned" and gate is None:
            raise ValueError("config says gate=learned but no gate network was given")
        if config.gate == "fixed":
            if not config.fixed_weights or len(config.fixed_weights) != M:
                raise ValueError(f"fixed gate needs {M} weights, one per attribute")
        if config.head == "quantile":
            lv = config.levels or []
            if not lv or any(not 0 < t < 1 for t in lv) or any(b <= a for a, b in zip(lv, lv[1:])):
                raise ValueError(f"quantile levels must be strictly increasing in (0, 1), got {lv}")
        if debias is not None and tuple(debias.shape) != (M,):
            raise ValueError(f"debias has shape {tuple(debias.shape)}, expected ({M},): one coefficient per attribute")
        self.config = config
        self.coef = coef.double()
        self.intercept = intercept.double()
        # the heads are the unit the model holds: quantile heads predict (and rearrange) themselves
        self.heads = None
        if config.head == "quantile":
            from distrm.heads.quantile import QuantileHeads

            self.heads = QuantileHeads.from_state_dict(
                {"coef": self.coef, "intercept": self.intercept, "levels": torch.tensor(config.levels, dtype=torch.float64)})
        self.gate = gate.eval() if gate is not None else None
        self.debias = (debias if debias is not None else torch.zeros(M)).double()
        self._backbone = backbone

    # ------------------------------------------------------------------ scoring
    @property
    def levels(self) -> torch.Tensor | None:
        return torch.tensor(self.config.levels, dtype=torch.float64) if self.config.levels else None

    @property
    def attribute_names(self) -> list[str]:
        return list(self.config.attributes)

    @property
    def default_mix(self) -> str | None:
        return self.config.mix if self.config.head == "quantile" else None

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), "head": c.head, "gate": c.gate, "debias_source": c.debias_source}

    def attribute_distribution(
        self, reward_features: torch.Tensor, responses: Sequence[str] | None, debias: bool = True
    ) -> RewardDistribution:
        """Per-attribute distributions [n, M, K], quantiles sorted (no crossing), debiased.

        ``debias=False``: the heads' own prediction of each attribute's rating, before the
        ranking-time length shift ``- p_m v(y)`` (what calibration against raters compares)."""
        X = torch.as_tensor(reward_features).double()
        if self.heads is not None:
            vals = self.heads.predict(X)  # [n, M, K], sorted along the levels
        else:  # point-estimate heads (ridge baseline): K = 1, nothing to rearrange
            vals = torch.einsum("nd,mkd->nmk", X, self.coef) + self.intercept
        if debias and bool((self.debias != 0).any()):
            v = self._verbosity(vals, responses)
            vals = vals - self.debias[None, :, None] * v[:, None, None]
        if self.config.head == "quantile":
            return RewardDistribution(values=vals, levels=self.levels, kind="quantile")
        return RewardDistribution(values=vals, kind="ensemble")

    def _verbosity(self, vals: torch.Tensor, responses: Sequence[str] | None) -> torch.Tensor:
        src = self.config.debias_source
        if src in self.config.attributes:
            m = self.config.attributes.index(src)
            if self.levels is None:
                return vals[:, m, 0]
            return RewardDistribution(values=vals[:, m], levels=self.levels).mean()
        if responses is None:
            raise ValueError("length debiasing needs the response texts")
        return length_signal(responses)

    def gate_weights(self, prompt_features: torch.Tensor) -> torch.Tensor:
        n = prompt_features.shape[0]
        if self.config.gate == "fixed":
            w = torch.tensor(self.config.fixed_weights, dtype=torch.float64)
            return (w / w.sum()).expand(n, -1).clone()
        with torch.inference_mode():
            return self.gate(torch.as_tensor(prompt_features).float()).double()

    def score_features(
        self, reward_features: torch.Tensor, prompt_features: torch.Tensor, responses: Sequence[str] | None = None
    ) -> ScoreOutput:
        """Score from precomputed features (evaluation and training use this)."""
        attrs = self.attribute_distribution(reward_features, responses)
        g = self.gate_weights(prompt_features)
        if self.config.head == "quantile":
            reward = RewardDistribution.mix(attrs, g, method=self.config.mix)
        else:  # point estimates: the weighted sum, one member
            reward = RewardDistribution(values=(g.unsqueeze(-1) * attrs.values).sum(-2), kind="ensemble")
        return ScoreOutput(attributes=attrs, weights=g, reward=reward, attribute_names=list(self.config.attributes))

    # ------------------------------------------------------------------ save / load
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"heads.coef": self.coef, "heads.intercept": self.intercept, "debias": self.debias}
        if self.gate is not None:
            tensors.update({f"gate.{k}": v for k, v in self.gate.state_dict().items()})
        return tensors

    def card_summary(self) -> str:
        c = self.config
        return (f"A Quantile Reward Model: for a (prompt, response) it outputs, per attribute, {c.n_levels} quantiles of "
                f"the rating a rater would give, gate weights over the {len(c.attributes)} attributes (from the prompt), and "
                f"their mixture ({c.mix}) as a reward distribution; its mean is the scalar reward, and risk measures "
                "(CVaR, exponential utility, lower quantiles, ...) summarise its lower tail.")

    @classmethod
    def from_state(cls, config: ModelConfig, tensors: dict[str, torch.Tensor], where: str, backbone: Any = None) -> "DistributionalRewardModel":
        M, K, d = len(config.attributes), config.n_levels, config.feature_dim
        coef = check_shape(where, "heads.coef", tensors.get("heads.coef"), (M, K, d))
        intercept = check_shape(where, "heads.intercept", tensors.get("heads.intercept"), (M, K))
        debias = tensors.get("debias")
        if debias is not None:
            check_shape(where, "debias", debias, (M,))
        gate = None
        if config.gate == "learned":
            gate = GatingNetwork(config.feature_dim, M, config.gate_hidden, config.gate_n_hidden, config.gate_temperature,
                                 dropout=config.gate_dropout, batch_norm=config.gate_batch_norm,
                                 hidden_bias=config.gate_hidden_bias)
            state = {k[len("gate."):]: v for k, v in tensors.items() if k.startswith("gate.")}
            try:
                gate.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f"{where}: gate weights do not match config.json: {str(e).splitlines()[0]}") from None
        try:
            return cls(config, coef, intercept, gate, debias, backbone)
        except ValueError as e:
            raise ValueError(f"{where.rsplit('/', 1)[0]}/config.json: {e}") from None
