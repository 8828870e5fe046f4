"""Dataclass configs that a YAML file and the command line both fill: the one config system.

One dataclass per pipeline step; ``TrainConfig`` nests them. Every command (train, finetune,
serve, eval, bon, extract, rl) declares its options as such a dataclass and registers them with
:func:`add_config_arguments`; :func:`config_from_args` then fills it from, in order, the YAML
file (``--config``), the command's flags and ``--set section.field=value`` (values parsed as
YAML, so ``--set gate.epochs=50`` is an int). Every value is coerced to its annotated type
(``Literal`` choices included) and each dataclass's ``__post_init__`` checks ranges and risk
specs -- all when the config is built, i.e. before any data, backbone or feature work.
Unknown keys are an error naming the key and the file, never silently ignored. A field's
help text is written once, as its source comment (or its entry in the class docstring's
``Attributes:`` section), and ``--help`` shows it.

Why flags *and* YAML: users script runs with files, and try things with flags; both must
mean the same, so a flag is nothing but a named ``--set`` for one field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


@dataclass
class DataConfig:
    data_dir: str | None = None  # default: $DISTRM_DATA_DIR or ../shared/data
    rated: list[str] = field(default_factory=lambda: ["default"])  # registry names or files
    pairs: list[str] = field(default_factory=lambda: ["default"])
    test_fraction: float = 0.2  # held-out share of prompts (split by prompt hash)
    strict: bool = False  # any skipped row is an error
    max_rows_per_source: int | None = None  # cap per source, for quick runs
    # attributes rated on fewer items are left out (reported): a linear head on d >> n items is
    # noise, and the gate would still be free to weight it (e.g. the 8-row HelpSteer2 fixture)
    min_items_per_attribute: int = 30


@dataclass
class BackboneConfig:
    name: str = "minilm"  # alias (minilm, smollm2-135m, gemma3-270m), HF name or local path
    max_length: int = 512
    batch_size: int = 32
    device: str | None = None  # default: cuda if available
    dtype: str | None = None  # None/auto: bf16 on GPU, fp32 on CPU; "bfloat16" on an AMX CPU is ~3x faster
    store: str = ".cache/distrm/features"  # feature store directory
    # dtype the feature store keeps (features are read back as float32): bfloat16/float16 halve
    # the disk and page cache at paper scale; part of the store key (float32 stores stay valid)
    store_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # train (model: qrm) from memory-mapped store views read in row blocks instead of whole
    # matrices. null = automatic: stream when (rated items + 3 x pairs) x d x 8 bytes exceeds
    # 2 GiB -- the float64 copies the in-memory path makes of the rated, chosen, rejected and
    # prompt features (600k pairs x 4096 would be ~60 GB); true / false force it
    stream: bool | None = None
    stream_block_rows: int = 8192  # rows per read when streaming (memory: a block x d floats)

    def __post_init__(self) -> None:
        if self.stream_block_rows < 1:
            raise ValueError(f"stream_block_rows must be >= 1, got {self.stream_block_rows}")


@dataclass
class HeadsConfig:
    kind: Literal["quantile", "ridge"] = "quantile"
    n_levels: int = 19  # levels linspace(0, 1, K + 2)[1:-1]: 0.05..0.95 for K = 19
    # L1 penalty on standardised features; null = chosen per attribute by cross-validation
    # (grouped by prompt) on a decreasing alpha path. A number fixes it (QRM's paper: 0.003,
    # on raw Llama-3-8B features)
    alpha: float | None = None
    n_alphas: int = 8  # path length, the intercept-only (marginal) model included
    alpha_min_ratio: float = 0.01  # smallest alpha on the path / the smallest alpha giving the marginal model
    cv_folds: int = 3  # folds (whole prompts held out)
    cv_levels: int | None = 9  # levels scored in CV (linspace as n_levels); null = all n_levels
    standardize: bool = True  # penalty on standardised features: the same on every backbone
    solver: Literal["ipm", "admm"] = "ipm"  # exact interior point; admm for problems too big for d x d systems
    tol: float | None = None  # certified relative duality gap (default 1e-6 ipm, 1e-3 admm)
    max_iter: int | None = None  # per solve (default 100 ipm Newton steps, 5000 admm steps)
    drop_uninformative: bool = False  # leave out attributes whose heads do not beat their marginal held out
    device: str | None = None


@dataclass
class GateConfig:
    kind: Literal["learned", "fixed"] = "learned"
    fixed_weights: dict[str, float] | None = None  # attribute -> weight, for kind=fixed
    hidden: int = 1024
    n_hidden: int = 3
    temperature: float = 5.0
    dropout: float = 0.0
    lr: float = 3e-4
    batch_size: int = 1024
    weight_decay: float = 1e-3
    epochs: int = 3
    val_fraction: float = 0.15  # training pairs (whole prompts) held out to report the gate's accuracy


@dataclass
class DebiasConfig:
    enabled: bool = True
    source: str = "length"  # "length" or the name of a verbosity attribute
    threshold: float = 0.03  # Spearman correlation allowed with the verbosity signal


@dataclass
class EnsembleConfig:
    """``model: ensemble``: N linear Bradley-Terry heads on frozen features (distrm.models.bt_ensemble)."""

    n_members: int = 10  # N (uncertainty-aware RLHF paper: 10)
    # resample the training pairs per member (multinomial counts): without it (or anchored /
    # prior_scale), converged L2-penalised linear heads are one strictly convex optimum and
    # the members collapse to the same head
    bootstrap: bool = True
    l2: float | None = None  # (l2 / 2) ||w_i - m_i||^2 per member (standardised features; m_i = 0 unless anchored / prior_scale); null = chosen by CV on held-out pair likelihood
    lr: float = 1e-2  # Adam
    epochs: int = 30
    batch_size: int | None = 256  # None: full batch
    init_std: float = 0.05  # independent N(0, init_std^2) start per weight
    seed: int | None = None  # default: the top-level seed
    optimizer: Literal["adam", "lbfgs"] = "adam"  # lbfgs: full batch, to convergence
    init: Literal["random", "single_head"] = "random"  # single_head: fit one head, attach N at it
    # anchored ensemble (Pearce et al. 2020): member i's L2 penalty pulls toward its own random
    # anchor a_i ~ N(0, prior_std^2) instead of 0 (members then disagree where the data are silent)
    anchored: bool = False
    # randomized prior functions (Osband et al. 2018): member = trainable head + prior_scale *
    # fixed random linear prior v_i ~ N(0, prior_std^2), folded into the saved heads; 0 = off
    prior_scale: float = 0.0
    prior_std: float | None = None  # std of anchors / prior weights (standardised); null = 1/sqrt(n_pairs * l2)
    collapse_corr: float = 0.99  # warn when the members' mean pairwise reward correlation exceeds this

    def __post_init__(self) -> None:
        if self.n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {self.n_members}")
        if not self.prior_scale >= 0:
            raise ValueError(f"prior_scale must be >= 0, got {self.prior_scale}")
        if self.prior_std is not None and not self.prior_std > 0:
            raise ValueError(f"prior_std must be > 0, got {self.prior_std}")


@dataclass
class QuantileEnsembleConfig:
    """``model: quantile_ensemble``: the QRM's quantile heads fitted n_members times, each on a
    bootstrap resample of the rated items (distrm.models.quantile_ensemble); levels, solver,
    tol and max_iter come from ``heads``, the attribute mixing method from ``mix``."""

    n_members: int = 5  # B, bootstrap members
    # L1 penalty on standardised features, the same for every attribute and member (one CV per
    # member would multiply the cost by the path length); 0.02 is about where the QRM's CV lands
    # on MiniLM features with the default data (0.01-0.03 per attribute)
    alpha: float = 0.02
    weights: dict[str, float] | None = None  # attribute -> fixed weight (unnamed: 0); null = uniform
    seed: int | None = None  # seeds the resampling; default: the top-level seed

    def __post_init__(self) -> None:
        if self.n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {self.n_members}")
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")


@dataclass
class DPLConfig:
    """``model: dpl``: a distributional preference learning head (Siththaranjan et al. 2023) on
    frozen features, fitted on preference pairs alone (distrm.models.dpl)."""

    head: Literal["mean_variance", "categorical"] = "mean_variance"  # utility ~ N(mu, sigma^2), or a distribution over n_bins atoms
    # (l2 / 2) ||weights||^2 on standardised features (mean_variance: also the log-sigma
    # intercept, which fixes the utility scale); null = one BT head's penalty chosen by CV on
    # held-out pair likelihood
    l2: float | None = None
    n_bins: int = 10  # categorical: atoms linspace(support_min, support_max, n_bins) (paper: 10 on [0, 1])
    support_min: float = 0.0  # categorical: lowest atom
    support_max: float = 1.0  # categorical: highest atom
    entropy_weight: float = 0.1  # categorical: bonus on the entropy of the batch-mean distribution (paper: 0.1)
    variance_penalty: float = 0.0  # mean_variance: + this x mean(sigma_c^2 + sigma_r^2) (paper's option; 0 = off)
    init_std: float = 0.01  # categorical: std of the random initial logit weights
    max_iter: int = 500  # L-BFGS iterations (full batch, float64)
    n_levels: int = 100  # quantile cells of the output distribution (exact mean; exact variance for mean_variance)
    seed: int | None = None  # categorical initialisation; default: the top-level seed

    def __post_init__(self) -> None:
        if self.l2 is not None and not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        if not self.support_max > self.support_min:
            raise ValueError(f"support_max must be > support_min, got [{self.support_min}, {self.support_max}]")
        if not self.entropy_weight >= 0 or not self.variance_penalty >= 0:
            raise ValueError(f"entropy_weight and variance_penalty must be >= 0, got {self.entropy_weight}, {self.variance_penalty}")
        if self.max_iter < 1 or self.n_levels < 2:
            raise ValueError(f"need max_iter >= 1 and n_levels >= 2, got {self.max_iter}, {self.n_levels}")


@dataclass
class LoraSettings:
    """``lora:`` of ``distrm finetune-backbone`` and ``distrm rl rloo`` (-> ``peft.LoraConfig``)."""

    r: int = 16  # rank (distrm rl rloo's default: 32)
    alpha: int = 32  # lora_alpha; the update is scaled by alpha / r (distrm rl rloo's default: 64)
    dropout: float = 0.05  # lora_dropout
    target_modules: list[str] | str = "all-linear"  # peft's "all-linear" or module names (q_proj, v_proj, ...)


@dataclass
class TrainConfig:
    output_dir: str = "runs/qrm-minilm"
    seed: int = 0
    model: Literal["qrm", "ensemble", "quantile_ensemble", "dpl"] = "qrm"
    mix: Literal["quantile_average", "probability"] = "quantile_average"
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    debias: DebiasConfig = field(default_factory=DebiasConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    quantile_ensemble: QuantileEnsembleConfig = field(default_factory=QuantileEnsembleConfig)
    dpl: DPLConfig = field(default_factory=DPLConfig)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config", _prefix: str = "", _base: Any = None) -> T:
    """Build a (nested) dataclass from a dict, rejecting unknown keys by name and values of the
    wrong type (see :func:`coerce`). Keys a nested section leaves out keep the enclosing
    config's default for that section (``lora: LoraSettings = field(default_factory=lambda:
    LoraSettings(r=32))`` + ``lora: {alpha: 8}`` gives r=32), not the section class's defaults."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {_prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {[_prefix + u for u in unknown]}; valid: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(tp, v or {}, where, f"{_prefix}{k}.", _section_default(cls, k, _base))
        else:
            kwargs[k] = coerce(v, tp, f"{where}: {_prefix}{k}")
    try:
        return dataclasses.replace(_base, **kwargs) if _base is not None else cls(**kwargs)
    except ValueError as e:  # a range / consistency check in __post_init__: say where it came from
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: {_prefix.rstrip('.') + ': ' if _prefix else ''}{e}") from None


