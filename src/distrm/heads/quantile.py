"""Quantile heads (QRM step 1): M attributes x K levels of linear quantile regression.

For attribute m and level tau the head (beta, b) minimises exactly scikit-learn's
``QuantileRegressor`` objective

    P(beta, b) = (1 / W) * sum_i w_i * rho_tau(y_i - x_i^T beta - b) + alpha * ||beta||_1,
    rho_tau(r) = max(tau * r, (tau - 1) * r),   W = sum_i w_i,

over the targets of attribute m only (the intercept b is not penalised). sklearn solves one
LP per (m, tau) with HiGHS, which is minutes per head at reward-model scale. Here all K
levels of an attribute (and several attributes at once on a GPU) are solved together by

* **ADMM on an augmented quantile regression**: the L1 term is written as d pseudo-rows
  ``s * e_j`` with target 0 (alpha |beta_j| = (alpha / s) |0 - s beta_j|), so the problem is
  min f(z) s.t. z = y~ - X~ theta with f separable. The theta-step is least squares with the
  matrix ``X_s^T X_s + s^2 I`` -- the same for every level, every penalty rho and every
  sample weight (weights only enter the prox) -- so it is inverted **once per attribute**
  and every iteration is two matmuls ``[n, d] x [d, K]`` plus elementwise proxes. Columns
  are centred (exact reparametrisation: the intercept is free) and scaled to unit variance
  (the L1 weight becomes alpha / sigma_j), which makes the intercept decouple and the
  iteration well conditioned. Over-relaxation (1.6) and residual balancing of rho per
  level; rho changes cost nothing because the factorisation does not depend on it.
* **a duality-gap certificate as the stopping rule**: the LP dual is
  ``max_nu sum_i nu_i y_i`` s.t. ``nu_i in [w_i (tau-1), w_i tau] / W``, ``sum_i nu_i = 0``
  (intercept), ``|x_j^T nu| <= alpha``. ADMM's multiplier is clipped to the box, shifted
  back to sum 0 (bisection on a weight-proportional shift) and scaled into the
  ``|x_j^T nu| <= alpha`` region, which gives a feasible dual point and a lower bound D
  on the optimum. We stop when ``(P - D) / P <= tol`` for every head, so the reported
  objective is *proved* within ``tol`` of the LP optimum (``duality_gap_``).

* **a safe start**: each head starts from the better (in the exact objective) of a ridge fit
  and the intercept-only model, and the returned iterate is never worse than that start. With
  more features than distinct rated items (common for real attributes: a few hundred items,
  d = 384..4096) the ridge start interpolates with a large L1 norm, far from the optimum.

Predictions are sorted along the level axis (monotone rearrangement): for every x the sorted
vector is at least as good in summed pinball loss over the levels as the unsorted one
(Chernozhukov, Fernandez-Val & Galichon 2010), and it removes quantile crossing.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from distrm.distribution import RewardDistribution, default_levels
from distrm.heads.targets import LongTargets, as_long_targets

_OVER_RELAX = 1.6


def pinball(r: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """rho_tau(r) = max(tau r, (tau - 1) r), elementwise; tau broadcasts."""
    return torch.maximum(tau * r, (tau - 1) * r)


def _as_tensor(a: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(dtype)
    return torch.as_tensor(np.asarray(a), dtype=dtype)


class QuantileHeads:
    """Linear quantile heads for M attributes x K levels, sklearn-like (``fit`` returns self,
    learned attributes end in ``_``).

    Args:
        levels: K strictly increasing quantile levels in (0, 1); default ``default_levels(19)``
            (0.05, 0.10, ..., 0.95).
        alpha: L1 penalty, as sklearn's ``QuantileRegressor(alpha=...)`` (QRM used 0.003).
        fit_intercept: fit an unpenalised intercept per head.
        device: where to solve ("cpu", "cuda", ...). Default: X's device, else CPU.
        dtype: dtype of the ADMM iteration (feature matmuls and the [n, K] state). Default
            float32 (CPU and CUDA: twice the float64 rate, and on CPU the elementwise passes
            cost as much as the matmuls). Objectives and certificates are evaluated in float64
            at every check and the stopping rule is that float64 gap, so the certified result
            does not depend on it; the dual bound's feasibility check |x_j^T nu| <= alpha is
            then exact up to float32 rounding, ~1e-7 relative. float64 for a strict proof or
            ill-conditioned features.
        tol: target relative duality gap per head; fitting stops when every head is
            certified within it, so 1e-3 *proves* objective <= 1.001 x the LP optimum (the
            true gap is typically 5-10x smaller than the certificate).
        max_iter: ADMM iteration cap (a warning names heads that stopped above ``tol``).
        check_every: iterations between objective/certificate evaluations (each costs about
            one extra iteration).
        pseudo_scale: s^2 / n, the weight of the L1 pseudo-rows in the shared matrix
            (a conditioning knob; it does not change the optimum).
        attribute_batch: attributes solved together (padded to the largest); default 1 on
            CPU, as many as fit in half the free GPU memory on CUDA.
        verbose: print progress at every check.
    """

    def __init__(
        self,
        levels: torch.Tensor | Sequence[float] | None = None,
        alpha: float = 0.003,
        fit_intercept: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        tol: float = 1e-3,
        max_iter: int = 5000,
        check_every: int = 20,
        pseudo_scale: float = 0.1,
        attribute_batch: int | None = None,
        verbose: bool = False,
    ) -> None:
        lv = default_levels(19, torch.float64) if levels is None else torch.as_tensor(levels, dtype=torch.float64)
        if lv.ndim != 1 or len(lv) == 0:
            raise ValueError("levels must be a non-empty 1-d sequence")
        if not (bool((lv > 0).all()) and bool((lv < 1).all()) and bool((lv[1:] > lv[:-1]).all())):
            raise ValueError("levels must be strictly increasing inside (0, 1)")
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not tol > 0:
            raise ValueError("tol must be > 0")
        self.levels = lv
        self.alpha = float(alpha)
        self.fit_intercept = bool(fit_intercept)
        self.device = device
        self.dtype = dtype
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.check_every = int(check_every)
        self.pseudo_scale = float(pseudo_scale)
        self.attribute_batch = attribute_batch
        self.verbose = verbose

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (levels as a list, dtype/device as strings)."""
        return {
            "levels": self.levels.tolist(),
            "alpha": self.alpha,
            "fit_intercept": self.fit_intercept,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "check_every": self.check_every,
            "pseudo_scale": self.pseudo_scale,
        }

    # ------------------------------------------------------------------ data
    def _check_X(self, X: Any) -> torch.Tensor:
        Xt = _as_tensor(X, torch.float64) if not isinstance(X, torch.Tensor) else X.detach()
        if not Xt.is_floating_point():
            Xt = Xt.double()
        if Xt.ndim != 2:
            raise ValueError(f"X must be 2-d [n_items, d]; got shape {tuple(Xt.shape)}")
        if not bool(torch.isfinite(Xt).all()):
            raise ValueError("X contains NaN or inf (features must be finite; missing *labels* go in y)")
        return Xt

    def _targets(
        self, n_items: int, y: Any, attribute: Any, index: Any, n_attributes: int | None, sample_weight: Any
    ) -> tuple[LongTargets, torch.Tensor]:
        """Long-format targets and one weight per target (validated)."""
        wide = attribute is None and index is None
        y_np = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y, dtype=np.float64)
        if np.isinf(y_np).any():
            raise ValueError("y contains inf")
        t = as_long_targets(n_items, y_np, attribute, index, n_attributes)
        if sample_weight is None:
            w = torch.ones(len(t.y), dtype=torch.float64)
        else:
            sw = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64))
            if wide:
                if sw.ndim == 1 and sw.shape[0] == n_items:
                    w = sw[t.index]
                elif sw.ndim == 2 and tuple(sw.shape) == (n_items, t.n_attributes):
                    w = sw[t.index, t.attribute]
                else:
                    raise ValueError(f"wide sample_weight must be [n_items] or [n_items, M]; got {tuple(sw.shape)}")
            else:
                if sw.shape != t.y.shape:
                    raise ValueError(f"long sample_weight must have one entry per target ({len(t.y)}); got {tuple(sw.shape)}")
                w = sw
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
                raise ValueError("sample_weight must be finite and >= 0")
        return t, w

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        X: Any,
        y: Any,
        attribute: Any = None,
        index: Any = None,
        n_attributes: int | None = None,
        sample_weight: Any = None,
    ) -> "QuantileHeads":
        """Fit every (attribute, level) head.

        Long format (general): ``X [n_items, d]``, ``y [L]``, ``index [L]`` (row of X),
        ``attribute [L]`` in [0, M); each rater's score is its own target, missing labels
        are absent rows. Wide convenience: ``y [n_items, M]`` with NaN = missing.
        ``sample_weight``: ``[L]`` (long) or ``[n_items]`` / ``[n_items, M]`` (wide).
        """
        Xt = self._check_X(X)
        t, w = self._targets(Xt.shape[0], y, attribute, index, n_attributes, sample_weight)
        M, d, K = t.n_attributes, Xt.shape[1], len(self.levels)
        if M == 0:
            raise ValueError("no attributes to fit")
        dev = torch.device(self.device) if self.device is not None else Xt.device
        cdt = self.dtype or torch.float32
        rows: list[torch.Tensor] = []
        for m in range(M):
            sel = (t.attribute == m) & (w > 0)
            if not bool(sel.any()):
                raise ValueError(f"attribute {m} has no targets with positive weight")
            rows.append(torch.nonzero(sel).squeeze(1))
        B = self.attribute_batch or self._default_batch(dev, cdt, d, [len(r) for r in rows])
        self.coef_ = torch.zeros(M, K, d, dtype=torch.float64, device=dev)
        self.intercept_ = torch.zeros(M, K, dtype=torch.float64, device=dev)
        self.objective_ = torch.zeros(M, K, dtype=torch.float64)
        self.duality_gap_ = torch.zeros(M, K, dtype=torch.float64)
        self.n_iter_ = torch.zeros(M, dtype=torch.int64)
        self.fit_time_s_ = 0.0
        t0 = time.perf_counter()
        for start in range(0, M, B):
            ms = list(range(start, min(M, start + B)))
            out = self._fit_batch(Xt, t, w, [rows[m] for m in ms], dev, cdt)
            for j, m in enumerate(ms):
                self.coef_[m], self.intercept_[m] = out["coef"][j], out["intercept"][j]
                self.objective_[m], self.duality_gap_[m] = out["objective"][j].cpu(), out["gap"][j].cpu()
                self.n_iter_[m] = out["n_iter"]
        self.n_features_in_ = d
        self.levels_ = self.levels.clone()
        if cdt != torch.float64:  # report the float64 objective of the returned heads on X as given
            lower = self.objective_ * (1 - self.duality_gap_)  # the dual bound found by the solver
            self.objective_ = self._objective_long(Xt, t, w)
            self.duality_gap_ = (self.objective_ - lower) / self.objective_.abs().clamp_min(1e-300)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        self.fit_time_s_ = time.perf_counter() - t0
        bad = self.duality_gap_ > self.tol
        if bool(bad.any()):
            warnings.warn(
                f"{int(bad.sum())} of {M * K} heads stopped at max_iter={self.max_iter} with certified relative gap "
                f"up to {float(self.duality_gap_.max()):.2e} > tol={self.tol:.1e}",
                RuntimeWarning,
                stacklevel=2,
            )
        return self

    def _default_batch(self, dev: torch.device, cdt: torch.dtype, d: int, sizes: list[int]) -> int:
        if dev.type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(dev)
        per = max(sizes) * d * torch.finfo(cdt).bits // 8 + 3 * d * d * 8
        return max(1, min(len(sizes), int(0.5 * free // per)))

    def _fit_batch(
        self,
        X: torch.Tensor,
        t: LongTargets,
        w: torch.Tensor,
        rows: list[torch.Tensor],
        dev: torch.device,
        cdt: torch.dtype,
    ) -> dict[str, Any]:
        """Solve all K levels of a few attributes together (rows padded to the largest)."""
        Bn, d, K = len(rows), X.shape[1], len(self.levels)
        n_max = max(len(r) for r in rows)
        f64 = torch.float64
        Xs = torch.zeros(Bn, n_max, d, dtype=cdt, device=dev)
        y = torch.zeros(Bn, n_max, 1, dtype=f64, device=dev)
        om = torch.zeros(Bn, n_max, 1, dtype=f64, device=dev)  # w_i / W (0 on padding)
        mask = torch.zeros(Bn, n_max, 1, dtype=f64, device=dev)
        mu = torch.zeros(Bn, d, dtype=f64, device=dev)
        sig = torch.ones(Bn, d, dtype=f64, device=dev)
        Ainv = torch.zeros(Bn, d, d, dtype=cdt, device=dev)
        s = torch.zeros(Bn, 1, 1, dtype=f64, device=dev)
        n_real = torch.zeros(Bn, 1, 1, dtype=f64, device=dev)
        for j, r in enumerate(rows):
            n = len(r)
            Xm = X[t.index[r].to(X.device)].to(device=dev, dtype=f64)
            if self.fit_intercept:
                mu[j] = Xm.mean(0)
                Xm = Xm - mu[j]
            sd = Xm.pow(2).mean(0).sqrt()
            sd = torch.where(sd > 1e-12 * max(float(sd.max()), 1e-300), sd, torch.ones_like(sd))
            sig[j] = sd
            Xm = Xm / sd
            G = Xm.T @ Xm
            s2 = self.pseudo_scale * n
            G.diagonal().add_(s2)
            L = torch.linalg.cholesky(G)
            Ainv[j] = torch.cholesky_inverse(L).to(cdt)
            del G, L
            s[j] = math.sqrt(s2)
            Xs[j, :n] = Xm.to(cdt)
            del Xm
            y[j, :n, 0] = t.y[r].to(device=dev, dtype=f64)
            ww = w[r].to(device=dev, dtype=f64)
            om[j, :n, 0] = ww / ww.sum()
            mask[j, :n] = 1
            n_real[j] = n
        tau = self.levels.to(device=dev, dtype=f64).view(1, 1, K)
        pen = (self.alpha / sig).unsqueeze(-1)  # [B, d, 1]: L1 weight of scaled coefficient j
        beta, b, P, gap, n_iter = _admm(
            Xs, y, om, mask, n_real, tau, pen, Ainv, s, self.fit_intercept, self.tol, self.max_iter, self.check_every, self.verbose
        )
        coef = (beta / sig.unsqueeze(-1)).transpose(1, 2)  # [B, K, d] in original units
        intercept = b - torch.einsum("bd,bkd->bk", mu, coef) if self.fit_intercept else torch.zeros_like(b)
        return {"coef": coef, "intercept": intercept, "objective": P, "gap": gap, "n_iter": n_iter}

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("QuantileHeads is not fitted; call fit() or from_state_dict() first")

    def predict_raw(self, X: Any) -> torch.Tensor:
        """[n, M, K] head outputs as fitted (not rearranged; may cross)."""
        self._check_fitted()
        Xt = self._check_X(X)
        if Xt.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xt.shape[1]} features, the heads were fitted on {self.n_features_in_}")
        Xt = Xt.to(device=self.coef_.device, dtype=torch.float64)
        return torch.einsum("nd,mkd->nmk", Xt, self.coef_) + self.intercept_

    def predict(self, X: Any) -> torch.Tensor:
        """[n, M, K] quantiles, sorted along K (monotone rearrangement: never crosses and never
        increases the summed pinball loss over the levels)."""
        return self.predict_raw(X).sort(dim=-1).values

    def predict_distribution(self, X: Any) -> RewardDistribution:
        """The per-attribute reward distributions, values ``[n, M, K]`` at ``levels_``."""
        v = self.predict(X)
        return RewardDistribution(values=v, levels=self.levels_.to(device=v.device, dtype=v.dtype), kind="quantile")

    # ------------------------------------------------------------------ objective
    def objective(
        self,
        X: Any,
        y: Any,
        attribute: Any = None,
        index: Any = None,
        n_attributes: int | None = None,
        sample_weight: Any = None,
    ) -> torch.Tensor:
        """[M, K] the exact sklearn objective of the fitted (raw) heads on these targets, in
        float64: (1/W_m) sum_i w_i rho_tau(y_i - x_i^T beta - b) + alpha ||beta||_1."""
        self._check_fitted()
        Xt = self._check_X(X).to(device=self.coef_.device, dtype=torch.float64)
        t, w = self._targets(Xt.shape[0], y, attribute, index, n_attributes or self.coef_.shape[0], sample_weight)
        M, K = self.coef_.shape[:2]
        if t.n_attributes != M:
            raise ValueError(f"targets have {t.n_attributes} attributes, the heads {M}")
        return self._objective_long(Xt, t, w)

    def _objective_long(self, Xt: torch.Tensor, t: LongTargets, w: torch.Tensor) -> torch.Tensor:
        M, K = self.coef_.shape[:2]
        Xt = Xt.to(device=self.coef_.device, dtype=torch.float64)
        tau = self.levels_.to(Xt.device)
        out = torch.zeros(M, K, dtype=torch.float64)
        for m in range(M):
            sel = t.attribute == m
            if not bool(sel.any()):
                out[m] = float("nan")
                continue
            idx = t.index[sel].to(Xt.device)
            r = t.y[sel].to(Xt.device)[:, None] - (Xt[idx] @ self.coef_[m].T + self.intercept_[m])
            wm = w[sel].to(Xt.device)
            loss = (wm[:, None] * pinball(r, tau)).sum(0) / wm.sum()
            out[m] = (loss + self.alpha * self.coef_[m].abs().sum(-1)).cpu()
        return out

    # ------------------------------------------------------------------ save / load
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors-compatible, no pickle)."""
        self._check_fitted()
        return {
            "coef": self.coef_.detach().double().cpu().contiguous(),
            "intercept": self.intercept_.detach().double().cpu().contiguous(),
            "levels": self.levels_.double().cpu().contiguous(),
            "objective": self.objective_.double().cpu().contiguous(),
            "duality_gap": self.duality_gap_.double().cpu().contiguous(),
            "n_iter": self.n_iter_.cpu().contiguous(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], config: dict[str, Any] | None = None) -> "QuantileHeads":
        """Rebuild fitted heads from :meth:`state_dict` and :meth:`get_config` output."""
        cfg = dict(config or {})
        cfg.setdefault("levels", state["levels"].tolist())
        heads = cls(**cfg)
        coef, intercept = state["coef"].double(), state["intercept"].double()
        if coef.ndim != 3 or tuple(intercept.shape) != tuple(coef.shape[:2]) or coef.shape[1] != len(heads.levels):
            raise ValueError(
                f"state shapes coef {tuple(coef.shape)} / intercept {tuple(intercept.shape)} do not match "
                f"{len(heads.levels)} levels"
            )
        if not torch.allclose(state["levels"].double(), heads.levels):
            raise ValueError("state levels differ from config levels")
        heads.coef_, heads.intercept_ = coef.clone(), intercept.clone()
        heads.levels_ = heads.levels.clone()
        heads.n_features_in_ = coef.shape[2]
        M, K = coef.shape[:2]
        heads.objective_ = state.get("objective", torch.full((M, K), float("nan"))).double().clone()
        heads.duality_gap_ = state.get("duality_gap", torch.full((M, K), float("nan"))).double().clone()
        heads.n_iter_ = state.get("n_iter", torch.zeros(M, dtype=torch.int64)).clone()
        return heads


# ---------------------------------------------------------------------- the solver
def _prox_pinball(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """argmin_z c * rho_tau(z) + (z - v)^2 / 2 with lo = c (tau - 1), hi = c tau (c >= 0):
    v shrunk towards 0 by the pinball slopes, i.e. ``v - clamp(v, lo, hi)`` (two fused ops)."""
    return v - torch.clamp(v, lo, hi)


def _primal_objective(
    Xs: torch.Tensor, beta: torch.Tensor, b: torch.Tensor, y: torch.Tensor, om: torch.Tensor,
    mask: torch.Tensor, tau: torch.Tensor, pen: torch.Tensor,
) -> torch.Tensor:
    """[B, K] the objective of heads (beta [B, d, K], b [B, 1, K]) in the scaled problem, in
    float64 (the matmul in X's dtype): sum_i om_i rho_tau(y_i - x_i^T beta - b) + sum_j pen_j |beta_j|."""
    fit = (Xs @ beta.to(Xs.dtype)).double() + b.double()
    return (om * pinball((y - fit) * mask, tau)).sum(1) + (pen * beta.double().abs()).sum(1)


def _dual_bound(
    nu: torch.Tensor,
    om: torch.Tensor,
    tau: torch.Tensor,
    y: torch.Tensor,
    Xt: torch.Tensor,
    pen: torch.Tensor,
    intercept: bool,
) -> torch.Tensor:
    """A feasible point of the LP dual built from an estimate ``nu [B, n, K]``; returns its
    value sum_i nu_i y_i [B, K], a lower bound on every head's optimum."""
    lo, hi = om * (tau - 1), om * tau
    nu = torch.minimum(torch.maximum(nu, lo), hi)
    if intercept:  # shift by c * om (clipped) so that sum nu = 0; the sum is monotone in c
        a = torch.full_like(nu[:, :1, :], -1.0)
        bnd = torch.full_like(a, 1.0)
        for _ in range(40):  # bracket 2^-40: the final re-centring moves nu by <= 1e-12 * om
            mid = (a + bnd) / 2
            ssum = torch.minimum(torch.maximum(nu + mid * om, lo), hi).sum(1, keepdim=True)
            a = torch.where(ssum < 0, mid, a)
            bnd = torch.where(ssum < 0, bnd, mid)
        nu = torch.minimum(torch.maximum(nu + (a + bnd) / 2 * om, lo), hi)
        nu = nu - om * (nu.sum(1, keepdim=True) / om.sum(1, keepdim=True))  # last ~1e-16 of the sum
    g = Xt @ nu.to(Xt.dtype)  # [B, d, K]
    ratio = (g.double().abs() / pen).amax(1, keepdim=True)  # scale into |x_j^T nu| <= alpha
    theta = 1.0 / ratio.clamp_min(1.0)
    return theta.squeeze(1) * (nu * y).sum(1)


def _admm(
    Xs: torch.Tensor,  # [B, n, d] centred + scaled features (compute dtype), zero rows on padding
    y: torch.Tensor,  # [B, n, 1] float64
    om: torch.Tensor,  # [B, n, 1] w_i / W
    mask: torch.Tensor,  # [B, n, 1] 1 for real rows
    n_real: torch.Tensor,  # [B, 1, 1]
    tau: torch.Tensor,  # [1, 1, K]
    pen: torch.Tensor,  # [B, d, 1] L1 weight of each scaled coefficient
    Ainv: torch.Tensor,  # [B, d, d] (Xs^T Xs + s^2 I)^-1
    s: torch.Tensor,  # [B, 1, 1] pseudo-row scale
    intercept: bool,
    tol: float,
    max_iter: int,
    check_every: int,
    verbose: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    B, n, d = Xs.shape
    K = tau.shape[-1]
    cdt, f64 = Xs.dtype, torch.float64
    # X^T v with X^T as a strided view is a slow path in CPU BLAS for these skinny [d, n] x [n, K]
    # products, so CPU keeps a contiguous copy (with the float32 state: 1.78x per fit in
    # benchmarks/quantile_solver.py vs the parent commit); cuBLAS transposes for free, and GPU
    # memory is the scarcer resource there
    Xt = Xs.transpose(1, 2)
    if Xs.device.type == "cpu":
        Xt = Xt.contiguous()
    # warm start: ridge fit, intercept moved to the tau-quantile of its residuals
    beta = (Ainv @ (Xt @ y.to(cdt))).double().expand(B, d, K).clone()
    r0 = (y - (Xs @ beta[:, :, :1].to(cdt)).double()) * mask
    b = torch.zeros(B, 1, K, dtype=f64, device=Xs.device)
    b_zero = torch.zeros_like(b)  # the intercept-only model: beta = 0, b = the tau-quantile of y
    if intercept:
        for j in range(B):
            nj = int(n_real[j])
            b[j, 0] = torch.quantile(r0[j, :nj, 0], tau[0, 0])
            b_zero[j, 0] = torch.quantile(y[j, :nj, 0], tau[0, 0])

    # Where features outnumber the distinct rows (a few hundred rated items, d = 384..4096) the
    # ridge start interpolates with a large L1 norm, far worse than predicting a constant; start
    # each head from the better of the two, and never return anything worse than that start.
    P_ridge = _primal_objective(Xs, beta, b, y, om, mask, tau, pen)
    P_zero = _primal_objective(Xs, torch.zeros_like(beta), b_zero, y, om, mask, tau, pen)
    use_zero = (P_zero < P_ridge).unsqueeze(1)
    beta = torch.where(use_zero, torch.zeros_like(beta), beta)
    b = torch.where(use_zero, b_zero, b)
    P_start = torch.minimum(P_ridge, P_zero)
    # The iteration runs in the matmul dtype (float32 by default: every [n, K] elementwise pass
    # and dtype conversion costs as much as a matmul at reward-model sizes); the objective and
    # the dual certificate it stops on are evaluated in float64 at each check.
    y64, om64, mask64, tau64, pen64 = y, om, mask, tau, pen
    y, om, mask, tau, pen, s, n_real = (a.to(cdt) for a in (y, om, mask, tau, pen, s, n_real))
    beta, b = beta.to(cdt), b.to(cdt)
    fit = Xs @ beta + b
    zd = (y - fit) * mask
    zp = -s * beta
    ud = torch.zeros_like(zd)
    up = torch.zeros_like(zp)
    rho = 1.0 / (n_real * (zd.abs().sum(1, keepdim=True) / n_real).clamp_min(1e-12))  # [B, 1, K]
    best_P = P_start
    best_D = torch.full((B, K), -float("inf"), dtype=f64, device=Xs.device)
    best_beta, best_b = beta.double(), b.double()
    ar = _OVER_RELAX
    padded = bool((mask == 0).any())  # masks cost memory passes: skip them when no row is padding
    it = 0
    gap = torch.full((B, K), float("inf"), dtype=f64, device=Xs.device)
    lo, hi, thr = om / rho * (tau - 1), om / rho * tau, pen / (s * rho)  # prox bounds: change only with rho
    while it < max_iter:
        it += 1
        check = it % check_every == 0 or it == max_iter
        yz = y - zd
        vd = yz - ud
        if padded:
            vd = vd * mask
        vp = -zp - up
        beta = Ainv @ (Xt @ vd + s * vp)
        if intercept:
            b = vd.sum(1, keepdim=True) / n_real
        Axd = Xs @ beta + b
        if padded:
            Axd = Axd * mask
        Axp = s * beta
        hd = torch.lerp(yz, Axd, ar)  # over-relaxation: ar * Axd + (1 - ar) * (y - zd); zd, y are 0 on padding
        hp = torch.lerp(-zp, Axp, ar)
        zd_old, zp_old = zd, zp
        v = y - hd - ud
        zd = _prox_pinball(v, lo, hi)
        if padded:
            zd = zd * mask
        ud = zd - v  # = ud + hd + zd - y
        if padded:
            ud = ud * mask
        wp = -hp - up
        zp = wp - torch.clamp(wp, -thr, thr)  # soft threshold
        up = zp - wp  # = up + hp + zp
        if not check:
            continue
        # float64 primal objective of this iterate, and a certified lower bound
        beta64, b64 = beta.double(), b.double()
        P = _primal_objective(Xs, beta64, b64, y64, om64, mask64, tau64, pen64)
        better = P < best_P
        best_P = torch.where(better, P, best_P)
        bm = better.unsqueeze(1)
        best_beta = torch.where(bm, beta64, best_beta)
        best_b = torch.where(bm, b64, best_b)
        D = _dual_bound((-rho * ud).double(), om64, tau64, y64, Xt, pen64, intercept)
        best_D = torch.maximum(best_D, D)
        gap = (best_P - best_D) / best_P.abs().clamp_min(1e-300)
        if verbose:
            print(f"  admm it={it:5d} max rel gap={float(gap.max()):.2e} median={float(gap.median()):.2e}", flush=True)
        if bool((gap <= tol).all()):
            break
        # residual balancing (free: the factorisation does not depend on rho)
        rp = torch.sqrt(((Axd + zd - y) * mask).pow(2).sum(1, keepdim=True) + (Axp + zp).pow(2).sum(1, keepdim=True))
        dz_d, dz_p = (zd - zd_old) * mask, zp - zp_old
        rd = rho * torch.sqrt((Xt @ dz_d).pow(2).sum(1, keepdim=True) + (s * dz_p).pow(2).sum(1, keepdim=True) + dz_d.sum(1, keepdim=True).pow(2))
        sp = torch.sqrt(Axd.pow(2).sum(1, keepdim=True) + Axp.pow(2).sum(1, keepdim=True)).clamp_min(1e-30)
        sd = rho * torch.sqrt((Xt @ ud).pow(2).sum(1, keepdim=True) + (s * up).pow(2).sum(1, keepdim=True)).clamp_min(1e-30)
        ratio = torch.sqrt((rp / sp) / (rd / sd).clamp_min(1e-30))
        fac = torch.where((ratio > 5) | (ratio < 0.2), ratio.clamp(1e-3, 1e3), torch.ones_like(ratio))
        rho = rho * fac
        ud, up = ud / fac, up / fac
        lo, hi, thr = om / rho * (tau - 1), om / rho * tau, pen / (s * rho)
    return best_beta, best_b.squeeze(1), best_P, gap, it
