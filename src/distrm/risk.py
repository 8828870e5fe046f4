"""The one risk vocabulary: which scalar summaries of a reward distribution exist, their
parameters, and the one grammar every entry point parses (CLI ``--risk``, YAML configs, the
HTTP API, Python).

Why one place. Before, ``score``/``eval``/``serve`` accepted ``exp_utility`` without ``lam``
and ``cvar:beta=2`` and then failed with a ``TypeError`` after the features were computed,
while ``rl``/``bon`` rejected both and accepted aliases the others refused. Now a spec is
validated when it is parsed (unknown measure, unknown or missing parameter, out-of-range or
non-finite value), so every command can parse its specs before loading a model, and a bad
spec is one line that names the valid measures and their parameters.

Grammar: ``name`` or ``name:key=value[,key=value]``, e.g. ``cvar:alpha=0.1``,
``exp_utility:lam=2``; in YAML / JSON also ``{"name": "cvar", "alpha": 0.1}``. Aliases:
``expectation`` (mean), ``exp`` (exp_utility), ``ce`` (certainty_equivalent),
``lower_quantile`` (quantile). The maths stays in :class:`~distrm.distribution.RewardDistribution`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from distrm.distribution import RewardDistribution

RISK_MEASURES = (
    "mean",
    "exp_utility",
    "certainty_equivalent",
    "cvar",
    "quantile",
    "mean_minus_std",
    "mean_minus_variance",
)
# parameters each measure needs; a missing one is an error, not a silent default, because
# e.g. exp_utility's lam sets the whole strength of risk aversion
REQUIRED = {"exp_utility": ("lam",), "certainty_equivalent": ("lam",), "quantile": ("tau",)}
ALIASES = {"expectation": "mean", "exp": "exp_utility", "ce": "certainty_equivalent", "lower_quantile": "quantile"}
RANGES = {
    ("cvar", "alpha"): ("(0, 1]", lambda v: 0 < v <= 1),
    ("quantile", "tau"): ("[0, 1]", lambda v: 0 <= v <= 1),
    ("exp_utility", "lam"): ("!= 0, |lam| <= 700", lambda v: v != 0 and abs(v) <= 700),
    ("certainty_equivalent", "lam"): ("!= 0, |lam| <= 700", lambda v: v != 0 and abs(v) <= 700),
}


def parameters(name: str) -> dict[str, Any]:
    """{parameter: default or None (required)} of a measure."""
    sig = inspect.signature(getattr(RewardDistribution, name))
    return {p: (None if v.default is inspect.Parameter.empty else v.default) for p, v in sig.parameters.items() if p != "self"}


def describe() -> str:
    """The vocabulary in one line, for error messages and --help."""
    parts = []
    for name in RISK_MEASURES:
        ps = []
        for p, default in parameters(name).items():
            rng = RANGES.get((name, p), (None,))[0]
            what = "required" if default is None else f"default {default:g}"
            ps.append(f"{p}=<{what}{', ' + rng if rng else ''}>")
        parts.append(name + (":" + ",".join(ps) if ps else ""))
    return "; ".join(parts)


class RiskSpecError(ValueError):
    """A risk spec that is not in the vocabulary (the message names the valid ones)."""


@dataclass(frozen=True)
class RiskMeasure:
    """A named scalar summary of a reward distribution, with its parameters, validated when
    built. ``RiskMeasure.parse`` takes a spec string, a dict or a ``RiskMeasure``."""

    name: str
    params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in RISK_MEASURES:
            raise RiskSpecError(f"unknown risk measure {self.name!r}; valid: {describe()}")
        allowed = parameters(self.name)
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise RiskSpecError(f"{self.name} takes {sorted(allowed) or 'no parameters'}, got {unknown}; valid: {describe()}")
        missing = [p for p in REQUIRED.get(self.name, ()) if p not in self.params]
        if missing:
            raise RiskSpecError(f"{self.name} needs {missing} (e.g. {self.name}:{missing[0]}=...); valid: {describe()}")
        for p, v in self.params.items():
            if not math.isfinite(v):
                raise RiskSpecError(f"{self.name}: {p} must be a finite number, got {v}")
            rng = RANGES.get((self.name, p))
            if rng and not rng[1](v):
                raise RiskSpecError(f"{self.name}: {p} must be {rng[0]}, got {v:g}")

    @classmethod
    def parse(cls, spec: "str | dict[str, Any] | RiskMeasure") -> "RiskMeasure":
        if isinstance(spec, RiskMeasure):
            return spec
        if isinstance(spec, dict):
            d = dict(spec)
            if "name" not in d:
                raise RiskSpecError(f"a risk mapping needs a 'name'; valid: {describe()}")
            name = str(d.pop("name")).strip()
            return cls(ALIASES.get(name, name), {str(k): _number(v, name, k) for k, v in d.items()})
        if not isinstance(spec, str):
            raise RiskSpecError(f"a risk spec is a string like 'cvar:alpha=0.1' or a mapping, got {type(spec).__name__}")
        name, _, rest = spec.partition(":")
        name = name.strip()
        params: dict[str, float] = {}
        if rest.strip():
            for kv in rest.split(","):
                k, eq, v = kv.partition("=")
                if not eq or not k.strip():
                    raise RiskSpecError(f"bad risk parameter {kv!r} in {spec!r}: expected key=value; valid: {describe()}")
                params[k.strip()] = _number(v, name, k.strip())
        return cls(ALIASES.get(name, name), params)

    @property
    def spec(self) -> str:
        """Canonical string form (round-trips through :meth:`parse`)."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))

    def __call__(self, dist: RewardDistribution) -> Any:
        return dist.risk(self.name, **self.params)


def _number(v: Any, name: str, key: Any) -> float:
    if isinstance(v, bool):
        raise RiskSpecError(f"{name}: {key} must be a number, got {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise RiskSpecError(f"{name}: {key} must be a number, got {v!r}") from None


def parse_risk(spec: "str | dict[str, Any] | RiskMeasure") -> tuple[str, dict[str, float]]:
    """``(name, params)`` of a validated spec (see the module docstring for the grammar)."""
    m = RiskMeasure.parse(spec)
    return m.name, dict(m.params)
