"""RewardDistribution: the one value type every downstream step consumes.

A batch of reward distributions, each described by its quantile function Q(u), u in (0, 1).
Two kinds share all the risk code:

* ``kind="quantile"`` -- values at quantile levels ``tau_1 < ... < tau_K`` (a QRM output).
  Between levels Q is linear; **beyond the outermost levels Q is constant**: the mass
  ``tau_1`` sits at ``q_1`` and the mass ``1 - tau_K`` at ``q_K``. This is the most
  conservative choice that invents no tail the model did not predict (no extrapolation
  beyond what was fitted), so CVaR at small alpha is bounded by ``q_1``.
* ``kind="ensemble"`` -- N equally weighted members (an ensemble output, or samples).
  Q is a step function: the sorted members each hold mass 1/N.

Both are turned into segments ``[t_lo, t_hi]`` on which Q is linear, from ``q_lo`` to
``q_hi``; every statistic below is an exact integral over those segments (no sampling,
no grid), so e.g. CVaR <= mean and the ordering of exponential utilities hold exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

Kind = Literal["quantile", "ensemble"]
MixMethod = Literal["quantile_average", "probability"]


def default_levels(k: int = 19, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """K equally spaced levels strictly inside (0, 1): 19 -> 0.05, 0.10, ..., 0.95 (QRM's)."""
    return torch.linspace(0, 1, k + 2, dtype=torch.float64)[1:-1].to(dtype)


def _expm1_ratio(x: torch.Tensor) -> torch.Tensor:
    """(1 - exp(-x)) / x, stable at x -> 0 (limit 1)."""
    small = x.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1 - x / 2 + x * x / 6, -torch.expm1(-safe) / safe)


