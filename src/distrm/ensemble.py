"""EnsembleRewardModel: N linear Bradley-Terry heads on one frozen backbone, one object.

The uncertainty-aware RLHF paper's ensemble (section 4): a shared foundation model and
N = 10 parallel linear reward heads trained with the summed loss. Its output for (x, y) is
the N member rewards r_1..r_N, i.e. a :class:`RewardDistribution` of kind "ensemble" (each
member mass 1/N): mean (1/N) sum_i r_i, variance (1/N) sum_i (r_i - mean)^2 (population
variance, what ``RewardDistribution.variance`` integrates exactly), and every risk measure.

Saved like :class:`~distrm.model.DistributionalRewardModel`: ``config.json`` (with
``"model_type": "ensemble"``, which :func:`distrm.hub.load_reward_model` dispatches on) +
``model.safetensors`` (``heads.coef`` [N, d], ``heads.intercept`` [N]); pickle is refused.

Training (``distrm train`` with ``model: ensemble``) is :func:`train_ensemble`: the
training split of the configured preference data, frozen backbone features from the
feature store, :class:`~distrm.heads.ensemble.BTEnsembleHeads`. The paper's first step,
fine-tuning the backbone with one head, is a separate command; here ``init: single_head``
fits one head on the frozen features and attaches the N heads at it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from distrm import __version__
from distrm.data.records import PreferencePair, Prompt
from distrm.distribution import RewardDistribution
from distrm.risk import parse_risk
from distrm.model import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, ScoreOutput, warn_empty

MODEL_TYPE = "ensemble"

logger = logging.getLogger(__name__)


@dataclass
class EnsembleModelConfig:
    """What ``config.json`` of a saved ensemble holds."""

    backbone: str
    feature_dim: int
    n_members: int
    model_type: str = MODEL_TYPE
    backbone_identity: str | None = None
    backbone_max_length: int = 512
    backbone_dtype: str | None = None  # None: the device default (fp32 on CPU, bf16 on GPU)
    training: dict[str, Any] = field(default_factory=dict)  # provenance: hyperparameters, data sizes
    distrm_version: str = __version__


@dataclass
class EnsembleScoreOutput(ScoreOutput):
    """A :class:`ScoreOutput` whose reward is the ensemble (one attribute "reward" with
    weight 1, its N members as the distribution), plus member-level accessors."""

    @property
    def members(self) -> torch.Tensor:
        """[n, N] member rewards."""
        return self.reward.values

    @property
    def variance(self) -> torch.Tensor:
        """[n] population variance across members, (1/N) sum_i (r_i - mean)^2."""
        return self.reward.variance()

    @property
    def std(self) -> torch.Tensor:
        return self.reward.std()

    def to_dict(self, risks: Sequence[str] = ()) -> list[dict[str, Any]]:
        rvals = {}
        for spec in risks:
            name, params = parse_risk(spec)
            rvals[spec] = self.reward.risk(name, **params).tolist()
        mean, var = self.mean.tolist(), self.variance.tolist()
        return [
            {
                "mean": mean[i],
                "variance": var[i],
                "members": self.members[i].tolist(),
                "risk": {spec: rvals[spec][i] for spec in risks},
            }
            for i in range(self.members.shape[0])
        ]


class EnsembleRewardModel:
    """N linear reward heads on frozen features -> a RewardDistribution of N members."""

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
    ) -> EnsembleScoreOutput:
        """Score from precomputed features. ``prompt_features`` and ``responses`` are accepted
        for call compatibility with :class:`DistributionalRewardModel` and not used (no gate,
        no length debiasing)."""
        members = self.member_rewards(reward_features)
        n = members.shape[0]
        return EnsembleScoreOutput(
            attributes=RewardDistribution.from_members(members.unsqueeze(1)),
            weights=torch.ones(n, 1, dtype=torch.float64),
            reward=RewardDistribution.from_members(members),
            attribute_names=["reward"],
        )

    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            from distrm.backbones import load_for_heads

            c = self.config
            self._backbone = load_for_heads(c.backbone, c.backbone_max_length, c.backbone_identity, c.backbone_dtype)
        return self._backbone

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str], batch_size: int = 32) -> EnsembleScoreOutput:
        """Score (prompt, response) pairs end to end: text -> features -> N member rewards."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        from distrm.features import extract

        warn_empty(responses)
        feats = extract(self.backbone, list(prompts), list(responses), batch_size=batch_size, progress=False)
        return self.score_features(torch.as_tensor(np.asarray(feats.reward)), None, responses)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"heads.coef": self.coef.contiguous(), "heads.intercept": self.intercept.contiguous()}
        tmp = path / (WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt", "distrm_version": __version__, "model_type": MODEL_TYPE})
        tmp.replace(path / WEIGHTS_NAME)
        (path / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n", encoding="utf-8")
        from distrm.card import write_model_card

        cfg = dataclasses.asdict(self.config)
        write_model_card(path, MODEL_TYPE, cfg, (
            f"An ensemble of {self.coef.shape[0]} linear Bradley-Terry reward heads on one frozen backbone: for a (prompt, "
            "response) it outputs the members' rewards as a reward distribution; their mean is the scalar reward, their "
            "spread the epistemic uncertainty, and risk measures (mean - std, CVaR over members, ...) are lower bounds."),
            cfg.get("training"))

    @classmethod
    def from_pretrained(cls, path: str | Path, backbone: Any = None) -> "EnsembleRewardModel":
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        if not (path / WEIGHTS_NAME).is_file():
            pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            hint = f" (found {pickles}: pickle files are refused, they can run code on load)" if pickles else ""
            raise FileNotFoundError(f"{path / WEIGHTS_NAME} missing{hint}")
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} missing")
        try:
            raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: not valid JSON: {e}") from None
        if not isinstance(raw, dict) or raw.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{cfg_path}: not an ensemble model (model_type={raw.get('model_type') if isinstance(raw, dict) else None!r})")
        names = {f.name for f in dataclasses.fields(EnsembleModelConfig)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"{cfg_path}: unknown key(s) {unknown}")
        try:
            config = EnsembleModelConfig(**raw)
        except TypeError as e:
            raise ValueError(f"{cfg_path}: {e}") from None
        t = load_file(str(path / WEIGHTS_NAME))
        for key in ("heads.coef", "heads.intercept"):
            if key not in t:
                raise ValueError(f"{path / WEIGHTS_NAME}: tensor {key!r} missing")
        N, d = config.n_members, config.feature_dim
        if tuple(t["heads.coef"].shape) != (N, d) or tuple(t["heads.intercept"].shape) != (N,):
            raise ValueError(
                f"{path / WEIGHTS_NAME}: head weights {tuple(t['heads.coef'].shape)}/{tuple(t['heads.intercept'].shape)} "
                f"do not match config.json ({N} members x {d} features)"
            )
        return cls(config, t["heads.coef"], t["heads.intercept"], backbone)


# ============================================================================ evaluation
def evaluate_pairs(
    model: Any,
    pairs: Sequence[PreferencePair],
    features: tuple[Any, Any] | tuple[Any, Any, Any],
    risk: str = "mean",
) -> dict[str, Any]:
    """Pairwise accuracy of any distrm model on precomputed features.

    ``features`` = (chosen reward features [n, D], rejected reward features [n, D]) and,
    for models with a gate, the prompt features [n, D] third. A pair is correct only if
    score(chosen) > score(rejected) (a tie is wrong, as in RewardBench). Reports overall,
    per ``pair.source`` (and ``pair.subset`` where set) and, for an ensemble, per member.
    """
    Rc, Rr = (torch.as_tensor(np.asarray(f)) for f in features[:2])
    P = torch.as_tensor(np.asarray(features[2])) if len(features) > 2 else None
    if not (len(pairs) == Rc.shape[0] == Rr.shape[0]):
        raise ValueError(f"{len(pairs)} pairs but features for {Rc.shape[0]}/{Rr.shape[0]}")
    sc = model.score_features(Rc, P, [p.chosen for p in pairs])
    sr = model.score_features(Rr, P, [p.rejected for p in pairs])
    name, params = parse_risk(risk)
    correct = (sc.reward.risk(name, **params) > sr.reward.risk(name, **params)).double()
    out: dict[str, Any] = {"risk": risk, "n": len(pairs), "accuracy": float(correct.mean()) if len(pairs) else None}
    for key in ("source", "subset"):
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            g = getattr(p, key)
            if g is not None:
                groups.setdefault(g, []).append(i)
        if groups:
            out[f"by_{key}"] = {g: {"n": len(ix), "accuracy": float(correct[ix].mean())} for g, ix in sorted(groups.items())}
    if isinstance(sc, EnsembleScoreOutput):
        out["member_accuracy"] = ((sc.members > sr.members).double().mean(0)).tolist()
    return out


# ============================================================================ training
def train_ensemble(cfg: Any) -> EnsembleRewardModel:
    """``distrm train`` with ``model: ensemble``: preference pairs (training split) ->
    frozen backbone features -> N BT heads in one pass -> saved model + train_log.json."""
    from distrm.backbones import Backbone
    from distrm.features import extract
    from distrm.heads.ensemble import BTEnsembleHeads
    from distrm.train import load_training_data

    ec = cfg.ensemble
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log: dict[str, Any] = {"config": dataclasses.asdict(cfg), "timings_s": {}}
    t0 = time.perf_counter()
    _, pairs, reports = load_training_data(cfg)
    if not pairs:
        raise ValueError("an ensemble reward model needs preference pairs (data.pairs)")
    log["data"] = {"pairs": len(pairs), "reports": reports}
    logger.info("data: %d training pairs", len(pairs))
    log["timings_s"]["data"] = time.perf_counter() - t0

    bc = cfg.backbone
    backbone = Backbone.from_pretrained(bc.name, device=bc.device, dtype=bc.dtype, max_length=bc.max_length)
    kw = dict(store=bc.store, batch_size=bc.batch_size, progress=cfg.progress)
    t0 = time.perf_counter()
    fc = extract(backbone, [p.prompt for p in pairs], [p.chosen for p in pairs], **kw)
    fr = extract(backbone, [p.prompt for p in pairs], [p.rejected for p in pairs], **kw)
    Xc, Xr = torch.as_tensor(np.asarray(fc.reward)).double(), torch.as_tensor(np.asarray(fr.reward)).double()
    log["timings_s"]["features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    l2 = ec.l2
    if l2 is None:  # one BT head's penalty, chosen on held-out pairs (whole prompts held out)
        from distrm.data.splits import split_key
        from distrm.heads.baselines import BTHeadCV

        cvh = BTHeadCV(seed=cfg.seed).fit(Xc, Xr, groups=[split_key(p.prompt) for p in pairs])
        l2 = cvh.l2_
        log["l2_cv"] = {"l2": l2, "grid": cvh.cv_l2s_, "heldout_log_likelihood_per_pair": cvh.cv_log_likelihood_}
        logger.info("ensemble: l2 = %g chosen by 3-fold CV on held-out pair likelihood (grid %s)", l2, cvh.cv_l2s_)
    heads = BTEnsembleHeads(
        n_members=ec.n_members,
        bootstrap=ec.bootstrap,
        l2=l2,
        lr=ec.lr,
        epochs=ec.epochs,
        batch_size=ec.batch_size,
        init_std=ec.init_std,
        seed=ec.seed if ec.seed is not None else cfg.seed,
        optimizer=ec.optimizer,
        init=ec.init,
    ).fit(Xc, Xr)
    log["timings_s"]["heads"] = time.perf_counter() - t0
    model = EnsembleRewardModel.from_heads(
        heads,
        backbone=bc.name,
        backbone_identity=getattr(backbone, "identity", None),
        backbone_max_length=bc.max_length,
        backbone_dtype=bc.dtype,
        training={**dataclasses.asdict(ec), "l2": l2, "n_pairs": len(pairs)},
    )
    model._backbone = backbone
    log["member_train_accuracy"] = heads.train_accuracy_.tolist()
    log["final_member_loss"] = heads.member_losses(Xc, Xr).tolist()
    log["diversity"] = member_diversity(model.member_rewards(Xc))
    acc = float((model.score_features(Xc).mean > model.score_features(Xr).mean).double().mean())
    log["train_pair_accuracy"] = acc
    logger.info("train pair accuracy (ensemble mean): %.3f; members %.3f..%.3f; member reward corr %.3f", acc,
                min(log["member_train_accuracy"]), max(log["member_train_accuracy"]), log["diversity"]["mean_pairwise_corr"])
    model.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(log, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("saved ensemble to %s", out)
    return model


def member_diversity(members: torch.Tensor) -> dict[str, float]:
    """How different the members are on a set of inputs (``members`` [n, N]): pairwise
    Pearson correlation of member rewards (1 = identical up to an affine map) and the
    per-input population variance across members, on the reward scale (compare it with
    ``reward_std``, the spread of the ensemble mean over inputs)."""
    m = members.double()
    c = torch.corrcoef(m.T)
    N = m.shape[1]
    off = c[~torch.eye(N, dtype=torch.bool)]
    var = m.var(dim=1, unbiased=False)
    return {
        "mean_pairwise_corr": float(off.mean()) if N > 1 else 1.0,
        "min_pairwise_corr": float(off.min()) if N > 1 else 1.0,
        "mean_variance": float(var.mean()),
        "median_variance": float(var.median()),
        "reward_std": float(m.mean(1).std()),
    }
