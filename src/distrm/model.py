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

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from distrm import __version__
from distrm.data.records import Prompt
from distrm.debias import length_signal
from distrm.distribution import RewardDistribution
from distrm.gate import GatingNetwork

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass
class ModelConfig:
    backbone: str
    feature_dim: int
    attributes: list[str]
    head: str = "quantile"  # "quantile" (K levels) or "ridge" (point estimate, K = 1)
    levels: list[float] | None = None
    gate: str = "learned"  # "learned" or "fixed"
    gate_hidden: int = 1024
    gate_n_hidden: int = 3
    gate_temperature: float = 5.0
    fixed_weights: list[float] | None = None
    debias_source: str | None = "length"  # None, "length" or an attribute name
    mix: str = "quantile_average"
    backbone_identity: str | None = None
    backbone_max_length: int = 512
    backbone_dtype: str | None = None  # None: the device default (fp32 on CPU, bf16 on GPU)
    scales: dict[str, list[float]] = field(default_factory=dict)  # attribute -> [low, high]
    distrm_version: str = __version__

    @property
    def n_levels(self) -> int:
        return len(self.levels) if self.levels else 1


@dataclass
class ScoreOutput:
    """What ``score`` returns for n (prompt, response) pairs."""

    attributes: RewardDistribution  # values [n, M, K]
    weights: torch.Tensor  # [n, M] gate weights
    reward: RewardDistribution  # [n, K] the mixture
    attribute_names: list[str]

    @property
    def mean(self) -> torch.Tensor:
        return self.reward.mean()

    def to_dict(self, risks: Sequence[str] = ()) -> list[dict[str, Any]]:
        from distrm.risk import parse_risk

        rows = []
        rvals = {}
        for spec in risks:
            name, params = parse_risk(spec)
            rvals[spec] = self.reward.risk(name, **params).tolist()
        for i in range(self.weights.shape[0]):
            rows.append(
                {
                    "mean": float(self.mean[i]),
                    "quantiles": self.reward.values[i].tolist(),
                    "levels": None if self.reward.levels is None else self.reward.levels.tolist(),
                    "attributes": {
                        name: {
                            "weight": float(self.weights[i, m]),
                            "mean": float(self.attributes.mean()[i, m]),
                            "quantiles": self.attributes.values[i, m].tolist(),
                        }
                        for m, name in enumerate(self.attribute_names)
                    },
                    "risk": {spec: rvals[spec][i] for spec in risks},
                }
            )
        return rows


def warn_empty(responses: Sequence[str]) -> int:
    """Warn (once per call) when responses are empty or whitespace: they are scored as given,
    but a score for no answer at all is rarely what the caller meant. Returns the count."""
    n = sum(1 for r in responses if isinstance(r, str) and not r.strip())
    if n:
        warnings.warn(f"{n} of {len(responses)} responses are empty; scored as given", UserWarning, stacklevel=3)
    return n


class DistributionalRewardModel:
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

    @property
    def backbone(self):
        if self._backbone is None:
            from distrm.backbones import load_for_heads

            c = self.config
            self._backbone = load_for_heads(c.backbone, c.backbone_max_length, c.backbone_identity, c.backbone_dtype)
        return self._backbone

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str], batch_size: int = 32) -> ScoreOutput:
        """Score (prompt, response) pairs end to end: text -> features -> distribution."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        from distrm.features import extract

        warn_empty(responses)
        feats = extract(self.backbone, list(prompts), list(responses), batch_size=batch_size, progress=False)
        return self.score_features(torch.as_tensor(feats.reward), torch.as_tensor(feats.prompt), responses)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"heads.coef": self.coef.contiguous(), "heads.intercept": self.intercept.contiguous(), "debias": self.debias}
        if self.gate is not None:
            tensors.update({f"gate.{k}": v.contiguous() for k, v in self.gate.state_dict().items()})
        tmp = path / (WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt", "distrm_version": __version__})
        tmp.replace(path / WEIGHTS_NAME)
        (path / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n", encoding="utf-8")
        from distrm.card import write_model_card

        c = self.config
        write_model_card(path, "qrm", dataclasses.asdict(c), (
            f"A Quantile Reward Model: for a (prompt, response) it outputs, per attribute, {c.n_levels} quantiles of "
            f"the rating a rater would give, gate weights over the {len(c.attributes)} attributes (from the prompt), and "
            f"their mixture ({c.mix}) as a reward distribution; its mean is the scalar reward, and risk measures "
            "(CVaR, exponential utility, lower quantiles, ...) summarise its lower tail."))

    @classmethod
    def from_pretrained(cls, path: str | Path, backbone: Any = None) -> "DistributionalRewardModel":
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if not (path / WEIGHTS_NAME).is_file():
            hint = f" (found {pickles}: pickle files are refused, they can run code on load)" if pickles else ""
            raise FileNotFoundError(f"{path / WEIGHTS_NAME} missing{hint}")
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} missing")
        try:
            raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: not valid JSON: {e}") from None
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"{cfg_path}: unknown key(s) {unknown}")
        try:
            config = ModelConfig(**raw)
        except TypeError as e:
            raise ValueError(f"{cfg_path}: {e}") from None
        t = load_file(str(path / WEIGHTS_NAME))
        for key in ("heads.coef", "heads.intercept"):
            if key not in t:
                raise ValueError(f"{path / WEIGHTS_NAME}: tensor {key!r} missing")
        M, K, d = len(config.attributes), config.n_levels, config.feature_dim
        if tuple(t["heads.coef"].shape) != (M, K, d):
            raise ValueError(
                f"{path / WEIGHTS_NAME}: head weights {tuple(t['heads.coef'].shape)} do not match the config "
                f"({M} attributes x {K} levels x {d} features)"
            )
        gate = None
        if config.gate == "learned":
            gate = GatingNetwork(
                config.feature_dim, len(config.attributes), config.gate_hidden, config.gate_n_hidden, config.gate_temperature
            )
            state = {k[len("gate."):]: v for k, v in t.items() if k.startswith("gate.")}
            try:
                gate.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f"{path / WEIGHTS_NAME}: gate weights do not match config.json: {e}") from None
        return cls(config, t["heads.coef"], t["heads.intercept"], gate, t.get("debias"), backbone)