@dataclass(frozen=True)
class RewardDistribution:
    """A batch of reward distributions.

    Attributes:
        values: ``[..., K]`` quantile values (kind="quantile", sorted along the last axis)
            or member rewards (kind="ensemble", any order).
        levels: ``[K]`` quantile levels in (0, 1) for kind="quantile"; ``None`` for
            ensembles.
        kind: "quantile" or "ensemble".
    """

    values: torch.Tensor
    levels: torch.Tensor | None = None
    kind: Kind = "quantile"

    def __post_init__(self) -> None:
        if self.kind not in ("quantile", "ensemble"):
            raise ValueError(f"kind must be 'quantile' or 'ensemble', got {self.kind!r}")
        if self.values.ndim < 1:
            raise ValueError("values needs a last axis of quantiles or members")
        if self.kind == "quantile":
            if self.levels is None or self.levels.ndim != 1:
                raise ValueError("a quantile distribution needs 1-d levels")
            if self.levels.shape[0] != self.values.shape[-1]:
                raise ValueError(
                    f"{self.levels.shape[0]} levels but values have {self.values.shape[-1]} columns"
                )
            lv = self.levels
            if not (bool((lv > 0).all()) and bool((lv < 1).all()) and bool((lv[1:] > lv[:-1]).all())):
                raise ValueError("levels must be strictly increasing inside (0, 1)")

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_quantiles(
        cls, values: torch.Tensor, levels: torch.Tensor | Sequence[float] | None = None, sort: bool = True
    ) -> "RewardDistribution":
        """Quantile values ``[..., K]`` at ``levels``. ``sort=True`` applies monotone
        rearrangement (sorting), which never increases the pinball loss and removes any
        quantile crossing."""
        values = torch.as_tensor(values)
        if not values.is_floating_point():
            values = values.float()
        if levels is None:
            levels = default_levels(values.shape[-1], values.dtype)
        levels = torch.as_tensor(levels, dtype=values.dtype, device=values.device)
        if sort:
            values = values.sort(dim=-1).values
        return cls(values=values, levels=levels, kind="quantile")

    @classmethod
    def from_members(cls, members: torch.Tensor) -> "RewardDistribution":
        """Ensemble members ``[..., N]``, each with mass 1/N."""
        members = torch.as_tensor(members)
        if not members.is_floating_point():
            members = members.float()
        return cls(values=members, levels=None, kind="ensemble")

    # ---------------------------------------------------------------- basics
    @property
    def batch_shape(self) -> torch.Size:
        return self.values.shape[:-1]

    def __len__(self) -> int:
        return self.values.shape[0] if self.values.ndim > 1 else 1

    def __getitem__(self, idx) -> "RewardDistribution":
        v = self.values[idx]
        if v.ndim == 0 or v.shape[-1] != self.values.shape[-1]:
            raise IndexError("indexing must keep the last (quantile/member) axis")
        return RewardDistribution(values=v, levels=self.levels, kind=self.kind)

    def to(self, *args, **kwargs) -> "RewardDistribution":
        lv = None if self.levels is None else self.levels.to(*args, **kwargs)
        return RewardDistribution(values=self.values.to(*args, **kwargs), levels=lv, kind=self.kind)

    def _segments(self):
        """(t_lo [S], t_hi [S], q_lo [..., S], q_hi [..., S]) with Q linear on each segment."""
        v = self.values
        if self.kind == "ensemble":
            n = v.shape[-1]
            q = v.sort(dim=-1).values
            t = torch.arange(n + 1, dtype=v.dtype, device=v.device) / n
            return t[:-1], t[1:], q, q
        lv = self.levels
        zero = torch.zeros(1, dtype=v.dtype, device=v.device)
        one = torch.ones(1, dtype=v.dtype, device=v.device)
        t = torch.cat([zero, lv, one])  # K + 2 knots
        q = torch.cat([v[..., :1], v, v[..., -1:]], dim=-1)  # constant tails
        return t[:-1], t[1:], q[..., :-1], q[..., 1:]

    # ---------------------------------------------------------------- statistics
    def mean(self) -> torch.Tensor:
        t0, t1, a, b = self._segments()
        return ((t1 - t0) * (a + b) / 2).sum(-1)

    def second_moment(self) -> torch.Tensor:
        t0, t1, a, b = self._segments()
        return ((t1 - t0) * (a * a + a * b + b * b) / 3).sum(-1)

    def variance(self) -> torch.Tensor:
        m = self.mean()
        return (self.second_moment() - m * m).clamp_min(0)

    def std(self) -> torch.Tensor:
        return self.variance().sqrt()

    def quantile(self, tau: float | torch.Tensor) -> torch.Tensor:
        """Q(tau) for tau in [0, 1]; tensor tau ``[T]`` gives ``[..., T]``."""
        tau_t = torch.as_tensor(tau, dtype=self.values.dtype, device=self.values.device)
        scalar = tau_t.ndim == 0
        tau_t = tau_t.reshape(-1)
        if bool((tau_t < 0).any()) or bool((tau_t > 1).any()):
            raise ValueError("tau must lie in [0, 1]")
        t0, t1, a, b = self._segments()
        # segment index of each tau (right-continuous inside, last segment includes 1)
        idx = (torch.searchsorted(t1.contiguous(), tau_t, right=False)).clamp(max=t1.shape[0] - 1)
        w = ((tau_t - t0[idx]) / (t1[idx] - t0[idx]).clamp_min(1e-12)).clamp(0, 1)
        out = a[..., idx] + (b[..., idx] - a[..., idx]) * w
        return out[..., 0] if scalar else out

    def cdf(self, r: float | torch.Tensor) -> torch.Tensor:
        """P(R <= r); ``r`` broadcasts against the batch shape."""
        r_t = torch.as_tensor(r, dtype=self.values.dtype, device=self.values.device)
        shape = torch.broadcast_shapes(r_t.shape, self.batch_shape)
        return self.cdf_at(r_t.expand(shape).unsqueeze(-1))[..., 0]

    def cdf_at(self, r: torch.Tensor) -> torch.Tensor:
        """P(R <= r) at T points per distribution: ``r`` is ``[..., T]``, the result too."""
        t0, t1, a, b = self._segments()
        a, b, r = a.unsqueeze(-2), b.unsqueeze(-2), r.unsqueeze(-1)  # [..., 1, S], [..., T, 1]
        span = b - a
        # share of each segment where Q(u) <= r (a flat segment counts whole once r >= its value)
        frac = torch.where(
            span > 0,
            ((r - a) / torch.where(span > 0, span, torch.ones_like(span))).clamp(0, 1),
            (r >= a).to(a.dtype),
        )
        return ((t1 - t0) * frac).sum(-1).clamp(0, 1)

    def cvar(self, alpha: float = 0.1) -> torch.Tensor:
        """Lower-tail conditional value at risk: the mean of the worst ``alpha`` share,
        (1/alpha) * integral_0^alpha Q(u) du. Always <= mean."""
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        t0, t1, a, b = self._segments()
        hi = t1.clamp(max=alpha)
        width = (hi - t0).clamp_min(0)
        full = (t1 - t0).clamp_min(1e-12)
        q_hi = a + (b - a) * (width / full)
        return ((width * (a + q_hi) / 2).sum(-1)) / alpha

    def exp_utility(self, lam: float) -> torch.Tensor:
        """Exponential utility E[-exp(-lam R)] (lam > 0 risk-averse). Exact on segments."""
        if lam == 0:
            raise ValueError("lam must be non-zero (lam -> 0 is the mean)")
        t0, t1, a, b = self._segments()
        return -((t1 - t0) * torch.exp(-lam * a) * _expm1_ratio(lam * (b - a))).sum(-1)

    def certainty_equivalent(self, lam: float) -> torch.Tensor:
        """-1/lam log E[exp(-lam R)]: the sure reward with the same exponential utility,
        on the reward's own scale (-> mean as lam -> 0; <= mean for lam > 0).
        Computed with a log-sum-exp shift so large lam does not overflow."""
        if lam == 0:
            return self.mean()
        t0, t1, a, b = self._segments()
        x = -lam * a
        shift = x.amax(-1, keepdim=True)
        s = ((t1 - t0) * torch.exp(x - shift) * _expm1_ratio(lam * (b - a))).sum(-1)
        return -(torch.log(s) + shift.squeeze(-1)) / lam

    def mean_minus_std(self, c: float = 1.0) -> torch.Tensor:
        return self.mean() - c * self.std()

    def mean_minus_variance(self, beta: float = 1.0) -> torch.Tensor:
        return self.mean() - beta * self.variance()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Inverse-transform samples ``[..., n]``."""
        u = torch.rand(n, generator=generator, dtype=self.values.dtype)
        return self.quantile(u.to(self.values.device))

    def on_levels(self, levels: torch.Tensor | Sequence[float]) -> "RewardDistribution":
        """The same distribution summarised at other quantile levels."""
        lv = torch.as_tensor(levels, dtype=self.values.dtype, device=self.values.device)
        return RewardDistribution(values=self.quantile(lv), levels=lv, kind="quantile")

    # ---------------------------------------------------------------- combination
    @staticmethod
    def mix(
        components: Sequence["RewardDistribution"] | "RewardDistribution",
        weights: torch.Tensor,
        method: MixMethod = "quantile_average",
        levels: torch.Tensor | None = None,
    ) -> "RewardDistribution":
        """Combine M component distributions with weights ``[..., M]`` (rows sum to 1).

        * ``"quantile_average"`` -- Q_mix(tau) = sum_m g_m Q_m(tau): the QRM paper's formula
          and the released model's output. It averages *quantiles*, so two far-apart
          unimodal components give a unimodal result in between.
        * ``"probability"`` -- the quantile function of the probability mixture
          F_mix = sum_m g_m F_m (bimodal where the components are apart), evaluated at
          ``levels`` (default: the components' levels), read off the exact CDF (see
          :func:`_mixture_quantiles`).

        Both have mean sum_m g_m mean_m. ``components`` is a list of same-kind
        distributions or one distribution whose values are ``[..., M, K]``.
        """
        if isinstance(components, RewardDistribution):
            stacked = components
        else:
            comps = list(components)
            kinds = {c.kind for c in comps}
            if len(kinds) != 1:
                raise ValueError("cannot mix quantile and ensemble components")
            stacked = RewardDistribution(
                values=torch.stack([c.values for c in comps], dim=-2), levels=comps[0].levels, kind=comps[0].kind
            )
        g = torch.as_tensor(weights, dtype=stacked.values.dtype, device=stacked.values.device)
        if g.shape[-1] != stacked.values.shape[-2]:
            raise ValueError(f"{g.shape[-1]} weights for {stacked.values.shape[-2]} components")
        if method == "quantile_average":
            if stacked.kind != "quantile":
                raise ValueError("quantile averaging needs quantile components (use method='probability')")
            vals = (g.unsqueeze(-1) * stacked.values).sum(-2)
            return RewardDistribution(values=vals, levels=stacked.levels, kind="quantile")
        if method != "probability":
            raise ValueError(f"unknown mix method {method!r}")
        if levels is None:
            levels = stacked.levels if stacked.levels is not None else default_levels(19, stacked.values.dtype)
        levels = torch.as_tensor(levels, dtype=stacked.values.dtype, device=stacked.values.device)
        return RewardDistribution(values=_mixture_quantiles(stacked, g, levels), levels=levels, kind="quantile")

    def risk(self, measure: str, **params: float) -> torch.Tensor:
        """Scalar summary by name: the config-driven entry point used by RL, eval and serve.

        ``mean``, ``exp_utility`` (lam), ``certainty_equivalent`` (lam), ``cvar`` (alpha),
        ``quantile`` (tau), ``mean_minus_std`` (c), ``mean_minus_variance`` (beta).
        """
        fns = {
            "mean": self.mean,
            "exp_utility": self.exp_utility,
            "certainty_equivalent": self.certainty_equivalent,
            "cvar": self.cvar,
            "quantile": self.quantile,
            "mean_minus_std": self.mean_minus_std,
            "mean_minus_variance": self.mean_minus_variance,
        }
        if measure not in fns:
            raise ValueError(f"unknown risk measure {measure!r}; choose from {sorted(fns)}")
        return fns[measure](**params)


def _mixture_quantiles(components: RewardDistribution, weights: torch.Tensor, levels: torch.Tensor,
                       budget: int = 1 << 22) -> torch.Tensor:
    """Quantiles [..., T] at ``levels`` of the probability mixture sum_c w_c F_c of the
    components (values [..., C, K], weights [..., C]), exactly.

    Each component's CDF is linear between its own quantile values (atoms at the outermost,
    the constant tails; a step function for ensemble members), so the mixture's CDF is
    linear (or constant) between consecutive knots of their union: one evaluation at the
    knots and their midpoints (which give each left limit) reads off the quantile at tau
    exactly -- the first knot whose CDF reaches tau, or a point on the linear piece before
    it. (A bisection would evaluate every component's CDF at every level once per halving,
    which dominates scoring when B members of M attributes are pooled.) Rows go in chunks of
    about ``budget`` CDF terms, so memory stays bounded."""
    v = components.values
    lead, (C, K) = v.shape[:-2], v.shape[-2:]
    V, W = v.reshape(-1, C, K), weights.to(v.dtype).expand(*lead, C).reshape(-1, C)
    lv = torch.as_tensor(levels, dtype=v.dtype)
    rows = max(1, budget // (C * (2 * C * K) * (K + 1)))
    parts = [_mixture_rows(V[s:s + rows], W[s:s + rows], components, lv) for s in range(0, max(len(V), 1), rows)]
    return torch.cat(parts).reshape(*lead, len(lv))


def _mixture_rows(V: torch.Tensor, W: torch.Tensor, like: RewardDistribution, lv: torch.Tensor) -> torch.Tensor:
    R, C, K = V.shape
    N = C * K
    x = V.reshape(R, N).sort(-1).values  # the knots
    if N == 1:
        return x.expand(R, len(lv))
    pts = torch.cat([x, (x[:, 1:] + x[:, :-1]) / 2], -1)
    comps = RewardDistribution(values=V, levels=like.levels, kind=like.kind)
    F = (W.unsqueeze(-1) * comps.cdf_at(pts.unsqueeze(1).expand(R, C, -1))).sum(1)
    Fx, Fmid = F[:, :N].cummax(-1).values, F[:, N:]  # cummax: rounding must not unsort the knots' CDF
    tau = lv.expand(R, -1).contiguous()
    hi = torch.searchsorted(Fx.contiguous(), tau).clamp(max=N - 1)  # first knot with F >= tau
    lo = (hi - 1).clamp(min=0)
    x_lo, x_hi, F_lo = x.gather(1, lo), x.gather(1, hi), Fx.gather(1, lo)
    F_left = 2 * Fmid.gather(1, lo) - F_lo  # F just below x_hi (linear on the open piece)
    frac = ((tau - F_lo) / (F_left - F_lo).clamp_min(1e-300)).clamp(0, 1)
    return torch.where((hi > 0) & (F_left >= tau), x_lo + frac * (x_hi - x_lo), x_hi)
