"""The one model protocol every distrm reward model follows, and the folder format they share.

Downstream code (score, serve, eval, bon, rl, report) sees only this interface, never a
concrete class:

* ``score(prompts, responses) -> ScoreOutput`` and ``score_features(reward_features,
  prompt_features=None, responses=None) -> ScoreOutput``; ``ScoreOutput.reward`` is a
  :class:`~distrm.distribution.RewardDistribution` (quantiles for QRM-type models, members
  for ensembles), ``ScoreOutput.attributes`` the per-attribute distributions with the
  weights that mixed them.
* ``levels`` / ``kind`` / ``attribute_names`` / ``default_mix``: what shape that output has,
  so a server can validate a risk measure or assemble a batch without knowing the class.
* ``save_pretrained(folder, include_backbone=False)`` / ``from_pretrained(folder or Hub id)``
  / ``push_to_hub(repo_id)``; ``config.model_type`` names the class
  (:class:`~distrm.models.auto.AutoRewardModel` dispatches on it).

Why one shared folder writer: a model folder is what users copy, push and serve, and its
failure modes (a save killed half-way, a backbone referenced by the absolute path of the
machine it was trained on) are the same for every model type. So the writer lives here once:

* **Atomic, verifiable.** ``save_pretrained`` writes every new file into a staging folder
  inside the target (``.distrm-save-<pid>``) while the old model stays whole and loadable;
  only then it removes the manifest, renames the staged files (and a bundled backbone
  folder) into place and writes ``distrm_manifest.json`` (sha256 of ``config.json`` and
  ``model.safetensors``) last. ``from_pretrained`` refuses a folder without a manifest or
  whose files do not match it, so a save killed at any step leaves the old model, the new
  one, or an error naming the folder -- never new weights read with an old config. The
  staging folder of a killed save is hidden, ignored by loads and removed by the next save.
* **Portable backbones.** The backbone is recorded as an alias, a Hub id plus the commit
  it resolved to (``backbone_revision``), or a path *relative to the model folder*
  (``./backbone`` when bundled with ``include_backbone=True``), so a folder copied to
  another path or machine still loads; the backbone's content identity
  (``backbone_identity``) is checked at load so other weights never pass silently.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from safetensors.torch import load_file, save_file

from distrm import __version__
from distrm.data.records import Prompt
from distrm.distribution import RewardDistribution
from distrm.features.store import verify_file_manifest, write_file_manifest
from distrm.hf_hub import is_hub_id, snapshot_dir

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "distrm_manifest.json"
BUNDLED_BACKBONE = "backbone"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

# model_type -> class, by import path (loading one type never imports the others)
MODEL_TYPES: dict[str, str] = {
    "qrm": "distrm.models.qrm:DistributionalRewardModel",
    "ensemble": "distrm.models.bt_ensemble:EnsembleRewardModel",
    "quantile_ensemble": "distrm.models.quantile_ensemble:QuantileEnsembleRewardModel",
    "dpl": "distrm.models.dpl:DPLRewardModel",
}
KNOWN_TYPES = tuple(MODEL_TYPES)


def model_class(model_type: Any, where: Any = "config.json") -> type:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{where}: unknown model_type {model_type!r}; known: {list(MODEL_TYPES)}")
    module, name = MODEL_TYPES[model_type].split(":")
    return getattr(importlib.import_module(module), name)


def resolve_model_dir(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local model folder, or the snapshot folder of a Hub repo id (downloaded or cached)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if not is_hub_id(str(name_or_path)):
        raise FileNotFoundError(f"model directory not found: {name_or_path} (and not a Hub repo id owner/name)")
    return snapshot_dir(str(name_or_path), revision)


@dataclass
class ScoreOutput:
    """What ``score`` / ``score_features`` return for n (prompt, response) pairs, for every
    model type: ``reward`` [n, K] (K quantiles, or K members for an ensemble), ``attributes``
    [n, M, K] and the weights [n, M] that mixed them (an ensemble is one attribute,
    ``"reward"``, of weight 1). ``uncertainty``: optional named [n] parts of the reward's
    variance (a bootstrap quantile ensemble's ``aleatoric`` / ``epistemic``), shown by
    ``to_dict``; None for models that cannot tell them apart."""

    attributes: RewardDistribution
    weights: torch.Tensor
    reward: RewardDistribution
    attribute_names: list[str]
    uncertainty: dict[str, torch.Tensor] | None = None

    @property
    def mean(self) -> torch.Tensor:
        return self.reward.mean()

    @property
    def variance(self) -> torch.Tensor:
        """[n] variance of the reward distribution (across members for an ensemble)."""
        return self.reward.variance()

    @property
    def std(self) -> torch.Tensor:
        return self.reward.std()

    @property
    def members(self) -> torch.Tensor:
        """[n, N] member rewards (ensembles; for a quantile reward, its quantile values)."""
        return self.reward.values

    def to_dict(self, risks: Sequence[str] = ()) -> list[dict[str, Any]]:
        """One JSON-ready dict per item: mean, variance, the distribution (quantiles + levels,
        or members), the attributes with their weights when there are several, and the
        requested risk measures (parsed by :mod:`distrm.risk`)."""
        from distrm.risk import parse_risk

        rvals = {}
        for spec in risks:
            name, params = parse_risk(spec)
            rvals[spec] = self.reward.risk(name, **params).tolist()
        mean, var = self.mean.tolist(), self.variance.tolist()
        quantile = self.reward.levels is not None
        amean = self.attributes.mean()
        rows = []
        for i in range(self.weights.shape[0]):
            row: dict[str, Any] = {"mean": mean[i], "variance": var[i]}
            if quantile:
                row["quantiles"] = self.reward.values[i].tolist()
                row["levels"] = self.reward.levels.tolist()
            else:
                row["members"] = self.reward.values[i].tolist()
            if quantile or len(self.attribute_names) > 1:
                row["attributes"] = {
                    name: {"weight": float(self.weights[i, m]), "mean": float(amean[i, m]),
                           "quantiles": self.attributes.values[i, m].tolist()}
                    for m, name in enumerate(self.attribute_names)}
            if self.uncertainty:
                row["uncertainty"] = {k: float(v[i]) for k, v in self.uncertainty.items()}
            row["risk"] = {spec: rvals[spec][i] for spec in risks}
            rows.append(row)
        return rows


def warn_empty(responses: Sequence[str]) -> int:
    """Warn (once per call) when responses are empty or whitespace: they are scored as given,
    but a score for no answer at all is rarely what the caller meant. Returns the count."""
    n = sum(1 for r in responses if isinstance(r, str) and not r.strip())
    if n:
        warnings.warn(f"{n} of {len(responses)} responses are empty; scored as given", UserWarning, stacklevel=3)
    return n


SAVE_STAGING_PREFIX = ".distrm-save-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of this very process (an earlier save that raised): ours to remove
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_saves(path: Path) -> list[Path]:
    """Remove what killed saves left in ``path``: staging folders ``.distrm-save-<pid>`` and
    temporary files ``.<name>.tmp-<pid>`` of the files a save writes, whose process is gone
    (a save running right now in another process keeps its own). Returns what was removed."""
    removed: list[Path] = []
    if not path.is_dir():
        return removed
    ours = (CONFIG_NAME, WEIGHTS_NAME, MANIFEST_NAME, "README.md")
    for p in path.iterdir():
        if p.name.startswith(SAVE_STAGING_PREFIX):
            pid = p.name[len(SAVE_STAGING_PREFIX):]
        elif any(p.name.startswith(f".{n}.tmp-") for n in ours):
            pid = p.name.rsplit(".tmp-", 1)[1]
        else:
            continue
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def read_config_json(path: Path) -> dict[str, Any]:
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} missing: not a saved distrm model directory")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def write_manifest(path: Path, model_type: str) -> None:
    """Seal a saved folder: sha256 of ``config.json`` and ``model.safetensors``, written last."""
    write_file_manifest(path, (CONFIG_NAME, WEIGHTS_NAME), MANIFEST_NAME, distrm_version=__version__, model_type=model_type)


def verify_manifest(path: Path) -> None:
    """Refuse a folder whose save did not finish (no manifest) or whose files changed since."""
    verify_file_manifest(path, MANIFEST_NAME, "the save into this folder did not finish (or the folder was not "
                         "written by save_pretrained); save the model again")


@dataclass(kw_only=True)
class BackboneFields:
    """The fields of ``config.json`` every model type records about the frozen backbone its
    heads were trained on; a model type's config dataclass extends this with its own fields
    (keyword-only, so a subclass may add fields without defaults)."""

    backbone: str  # alias, Hub id, or a path (relative to the model folder when saved)
    feature_dim: int
    backbone_identity: str | None = None
    backbone_max_length: int = 512
    backbone_dtype: str | None = None  # None: the device default (fp32 on CPU, bf16 on GPU)
    backbone_revision: str | None = None  # commit hash of a Hub backbone
    # the prompts the heads were trained on, as distrm.data.splits.pack_prompt_digests (so an
    # evaluation counts the prompts the model has seen); None: not recorded
    training_prompts: str | None = None


def check_backbone_folder(ref: str, where: Any) -> None:
    """A local backbone folder must hold safetensors weights: one with only pickle checkpoints
    (``pytorch_model.bin`` ...) is refused here, before anything could pass it to ``torch.load``."""
    from distrm.features.backbones import ALIASES

    p = Path(ref)
    if ref in ALIASES or not p.is_dir():
        return
    if any(f.suffix == ".safetensors" for f in p.iterdir()):
        return
    pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{where}: backbone folder {p} holds only pickle weights {pickles}, expected *.safetensors "
                         "(pickle files are refused, they can run code on load; convert the backbone to safetensors)")


def resolve_backbone_ref(name: str, model_dir: Path | None) -> str:
    """A backbone recorded relative to the model folder (``./backbone``, ``../tuned``) -> a path."""
    if model_dir is not None and (name in (".", "..") or name.startswith(("./", "../"))):
        return str((model_dir / name).resolve())
    return name


class RewardModel:
    """Base of every distrm reward model (see the module docstring for the protocol).

    A subclass sets ``model_type`` and ``config_class`` (a dataclass extending
    :class:`BackboneFields`, with a ``model_type`` field) and implements
    ``score_features``, ``state_tensors``, ``from_state`` and ``card_summary``."""

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    config: Any
    _backbone: Any = None
    _model_dir: Path | None = None  # the folder it was loaded from (relative backbone paths)

    # ------------------------------------------------------------------ what the output looks like
    @property
    def levels(self) -> torch.Tensor | None:
        """Quantile levels of ``ScoreOutput.reward`` (None: members of an ensemble)."""
        return None

    @property
    def kind(self) -> str:
        return "ensemble" if self.levels is None else "quantile"

    @property
    def attribute_names(self) -> list[str]:
        return ["reward"]

    @property
    def default_mix(self) -> str | None:
        """How attribute distributions are mixed (None: nothing to mix)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What ``/metadata`` and ``distrm score`` show about the model."""
        c = self.config
        return {"model_type": self.model_type, "backbone": c.backbone, "backbone_identity": c.backbone_identity,
                "backbone_revision": getattr(c, "backbone_revision", None), "backbone_max_length": c.backbone_max_length,
                "feature_dim": c.feature_dim, "attributes": self.attribute_names,
                "levels": None if self.levels is None else self.levels.tolist(), "kind": self.kind,
                "mix": self.default_mix}

    # ------------------------------------------------------------------ scoring
    def score_features(self, reward_features: Any, prompt_features: Any = None,
                       responses: Sequence[str] | None = None) -> ScoreOutput:
        raise NotImplementedError

    def attribute_distribution(self, reward_features: Any, responses: Sequence[str] | None = None,
                               debias: bool = True) -> RewardDistribution:
        """Per-attribute distributions [n, M, K] from reward features alone (no gate). The
        default: one attribute, the reward itself."""
        return self.score_features(reward_features, None, responses).attributes

    @property
    def backbone(self) -> Any:
        """The frozen backbone the heads were trained on, loaded on first use and checked
        against the recorded identity (other weights, pooling, length or precision refused)."""
        if self._backbone is None:
            from distrm.features.backbones import load_for_heads

            c = self.config
            check_backbone_folder(resolve_backbone_ref(c.backbone, self._model_dir), "backbone")
            self._backbone = load_for_heads(resolve_backbone_ref(c.backbone, self._model_dir), c.backbone_max_length,
                                            c.backbone_identity, c.backbone_dtype, getattr(c, "backbone_revision", None),
                                            getattr(c, "backbone_prompt_token", "after_header"))
        return self._backbone

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str], batch_size: int = 32,
              store: str | Path | None = None) -> ScoreOutput:
        """Score (prompt, response) pairs end to end: text -> features -> distribution.

        Features are computed in memory and not kept (``store=None``): a server or an RL
        reward function scores texts it will never see again, and caching them would grow
        the disk without bound and keep users' texts. Pass a feature-store folder to cache
        (evaluation does, through :func:`distrm.eval.common.score`)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        from distrm.features.store import extract

        warn_empty(responses)
        feats = extract(self.backbone, list(prompts), list(responses), store=store, batch_size=batch_size, progress=False)
        return self.score_features(torch.as_tensor(feats.reward), torch.as_tensor(feats.prompt), responses)

    # ------------------------------------------------------------------ save / load
    def state_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, config: Any, tensors: dict[str, torch.Tensor], where: str, backbone: Any = None) -> "RewardModel":
        """Build the model from its config and tensors; ``where`` names the weights file in errors."""
        raise NotImplementedError

    def card_summary(self) -> str:
        raise NotImplementedError

    def card_training(self) -> dict[str, Any] | None:
        return None

    def save_pretrained(self, path: str | Path, include_backbone: bool = False) -> Path:
        """Write ``config.json``, ``model.safetensors``, ``README.md`` and the manifest (last).

        ``include_backbone=True`` copies the backbone's folder (safetensors weights, config,
        tokenizer) into ``path/backbone`` and records it as ``./backbone``: the folder is then
        self-contained. Otherwise a local backbone is recorded relative to ``path``.

        Into an existing folder the save is all or nothing: everything is written into a
        staging folder first (the old model stays loadable meanwhile), then renamed into place
        under a removed manifest, and sealed by the new manifest; a save killed at any step
        loads as the old model, the new one, or is refused with a line naming the folder."""
        from distrm.models.card import write_model_card

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        clean_stale_saves(path)
        stage = path / f"{SAVE_STAGING_PREFIX}{os.getpid()}"
        stage.mkdir()
        try:
            config = dataclasses.replace(self.config)
            config.backbone, bundle_src = self._portable_backbone(path, include_backbone)
            tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_tensors().items()}
            save_file(tensors, str(stage / WEIGHTS_NAME),
                      metadata={"format": "pt", "distrm_version": __version__, "model_type": self.model_type})
            raw = dataclasses.asdict(config)
            (stage / CONFIG_NAME).write_bytes((json.dumps(raw, indent=2) + "\n").encode("utf-8"))
            card = write_model_card(stage, self.model_type, raw, self.card_summary(), self.card_training())
            if bundle_src is not None:
                shutil.copytree(bundle_src, stage / BUNDLED_BACKBONE,
                                ignore=shutil.ignore_patterns(*[f"*{s}" for s in PICKLE_SUFFIXES], ".*"))
            # commit: from here until the new manifest the folder reads as unfinished
            (path / MANIFEST_NAME).unlink(missing_ok=True)
            if bundle_src is not None:
                dst = path / BUNDLED_BACKBONE
                if dst.exists() or dst.is_symlink():
                    os.replace(dst, stage / f"{BUNDLED_BACKBONE}.old")
                os.replace(stage / BUNDLED_BACKBONE, dst)
            os.replace(stage / WEIGHTS_NAME, path / WEIGHTS_NAME)
            os.replace(stage / CONFIG_NAME, path / CONFIG_NAME)
            os.replace(card, path / Path(card).name)
            write_manifest(path, self.model_type)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        self.config, self._model_dir = config, path.resolve()
        return path

    def _portable_backbone(self, path: Path, include_backbone: bool) -> tuple[str, Path | None]:
        """The backbone reference to record, and the folder to bundle (None: nothing to copy)."""
        from distrm.features.backbones import ALIASES, resolve_model_dir
        name = resolve_backbone_ref(self.config.backbone, self._model_dir)
        if include_backbone:
            src = Path(resolve_model_dir(name)) if not is_hub_id(name) else None
            if src is None:
                src = snapshot_dir(name, getattr(self.config, "backbone_revision", None))
            dst = path / BUNDLED_BACKBONE
            return f"./{BUNDLED_BACKBONE}", (None if src.resolve() == dst.resolve() else src)
        if name in ALIASES or is_hub_id(name) or not Path(name).is_dir():
            return name, None
        # relative when the backbone sits inside or next to the model folder (they move together:
        # finetune-backbone's OUT/reward_model -> ".."); absolute otherwise (a copied folder still
        # finds a backbone elsewhere on this machine); bundle it for another machine
        rel = os.path.relpath(Path(name).resolve(), path.resolve())
        if Path(rel).parts[:2] == ("..", ".."):
            return str(Path(name).resolve()), None
        return (rel if rel.startswith("..") else f"./{rel}"), None

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, backbone: Any = None, revision: str | None = None) -> "RewardModel":
        """Load a saved folder or Hub id. On :class:`RewardModel` itself it returns whatever
        class ``config.json`` names (same as ``AutoRewardModel``); on a subclass it also
        checks that the folder holds that type."""
        from distrm.config import from_dict

        path = resolve_model_dir(name_or_path, revision)
        if not (path / WEIGHTS_NAME).is_file():
            pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            hint = f" (found {pickles}: pickle files are refused, they can run code on load)" if pickles else ""
            raise FileNotFoundError(f"{path / WEIGHTS_NAME} missing{hint}")
        raw = read_config_json(path)
        klass = model_class(raw.get("model_type", "qrm"), path / CONFIG_NAME)
        if cls is not RewardModel and klass is not cls:
            raise ValueError(f"{path / CONFIG_NAME}: holds a {raw.get('model_type', 'qrm')!r} model, not {cls.model_type!r}; "
                             "load it with distrm.AutoRewardModel")
        verify_manifest(path)
        raw.setdefault("model_type", klass.model_type)
        config = from_dict(klass.config_class, raw, str(path / CONFIG_NAME))
        try:
            tensors = load_file(str(path / WEIGHTS_NAME))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{path / WEIGHTS_NAME}: not a readable safetensors file ({e})") from None
        for k, v in tensors.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise ValueError(f"{path / WEIGHTS_NAME}: tensor {k!r} holds non-finite values")
        model = klass.from_state(config, tensors, str(path / WEIGHTS_NAME), backbone)
        if backbone is None:
            check_backbone_folder(resolve_backbone_ref(config.backbone, path.resolve()), f"{path / CONFIG_NAME}: field 'backbone'")
        model._model_dir = path.resolve()
        return model

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    include_backbone: bool = False, commit_message: str = "Upload distrm reward model") -> str:
        """Save to a temporary folder and upload it with ``huggingface_hub`` (the same files
        ``save_pretrained`` writes, model card included). Returns the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, include_backbone=include_backbone)
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        return str(getattr(info, "commit_url", info))


def check_shape(where: str, name: str, t: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """One line naming the file, the tensor and the expected shape."""
    if t is None:
        raise ValueError(f"{where}: tensor {name!r} missing")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, config.json implies {tuple(shape)}")
    return t
