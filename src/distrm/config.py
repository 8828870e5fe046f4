"""Dataclass configs that a YAML file and the command line both fill.

One dataclass per pipeline step; ``TrainConfig`` nests them. A YAML file gives any subset
of the fields, ``--set section.field=value`` overrides on the command line (values are
parsed as YAML, so ``--set gate.epochs=50`` is an int). Unknown keys are an error naming
the key and the file, never silently ignored.
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
    bootstrap: bool = False  # resample the training pairs per member
    l2: float | None = None  # (l2 / 2) ||w_i||^2 per member (standardised features); null = chosen by CV on held-out pair likelihood
    lr: float = 1e-2  # Adam
    epochs: int = 30
    batch_size: int | None = 256  # None: full batch
    init_std: float = 0.05  # independent N(0, init_std^2) start per weight
    seed: int | None = None  # default: the top-level seed
    optimizer: Literal["adam", "lbfgs"] = "adam"  # lbfgs: full batch, to convergence
    init: Literal["random", "single_head"] = "random"  # single_head: fit one head, attach N at it


@dataclass
class TrainConfig:
    output_dir: str = "runs/qrm-minilm"
    seed: int = 0
    model: Literal["qrm", "ensemble"] = "qrm"
    mix: Literal["quantile_average", "probability"] = "quantile_average"
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    debias: DebiasConfig = field(default_factory=DebiasConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config", _prefix: str = "") -> T:
    """Build a (nested) dataclass from a dict, rejecting unknown keys by name and values of the
    wrong type (see :func:`coerce`)."""
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
            kwargs[k] = from_dict(tp, v or {}, where, f"{_prefix}{k}.")
        else:
            kwargs[k] = coerce(v, tp, f"{where}: {_prefix}{k}")
    return cls(**kwargs)


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
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        where = str(p)
    apply_overrides(data, overrides or [])
    return from_dict(cls, data, where)


def field_help(cls: type) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every field of a (nested) config dataclass, the help being
    the field's own comment in the source: one place documents a field, ``--help`` shows it."""
    import inspect
    import io
    import tokenize

    comments: dict[str, str] = {}
    try:
        src = inspect.getsource(cls)
        lines = src.splitlines()
        above: list[str] = []  # full-line comments right above a field also document it
        inline = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(src).readline)
                  if tok.type == tokenize.COMMENT}
        for i, line in enumerate(lines, 1):
            st = line.strip()
            if st.startswith("#"):
                above.append(st.lstrip("# ").strip())
                continue
            name = st.split(":", 1)[0].strip()
            if name.isidentifier() and st.startswith(name + ":"):
                parts = above + ([inline[i].lstrip("# ").strip()] if i in inline and not st.startswith("#") else [])
                if parts:
                    comments[name] = " ".join(parts)
            above = []
    except (OSError, TypeError):
        pass
    hints = typing.get_type_hints(cls)
    rows: list[tuple[str, str, str, str]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += [(f"{f.name}.{k}", t, d, h) for k, t, d, h in field_help(tp)]
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")  # type: ignore[misc]
        rows.append((f.name, _type_name(tp) if isinstance(tp, type) else str(tp).replace("typing.", ""), yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("..."
                     ).strip(), comments.get(f.name, "")))
    return rows


def format_field_help(cls: type) -> str:
    """The config keys as an argparse epilog: key (type, default): help."""
    lines = ["config keys (YAML, or --set key=value; defaults are the built-in ones, --print-config shows the resolved config):"]
    for key, tp, default, h in field_help(cls):
        lines.append(f"  {key} ({tp}, default {default}){': ' + h if h else ''}")
    return "\n".join(lines)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
