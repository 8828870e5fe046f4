"""Convert between the released QRM / ArmoRM checkpoints and distrm model folders.

The released models (``nicolinho/QRM-Llama3.1-8B(-v2)``, ``nicolinho/QRM-Llama3-8B``,
``RLHFlow/ArmoRM-Llama3-8B-v0.1``) are one Hugging Face checkpoint: a ``LlamaModel`` under
``model.*`` plus three heads, run by custom modeling code (QRM's copy lives in
``rewardbench/models/qrm.py``; ArmoRM's in its Hub repo, ``modeling_custom.py``):

* ``regression_layer`` -- ``Linear(hidden, M * K, bias=False)`` on the last-layer hidden
  state of the last non-pad token of (prompt + response); QRM reshapes it to [M, K]
  (M = ``num_objectives`` attributes, K = ``num_quantiles`` at levels
  ``linspace(0, 1, K + 2)[1:-1]``), ArmoRM has K = 1 (one value per attribute).
* ``gating`` -- QRM: ``n_hidden`` x [Linear(no bias) -> ReLU -> BatchNorm1d] -> Linear;
  ArmoRM: ``n_hidden`` x [Linear(bias) -> ReLU] -> Linear; both then
  ``softmax(x / gating_temperature) * logit_scale``, on the hidden state of the *first token
  of the last* ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n`` (the
  ``<|eot_id|>`` closing the last prompt turn; ``find_token_for_gating``).
* ``reward_transform_matrix`` T [M, M] -- applied on the attribute axis:
  QRM ``Q~[m, k] = sum_j Q[j, k] T[j, m]`` (per quantile level) and ``rewards = mean_k(Q) @ T``;
  ArmoRM ``r~ = r @ T``. ``score = sum_m g_m * mean_k Q~[m, k]`` (``g`` includes
  ``logit_scale``); QRM's ``reward_quantiles[k] = sum_m g_m Q~[m, k]`` (quantile averaging).

How :func:`import_released` maps them (what is exact):

* backbone: every ``model.*`` tensor, renamed to a plain ``LlamaModel`` checkpoint (shard by
  shard, never all in memory), the config without the reward keys and the tokenizer files, in
  ``OUT/backbone`` (bundled: recorded as ``./backbone``). Bit-identical weights.
* prompt feature: the released gating token is the last token of the prompt rendered
  *without* the assistant header; distrm's default is the last token *with* it. The model
  records ``backbone_prompt_token="before_header"`` so the converted model gates on the same
  token (exact, for any chat template that renders the header-less prompt as a prefix).
* heads: T and ``logit_scale`` s are linear, so they are folded into the head coefficients,
  ``coef[m, k] = s * sum_j T[j, m] W[j, k]`` (in float64, then rounded to float32 like the
  released weights), intercepts 0. Exact for any T. Exception (ArmoRM, K = 1): a T that
  differs from the identity in one row v only -- ArmoRM's verbosity debiasing,
  ``r~_m = r_m - p_m r_v`` -- is kept as distrm's debias (``debias_source`` = attribute v,
  ``p_m = delta_vm - T[v, m]``), which is the same formula for K = 1, so the raw attribute
  values stay visible (``attribute_distribution(debias=False)``). distrm's own debias is not
  used for QRM's T: it subtracts ``p_m * mean(Q_v)`` where the released code subtracts
  ``p_m * Q_v(tau)`` level by level (same mean, other quantiles).
* gate: the same layers (QRM: ``batch_norm=True``; ArmoRM: ``batch_norm=False,
  hidden_bias=True``), BatchNorm running statistics, final bias and temperature copied;
  input standardisation left at identity. Its weights sum to one; ``logit_scale`` went into
  the heads, so distrm's attribute values are s times the released ``rewards`` (s = 1 in
  every released model we know of; a different s is logged).
* what the released ``score`` is in distrm terms: the plain average of the K mixed quantiles,
  ``out.reward.values.mean(-1)`` (exactly: quantile averaging is linear). distrm's
  ``ScoreOutput.mean`` is the mean of the piecewise-linear quantile function with flat tails,
  ``(sum_k q_k + (q_1 + q_K) / 2) / (K + 1)`` for levels k / (K + 1): it differs from the
  released score by ``((q_1 + q_K) / 2 - mean_k q_k) / (K + 1)`` (zero for symmetric
  quantiles; about 0.01 for strongly skewed ones on a [0, 1] scale). For ArmoRM (K = 1) the
  mean *is* the score.
* what is *not* identical: distrm sorts each attribute's K quantiles (monotone
  rearrangement); the released code does not. Level averages are unaffected; per-attribute
  and mixed quantiles (and distrm's mean) differ where the released heads cross.
  Arithmetic: heads in float64 vs float32, and the backbone runs in ``dtype`` (float32 by
  default; the released models were run in bfloat16 on GPUs).

:func:`export_qrm` is the inverse for QRM-type models: ``config.json`` (the backbone's, plus
``num_objectives``, ``num_quantiles``, ``gating_*``, ``distrm_attributes``/``distrm_levels``)
and ``model.safetensors`` (sharded like the backbone) with ``model.*``, ``regression_layer``,
``gating`` (``logit_scale`` 1; the gate's input scale folded into its first layer) and
``reward_transform_matrix`` (identity: an imported T is already in the heads), plus the
tokenizer. It is exact where the released architecture can express the model and refuses the
rest, naming why: head intercepts and a centred gate input (the released heads and first gate
layer have no bias), debiasing (distrm subtracts a multiple of the source's mean, the released
T subtracts level by level; response length is not a function of the hidden state), the
default prompt token,
K != M (the released ``reward_quantiles`` code broadcasts gate weights over M where it needs
K), a non-Llama backbone (the released class is a ``LlamaModel``). A model imported with
:func:`import_released` always qualifies, and export -> import returns identical tensors.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from distrm.hf_hub import commit_of, is_hub_id, snapshot_dir
from distrm.models.base import BUNDLED_BACKBONE, PICKLE_SUFFIXES

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "qrm", "armorm")
# ArmoRM's 19 objectives, in order (its model card); QRM was trained on the same data and its
# config names none, so a released 19-attribute model gets these names unless told otherwise
ARMORM_ATTRIBUTES = [
    "helpsteer-helpfulness", "helpsteer-correctness", "helpsteer-coherence", "helpsteer-complexity",
    "helpsteer-verbosity", "ultrafeedback-overall_score", "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness", "ultrafeedback-honesty", "ultrafeedback-helpfulness", "beavertails-is_safe",
    "prometheus-score", "argilla-overall_quality", "argilla-judge_lm", "code-complexity", "code-style",
    "code-explanation", "code-instruction-following", "code-readability",
]
# what the released code hard-codes as the gating pattern (Llama-3 token ids of
# "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
RELEASED_GATING_TEXT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
RELEASED_GATING_IDS = [128009, 128006, 78191, 128007, 271]
HEAD_KEYS = ("regression_layer.", "gating.", "reward_transform_matrix")
# config keys of the released reward class (dropped from the plain backbone's config)
REWARD_CONFIG_KEYS = ("num_objectives", "num_quantiles", "gating_temperature", "gating_hidden_dim", "gating_n_hidden",
                      "auto_map", "architectures", "id2label", "label2id", "distrm_attributes", "distrm_levels")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]  # never pickle
INDEX_NAME = "model.safetensors.index.json"


# ---------------------------------------------------------------------------------- reading
def _source_dir(src: str | Path, revision: str | None) -> Path:
    p = Path(src).expanduser()
    if p.is_dir():
        return p
    if not is_hub_id(str(src)):
        raise FileNotFoundError(f"{src}: no such folder (and not a Hub repo id owner/name)")
    return snapshot_dir(str(src), revision, allow_patterns=HUB_PATTERNS)


def _weight_files(src: Path) -> list[Path]:
    """The checkpoint's safetensors files (sharded or not); pickle checkpoints are refused."""
    index = src / INDEX_NAME
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{index}: not a safetensors index (no weight_map)") from None
        missing = [n for n in names if not (src / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{src}: shards listed in {INDEX_NAME} are missing: {missing}")
        return [src / n for n in names]
    if (src / "model.safetensors").is_file():
        return [src / "model.safetensors"]
    found = sorted(src.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(f.name for f in src.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{src}: only pickle checkpoints {pickles}; they are refused (loading pickle can run code). "
                         "Convert them to safetensors where you trust them, e.g. with transformers' "
                         "save_pretrained(safe_serialization=True), then convert that folder")
    raise FileNotFoundError(f"{src}: no model.safetensors (nor shards) found")


def _read_config(src: Path) -> dict[str, Any]:
    f = src / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f} missing: not a Hugging Face checkpoint folder")
    raw = json.loads(f.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{f}: expected a JSON object")
    return raw


def _is_head(key: str) -> bool:
    return key.startswith(HEAD_KEYS)


def _read_heads(files: list[Path]) -> dict[str, torch.Tensor]:
    heads: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                if _is_head(k):
                    heads[k] = fh.get_tensor(k)
    return heads


# ---------------------------------------------------------------------------------- gates
def _layer_indices(heads: dict[str, torch.Tensor], prefix: str) -> dict[int, dict[str, torch.Tensor]]:
    out: dict[int, dict[str, torch.Tensor]] = {}
    pat = re.compile(rf"^{re.escape(prefix)}(\d+)\.(.+)$")
    for k, v in heads.items():
        m = pat.match(k)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = v
    return out


def _gate_from_released(heads: dict[str, torch.Tensor], raw: dict[str, Any], d: int, M: int, where: str):
    """distrm GatingNetwork with the released gate's weights (see the module docstring)."""
    from distrm.heads.gate import GatingNetwork

    layers = _layer_indices(heads, "gating.layers.")
    if not layers:
        raise ValueError(f"{where}: no gating.layers.* tensors: not a released QRM/ArmoRM checkpoint")
    linear = sorted(i for i, t in layers.items() if "weight" in t and t["weight"].ndim == 2)
    bn = sorted(i for i, t in layers.items() if "running_mean" in t)
    n_hidden = len(linear) - 1
    if n_hidden < 1:
        raise ValueError(f"{where}: gate has {len(linear)} linear layers; expected hidden layers and an output layer")
    if raw.get("gating_n_hidden", n_hidden) != n_hidden:
        raise ValueError(f"{where}: config gating_n_hidden={raw['gating_n_hidden']} but the checkpoint has {n_hidden}")
    batch_norm = bool(bn)
    step = 3 if batch_norm else 1  # QRM: [Linear, ReLU, BatchNorm] per block; ArmoRM: Linear per block
    if linear != [step * i for i in range(n_hidden + 1)] or (batch_norm and bn != [3 * i + 2 for i in range(n_hidden)]):
        raise ValueError(f"{where}: unrecognised gate layout (linear layers at {linear}, BatchNorm at {bn})")
    hidden_bias = "bias" in layers[0]
    hidden = int(layers[0]["weight"].shape[0])
    temperature = float(raw.get("gating_temperature", 10))  # the released code's default
    gate = GatingNetwork(d, M, hidden, n_hidden, temperature, batch_norm=batch_norm, hidden_bias=hidden_bias)
    state = gate.state_dict()  # keeps distrm's own extras (input_mean 0, input_scale 1, log_scale)
    for i in range(n_hidden):
        for name, t in layers[step * i].items():
            state[f"net.{3 * i}.{name}"] = t
        if batch_norm:
            for name, t in layers[3 * i + 2].items():
                state[f"net.{3 * i + 2}.{name}"] = t
    for name, t in layers[step * n_hidden].items():
        state[f"net.{3 * n_hidden}.{name}"] = t
    try:
        gate.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{where}: gate weights do not fit a {n_hidden}x{hidden} gate: {str(e).splitlines()[0]}") from None
    scale = heads.get("gating.logit_scale")
    logit_scale = 1.0 if scale is None else float(scale.reshape(-1)[0])
    return gate.eval(), logit_scale


def _single_row(T: torch.Tensor) -> int | None:
    """The row v if T differs from the identity in row v only (ArmoRM's debias shape)."""
    diff = (T - torch.eye(T.shape[0], dtype=T.dtype)) != 0
    rows = torch.nonzero(diff.any(dim=1)).flatten().tolist()
    return rows[0] if len(rows) == 1 else None


# ---------------------------------------------------------------------------------- backbone
def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    f = folder / "tokenizer_config.json"
    return f.is_file() and bool(json.loads(f.read_text(encoding="utf-8")).get("chat_template"))


def _shard_names(n: int) -> list[str]:
    return ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _stream_shards(dst: Path, files: list[Path], rename: Callable[[str], str | None],
                   extra: dict[str, torch.Tensor] | None = None) -> int:
    """Copy the tensors ``rename`` keeps (under its names) from ``files`` into ``dst``, one
    source shard in memory at a time (an 8B checkpoint never is whole), plus ``extra`` (added
    to the only shard, or as a last shard); an index when there are several. Returns the
    number of tensors copied from ``files``."""
    keep = []
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            if any(rename(k) is not None for k in fh.keys()):
                keep.append(f)
    n = len(keep) + (1 if extra and len(keep) != 1 else 0)
    names = _shard_names(max(n, 1))
    weight_map, total, copied = {}, 0, 0
    for i, name in enumerate(names):
        tensors: dict[str, torch.Tensor] = {}
        if i < len(keep):
            with safe_open(str(keep[i]), framework="pt") as fh:
                for k in fh.keys():
                    new = rename(k)
                    if new is not None:
                        tensors[new] = fh.get_tensor(k)
            copied += len(tensors)
        if extra and (len(keep) == 1 or i == len(keep)):
            tensors.update(extra)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / name), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
        del tensors
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return copied


def _released_to_backbone(key: str) -> str | None:
    if _is_head(key):
        return None
    if key.startswith("model."):
        return key[len("model."):]
    log.warning("convert: dropping tensor %r (neither backbone model.* nor a reward head)", key)
    return None


def _check_tokenizer(src: Path) -> None:
    if not any((src / n).is_file() for n in TOKENIZER_FILES):
        raise FileNotFoundError(f"{src}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) to bundle")
    if not _has_chat_template(src):
        raise ValueError(f"{src}: the tokenizer has no chat template; distrm renders conversations with it")


def _write_backbone(files: list[Path], raw: dict[str, Any], src: Path, dst: Path) -> None:
    """``dst``: a plain base-model folder (``AutoModel`` loads it) with the released backbone."""
    dst.mkdir(parents=True)
    if not _stream_shards(dst, files, _released_to_backbone):
        raise ValueError(f"{src}: no backbone tensors (model.*) in the checkpoint")
    cfg = {k: v for k, v in raw.items() if k not in REWARD_CONFIG_KEYS}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    _copy_tokenizer(src, dst)


# ---------------------------------------------------------------------------------- import
def import_released(
    src: str | Path,
    out_dir: str | Path,
    layout: str = "auto",
    revision: str | None = None,
    attributes: list[str] | None = None,
    max_length: int = 4096,
    dtype: str = "float32",
) -> Path:
    """Convert a released QRM (``layout="qrm"``) or ArmoRM (``"armorm"``) checkpoint -- a local
    folder or a Hub id (safetensors only) -- into a self-contained distrm model folder
    ``out_dir`` (``AutoRewardModel.from_pretrained(out_dir)`` loads it). See the module
    docstring for the mapping and what is exact.

    ``attributes``: names for the M objectives (default: ``distrm_attributes`` from the config,
    else ArmoRM's 19 names when M = 19, else ``attr_0..``). ``max_length``: the backbone's
    truncation length (the released code does not truncate). ``dtype``: the backbone precision
    recorded in the model (float32 is exact on CPU; bfloat16 is what the released models ran
    in on GPUs)."""
    from distrm.features.backbones import _ENCODER_TYPES, feature_identity, parse_dtype
    from distrm.models.qrm import DistributionalRewardModel, ModelConfig

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    dt = parse_dtype(dtype)
    if dt is None:
        raise ValueError("dtype must be explicit (float32 or bfloat16): the recorded backbone identity depends on it")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; choose a new output folder")
    srcdir = _source_dir(src, revision)
    raw = _read_config(srcdir)
    files = _weight_files(srcdir)
    where = str(srcdir)
    heads = _read_heads(files)
    if "regression_layer.weight" not in heads:
        raise ValueError(f"{where}: no regression_layer.weight: not a released QRM/ArmoRM checkpoint")
    if raw.get("model_type") in _ENCODER_TYPES:
        raise ValueError(f"{where}: model_type {raw.get('model_type')!r} is an encoder; the released layouts are causal LMs")
    _check_tokenizer(srcdir)

    W = heads["regression_layer.weight"].double()
    M = int(raw.get("num_objectives", 19))  # the released code's default
    d = int(W.shape[1])
    if W.shape[0] % M:
        raise ValueError(f"{where}: regression_layer has {W.shape[0]} rows, not a multiple of num_objectives={M}")
    K = int(raw.get("num_quantiles", W.shape[0] // M))
    if W.shape[0] != M * K:
        raise ValueError(f"{where}: regression_layer has {W.shape[0]} rows; num_objectives x num_quantiles = {M * K}")
    if d != int(raw.get("hidden_size", d)):
        raise ValueError(f"{where}: regression_layer input {d} != hidden_size {raw.get('hidden_size')}")
    detected = "qrm" if ("num_quantiles" in raw or K > 1) else "armorm"
    if layout == "auto":
        layout = detected
    elif layout != detected:
        raise ValueError(f"{where}: looks like a {detected!r} checkpoint ({M} objectives x {K} quantiles), "
                         f"not {layout!r}")

    names = list(attributes) if attributes else list(raw.get("distrm_attributes") or [])
    if not names:
        names = list(ARMORM_ATTRIBUTES) if M == len(ARMORM_ATTRIBUTES) else [f"attr_{m}" for m in range(M)]
    if len(names) != M or len(set(names)) != M:
        raise ValueError(f"need {M} distinct attribute names, got {names}")
    levels = raw.get("distrm_levels") or torch.linspace(0, 1, K + 2, dtype=torch.float64)[1:-1].tolist()
    if layout == "qrm" and len(levels) != K:
        raise ValueError(f"{where}: distrm_levels has {len(levels)} levels, num_quantiles is {K}")

    gate, s = _gate_from_released(heads, raw, d, M, where)
    if s <= 0:
        raise ValueError(f"{where}: gating.logit_scale = {s}; a non-positive scale would flip the ranking")
    if s != 1.0:
        log.info("convert: gating.logit_scale = %g is folded into the heads (attribute values are scaled by it)", s)
    T = heads.get("reward_transform_matrix", torch.eye(M)).double()
    if tuple(T.shape) != (M, M):
        raise ValueError(f"{where}: reward_transform_matrix has shape {tuple(T.shape)}, expected ({M}, {M})")

    Wmk = W.reshape(M, K, d)
    debias = torch.zeros(M, dtype=torch.float64)
    debias_source = None
    v = _single_row(T) if K == 1 else None
    if bool(torch.equal(T, torch.eye(M, dtype=T.dtype))):
        transform = "identity"
        coef = Wmk * s
    elif v is not None:  # ArmoRM's verbosity debias: r~_m = r_m - p_m r_v, distrm's own formula for K = 1
        transform = f"debias on {names[v]!r}"
        debias_source = names[v]
        debias = -T[v].clone()
        debias[v] += 1.0
        coef = Wmk * s
    else:  # any other T: folded into the heads (exact, also level by level)
        transform = "folded into the heads"
        coef = torch.einsum("jm,jkd->mkd", T, Wmk) * s
    coef = coef.float().double()  # float32-representable, like the released weights (export is exact)

    cfg = ModelConfig(
        backbone=f"./{BUNDLED_BACKBONE}", feature_dim=d, attributes=names,
        head="quantile" if layout == "qrm" else "ridge", levels=[float(x) for x in levels] if layout == "qrm" else None,
        gate="learned", gate_hidden=gate.net[0].out_features, gate_n_hidden=(len(gate.net) - 1) // 3,
        gate_temperature=float(gate.temperature), gate_batch_norm=isinstance(gate.net[2], torch.nn.BatchNorm1d),
        gate_hidden_bias=gate.net[0].bias is not None, debias_source=debias_source, mix="quantile_average",
        backbone_identity=None, backbone_max_length=max_length, backbone_dtype=str(dt).replace("torch.", ""),
        backbone_prompt_token="before_header",
    )
    model = DistributionalRewardModel(cfg, coef, torch.zeros(M, K, dtype=torch.float64), gate, debias)

    out.mkdir(parents=True, exist_ok=True)
    try:
        bdir = out / BUNDLED_BACKBONE
        _write_backbone(files, raw, srcdir, bdir)
        # the identity load_for_heads will compute for OUT/backbone (a local folder: content only)
        cfg.backbone_identity = feature_identity(str(bdir.resolve()), bdir.resolve(), "causal", max_length, dt,
                                                 prompt_token="before_header")
        model._model_dir = out.resolve()  # ./backbone is already in place: save_pretrained keeps it
        model.save_pretrained(out, include_backbone=True)
        provenance = {"source": str(src), "commit": commit_of(srcdir), "layout": layout, "num_objectives": M,
                      "num_quantiles": K, "logit_scale": s, "reward_transform_matrix": transform,
                      "prompt_token": "before_header", "quantiles_sorted": K > 1}
        (out / "distrm_convert.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    except BaseException:  # a half-written folder (no manifest) would only block the next try
        shutil.rmtree(out, ignore_errors=True)
        raise
    log.info("convert: %s (%s, %d attributes x %d levels, transform %s) -> %s", src, layout, M, K, transform, out)
    return out


# ---------------------------------------------------------------------------------- export
def _backbone_to_released(key: str) -> str | None:
    if key.startswith("lm_head."):
        return None  # a causal-LM backbone's output layer: the reward model has none
    return key if key.startswith("model.") else f"model.{key}"


def export_qrm(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a distrm QRM as the released QRM layout (see the module docstring): loadable by
    ``rewardbench.models.qrm.LlamaForRewardModelWithGating31`` with the same score. Raises
    ValueError naming every part the layout cannot express (nothing is approximated)."""
    from distrm.features.backbones import resolve_model_dir
    from distrm.models.auto import load_reward_model
    from distrm.models.base import resolve_backbone_ref

    model = load_reward_model(model_dir)
    c = model.config
    problems: list[str] = []
    if model.model_type != "qrm":
        raise ValueError(f"{model_dir}: a {model.model_type!r} model; only QRM models export to the QRM layout")
    M, K = len(c.attributes), c.n_levels
    if c.head != "quantile":
        problems.append(f"head={c.head!r}: the QRM layout holds quantile heads (K > 1)")
    if K != M:
        problems.append(f"{M} attributes but {K} levels: the released reward_quantiles code needs as many levels as "
                        "attributes (it broadcasts the gate weights over num_objectives)")
    if c.gate != "learned" or model.gate is None:
        problems.append("gate=fixed: the QRM layout holds a learned gate")
    elif not c.gate_batch_norm or c.gate_hidden_bias:
        problems.append("the gate is ArmoRM-style (hidden biases, no BatchNorm); QRM's gate has neither")
    elif bool((model.gate.input_mean != 0).any()):
        problems.append("the gate centres its input (input_mean != 0); QRM's first gate layer has no bias")
    if bool((model.intercept != 0).any()):
        problems.append(f"the heads have intercepts (max |b| = {float(model.intercept.abs().max()):.3g}); "
                        "QRM's regression_layer has no bias")
    if bool((model.debias != 0).any()):
        problems.append(f"debias (source {c.debias_source!r}) is on: distrm subtracts p_m x the mean of the source, the "
                        "released transform subtracts p_m x its quantile level by level (and length is not a function "
                        "of the hidden state)")
    if getattr(c, "backbone_prompt_token", "after_header") != "before_header":
        problems.append("the gate was trained on the prompt feature after the assistant header; the released code "
                        "gates on the token before it (backbone_prompt_token='before_header')")
    bb = Path(resolve_model_dir(resolve_backbone_ref(c.backbone, model._model_dir)))
    if not bb.is_dir():
        bb = snapshot_dir(str(c.backbone), getattr(c, "backbone_revision", None), allow_patterns=HUB_PATTERNS)
    braw = _read_config(bb)
    if braw.get("model_type") != "llama":
        problems.append(f"backbone model_type {braw.get('model_type')!r}: the released class wraps a LlamaModel")
    if problems:
        raise ValueError(f"{model_dir}: cannot be written exactly in the QRM layout:\n  - " + "\n  - ".join(problems))
    if c.mix != "quantile_average":
        log.warning("export: the model mixes with %r; the released reward_quantiles are quantile averages "
                    "(the score is the same)", c.mix)

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; choose a new output folder")
    coef = model.coef  # [M, K, d], float64 (float32 values for imported models: exact)
    gate = model.gate
    n_hidden, step = c.gate_n_hidden, 3
    gs = gate.state_dict()
    heads: dict[str, torch.Tensor] = {
        "regression_layer.weight": coef.reshape(M * K, -1).float(),
        "reward_transform_matrix": torch.eye(M, dtype=torch.float32),
        "gating.logit_scale": torch.ones(1, dtype=torch.float32),
    }
    for i in range(n_hidden):
        w = gs[f"net.{step * i}.weight"].float()
        if i == 0:  # (x / scale) W^T = x (W / scale)^T: the standardisation's scale folds exactly
            w = w / gate.input_scale.float()[None, :]
        heads[f"gating.layers.{step * i}.weight"] = w
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            heads[f"gating.layers.{step * i + 2}.{name}"] = gs[f"net.{step * i + 2}.{name}"]
    heads[f"gating.layers.{step * n_hidden}.weight"] = gs[f"net.{step * n_hidden}.weight"].float()
    heads[f"gating.layers.{step * n_hidden}.bias"] = gs[f"net.{step * n_hidden}.bias"].float()

    raw = {k: v for k, v in braw.items() if k not in REWARD_CONFIG_KEYS}
    raw.update({
        "architectures": ["LlamaForRewardModelWithGating31"], "num_objectives": M, "num_quantiles": K,
        "gating_temperature": float(gate.temperature), "gating_hidden_dim": c.gate_hidden, "gating_n_hidden": n_hidden,
        "distrm_attributes": list(c.attributes), "distrm_levels": list(c.levels),
    })
    out.mkdir(parents=True, exist_ok=True)
    try:
        _stream_shards(out, _weight_files(bb), _backbone_to_released, extra=heads)
        _copy_tokenizer(bb, out)
        (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")  # last: marks it done
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    if raw.get("pad_token_id") is None:
        log.warning("export: the backbone config has no pad_token_id; the released code then scores one text per batch")
    _check_gating_ids(out)
    expected = torch.linspace(0, 1, K + 2, dtype=torch.float64)[1:-1]
    if not torch.allclose(torch.tensor(c.levels, dtype=torch.float64), expected, atol=1e-9):
        log.warning("export: levels %s are not linspace(0, 1, K + 2)[1:-1], which the released code assumes "
                    "(kept in distrm_levels for re-import)", c.levels)
    log.info("export: %s -> %s (QRM layout, %d attributes x %d levels)", model_dir, out, M, K)
    return out


def _check_gating_ids(folder: Path) -> None:
    """The released code looks for hard-coded Llama-3 token ids; warn when this tokenizer differs."""
    try:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(folder).encode(RELEASED_GATING_TEXT, add_special_tokens=False)
    except Exception as e:  # noqa: BLE001 -- only a check
        log.warning("export: could not check the gating token ids (%s)", e)
        return
    if ids != RELEASED_GATING_IDS:
        log.warning("export: this tokenizer encodes %r as %s, not the Llama-3 ids %s the released code hard-codes "
                    "(its find_token_for_gating will not find the assistant turn)", RELEASED_GATING_TEXT, ids,
                    RELEASED_GATING_IDS)