def _section_default(cls: type, name: str, base: Any) -> Any:
    """The default of the nested-dataclass field ``name`` of ``cls`` (taken from ``base``, the
    enclosing section's own default, when there is one), or None."""
    if base is not None:
        return getattr(base, name)
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is dataclasses.MISSING else f.default


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as the annotated type ``tp`` (int, float, bool, str, Literal, X | None, list[X],
    dict[K, V]), or a ValueError naming the key, the expected type or choices and the value.
    Numbers written as strings (YAML reads ``1e-3`` as a string) are converted; nothing else is
    guessed. Runs when a config is loaded, i.e. before any data, backbone or feature work."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return coerce(value, a, where)
            except ValueError:
                continue
        names = " or ".join(_type_name(a) for a in args)
        raise ValueError(f"{where}: expected {names}, got {value!r}")
    if origin is tuple:  # tuple[X, ...]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(coerce(x, args[0], f"{where}[{i}]") for i, x in enumerate(value)) if args else tuple(value)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [coerce(x, args[0], f"{where}[{i}]") for i, x in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return {coerce(k, args[0], where): coerce(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for ov in overrides:
        key, eq, raw = ov.partition("=")
        if not eq or not key:
            raise ValueError(f"override {ov!r}: expected section.key=value")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {ov!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + overrides -> dataclass config."""
    data, where = read_yaml(path)
    apply_overrides(data, overrides or [])
    return from_dict(cls, data, where)


def read_yaml(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """A config file's mapping and its name for messages (``({}, "defaults")`` for no file)."""
    if path is None:
        return {}, "defaults"
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of config keys, got {type(data).__name__}")
    return data, str(p)


def _field_docs(cls: type) -> dict[str, str]:
    """Help text per field of one dataclass: its source comment (full-line comments right
    above the field and the inline one), else its entry in the class docstring's
    ``Attributes:`` section."""
    import inspect
    import io
    import re
    import tokenize

    docs: dict[str, str] = {}
    doc = inspect.getdoc(cls) or ""
    if "Attributes:" in doc:
        body = doc.split("Attributes:", 1)[1]
        cur = None
        for line in body.splitlines():
            m = re.match(r"^\s{2,}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
            if m and line.startswith("    ") and not line.startswith("        "):
                cur = m.group(1)
                docs[cur] = m.group(2).strip()
            elif cur and line.startswith("        "):
                docs[cur] += " " + line.strip()
            elif line.strip() and not line.startswith(" "):
                break
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return docs
    lines = src.splitlines()
    above: list[str] = []
    inline = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(src).readline)
              if tok.type == tokenize.COMMENT}
    for i, line in enumerate(lines, 1):
        st = line.strip()
        if st.startswith("#"):
            above.append(st.lstrip("# ").strip())
            continue
        name = st.split(":", 1)[0].strip()
        if name.isidentifier() and st.startswith(name + ":"):
            parts = above + ([inline[i].lstrip("# ").strip()] if i in inline else [])
            if parts:
                docs[name] = " ".join(parts)
        above = []
    return docs


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _show(value: Any) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True).strip().removesuffix("...").strip()


def _tp_name(tp: Any) -> str:
    return _type_name(tp) if isinstance(tp, type) else str(tp).replace("typing.", "")


def field_help(cls: type) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every field of a (nested) config dataclass, the help being
    the field's own comment in the source: one place documents a field, ``--help`` shows it."""
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    rows: list[tuple[str, str, str, str]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += [(f"{f.name}.{k}", t, d, h) for k, t, d, h in field_help(tp)]
            continue
        rows.append((f.name, _tp_name(tp), _show(_default_of(f)), docs.get(f.name, "")))
    return rows


def format_field_help(cls: type) -> str:
    """The config keys as an argparse epilog: key (type, default): help."""
    lines = ["config keys (YAML, or --set key=value; defaults are the built-in ones, --print-config shows the resolved config):"]
    for key, tp, default, h in field_help(cls):
        lines.append(f"  {key} ({tp}, default {default}){': ' + h if h else ''}")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """A config value as YAML-safe builtins (tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return _plain(cfg)


# ---------------------------------------------------------------------------- command line
# A field's ``metadata`` may say how it shows up on the command line:
#   flag="--name"     the flag's name (default: --field-name; bool fields that default to true
#                     get --no-field-name), flag=None: no flag (YAML / --set only)
#   positional=True   a positional argument (e.g. the model of ``distrm serve MODEL``)
#   secret=True       masked by --print-config (tokens)


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field, str]]:
    """(dotted key, type, field, help) for every non-dataclass field, nested ones included."""
    hints, docs = typing.get_type_hints(cls), _field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, tp, f, docs.get(f.name, "")))
    return out


def _non_null(tp: Any) -> list[Any]:
    """The alternatives of ``X | Y | None`` other than None (``[tp]`` for a plain type)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _is_list(tp: Any) -> bool:
    return any(typing.get_origin(t) in (list, tuple) for t in _non_null(tp))


def _is_str(tp: Any) -> bool:
    """A flag value for this type is taken verbatim (not parsed as YAML: ``--host yes`` is a str)."""
    tps = _non_null(tp)
    return tps == [str] or (len(tps) == 1 and typing.get_origin(tps[0]) is Literal and all(isinstance(a, str) for a in typing.get_args(tps[0])))


_DEST = "_cfg:"


def add_config_arguments(parser: Any, cls: type, *, flags: bool | list[str] = True,
                         default_config: str | None = None) -> None:
    """Register ``--config``, ``--set``, ``--print-config`` and one flag per field of ``cls``
    (all leaf fields, or only the dotted keys listed in ``flags``) on an argparse parser, each
    flag's help being the field's documentation. Flags only record what was given; the values
    are typed and checked by :func:`config_from_args`, the same way as YAML and ``--set``."""
    import argparse

    parser.add_argument("--config", default=None, metavar="YAML",
                        help="YAML config file" + (f" (default: the embedded {Path(default_config).name})" if default_config else ""))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set a.b=1 (value parsed as YAML); see the keys below")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    seen: set[str] = set()
    for key, tp, f, doc in _leaves(cls):
        meta = f.metadata
        if meta.get("positional"):
            parser.add_argument(_DEST + key, metavar=key.rsplit(".", 1)[-1].upper(), help=doc,
                                nargs="?" if _default_of(f) not in (None, "") else None)
            continue
        if (flags is not True and key not in flags) or ("flag" in meta and meta["flag"] is None):
            continue
        default = _default_of(f)
        is_bool = tp is bool
        name = meta.get("flag") or "--" + ("no-" if is_bool and default else "") + key.rsplit(".", 1)[-1].replace("_", "-")
        if name in seen:
            raise TypeError(f"{cls.__name__}: two config fields would both be the flag {name}; give one metadata flag=")
        seen.add(name)
        h = (doc + " " if doc else "") + f"[{key}, {_tp_name(tp)}, default {_show(default)}]"
        h = h.replace("%", "%%")
        if is_bool:
            parser.add_argument(name, dest=_DEST + key, action="store_const", const=not default, default=argparse.SUPPRESS, help=h)
        elif _is_list(tp):
            parser.add_argument(name, dest=_DEST + key, action="append", default=argparse.SUPPRESS, metavar="VALUE", help=h + " (repeatable)")
        else:
            choices = list(typing.get_args(tp)) if typing.get_origin(tp) is Literal else None
            parser.add_argument(name, dest=_DEST + key, default=argparse.SUPPRESS, choices=choices, metavar=None if choices else "VALUE", help=h)


def config_from_args(cls: type[T], args: Any, default_config: str | None = None, print_config: bool = True) -> T:
    """The config of a command: YAML (``--config``, else ``default_config``, else the dataclass
    defaults), then its flags, then ``--set``; typed and validated (see the module docstring).
    With ``--print-config`` the resolved config is printed (the caller then returns)."""
    path = getattr(args, "config", None) or default_config
    data, where = read_yaml(path)
    given = {k[len(_DEST):]: v for k, v in vars(args).items() if k.startswith(_DEST) and v is not None}
    types_ = {key: tp for key, tp, _, _ in _leaves(cls)}
    for key, raw in given.items():
        tp = types_[key]
        if isinstance(raw, list):  # a repeatable flag: parse each value as the element type
            elem = next((typing.get_args(t)[0] for t in _non_null(tp) if typing.get_origin(t) in (list, tuple) and typing.get_args(t)), str)
            raw = [x if _is_str(elem) else yaml.safe_load(x) for x in raw]
        elif isinstance(raw, str) and not _is_str(tp):
            raw = yaml.safe_load(raw)
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = raw
    apply_overrides(data, list(getattr(args, "overrides", []) or []))
    if given or getattr(args, "overrides", None):
        where = "command line" if path is None else f"{where} + command line"
    cfg = from_dict(cls, data, where)
    if print_config and getattr(args, "print_config", False):
        shown = _plain(cfg)
        for key, _, f, _ in _leaves(cls):
            if f.metadata.get("secret"):
                node = shown
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node[part]
                if node.get(leaf) is not None:
                    node[leaf] = "***"
        print(yaml.safe_dump(shown, sort_keys=False))
    return cfg
