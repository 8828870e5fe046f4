"""Quantile heads (QRM step 1): M attributes x K levels of linear quantile regression.

For attribute m and level tau the head (beta, b) minimises scikit-learn's
``QuantileRegressor`` objective on *standardised* features z = (x - mean) / scale:

    P(beta, b) = (1 / W) * sum_i w_i * rho_tau(y_i - z_i^T beta - b) + alpha * ||beta||_1,
    rho_tau(r) = max(tau * r, (tau - 1) * r),   W = sum_i w_i,

over the targets of attribute m only (the intercept b is not penalised).

Why standardise. An L1 penalty on raw coefficients means something different on every
backbone: MiniLM's unit-norm features have per-dimension spreads ~0.05, so QRM's alpha = 0.003
(tuned for Llama-3-8B features) made even the exact optimum intercept-only at the outer levels.
With mean and scale fitted on the training features the penalty is scale-free: multiplying the
features by any constant leaves the fitted predictions unchanged. The centre and scale are
folded into the saved coefficients (``coef_`` and ``intercept_`` act on raw features), so
scoring needs nothing extra. ``standardize=False`` gives sklearn's objective on raw features.

Why choose alpha on held-out data. The right penalty depends on the attribute (42 rated
items or 4,000; a binary label or a 10-point scale), so :class:`QuantileHeadsCV` walks a
decreasing alpha path per attribute, from the smallest alpha at which the intercept-only
model is optimal, and keeps the alpha with the lowest pinball loss under K-fold
cross-validation grouped by prompt. The top of the path *is* the marginal model, so the
report can say whether an attribute learned anything at all.

Solvers. ``solver="ipm"`` (default) is an exact interior-point method on the LP dual
(:mod:`distrm.heads.ipm`): it converges on the degenerate LPs real rating data give and
certifies a relative duality gap (``tol``, default 1e-6). ``solver="admm"``
(:mod:`distrm.heads.admm`) is a first-order method for problems whose d x d Newton systems
do not fit the machine (paper scale on a CPU); it stops on the same kind of certificate.

Predictions are sorted along the level axis (monotone rearrangement): for every x the sorted
vector is at least as good in summed pinball loss over the levels as the unsorted one
(Chernozhukov, Fernandez-Val & Galichon 2010), and it removes quantile crossing.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Literal, Sequence

import numpy as np
import torch

from distrm.distribution import RewardDistribution, default_levels
from distrm.heads.admm import admm_fit
from distrm.heads.blocks import DEFAULT_BLOCK_ROWS, StandardizedRows, block_standardizer, is_row_source
from distrm.heads.cv import group_folds
from distrm.heads.ipm import ipm_quantile
from distrm.heads.objective import pinball, standardizer, weighted_quantile
from distrm.heads.targets import LongTargets, as_long_targets

Solver = Literal["ipm", "admm"]
_DEFAULT_TOL = {"ipm": 1e-6, "admm": 1e-3}
_DEFAULT_MAX_ITER = {"ipm": 100, "admm": 5000}
# a solve that ends above this certified gap is reported as unconverged (tol is the target)
_FAR_GAP = 1e-3

__all__ = ["QuantileHeads", "QuantileHeadsCV", "pinball", "standardizer", "weighted_quantile"]


def _as_tensor(a: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(dtype)
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def _check_levels(levels: Any) -> torch.Tensor:
    lv = default_levels(19, torch.float64) if levels is None else torch.as_tensor(levels, dtype=torch.float64)
    if lv.ndim != 1 or len(lv) == 0:
        raise ValueError("levels must be a non-empty 1-d sequence")
    if not (bool((lv > 0).all()) and bool((lv < 1).all()) and bool((lv[1:] > lv[:-1]).all())):
        raise ValueError(f"levels must be strictly increasing inside (0, 1); got {lv.tolist()}")
    return lv


def _check_X(X: Any) -> torch.Tensor:
    Xt = _as_tensor(X, torch.float64) if not isinstance(X, torch.Tensor) else X.detach()
    if not Xt.is_floating_point():
        Xt = Xt.double()
    if Xt.ndim != 2:
        raise ValueError(f"X must be 2-d [n_items, d]; got shape {tuple(Xt.shape)}")
    if not bool(torch.isfinite(Xt).all()):
        raise ValueError("X contains NaN or inf (features must be finite; missing *labels* go in y)")
    return Xt


def _long_targets(
    n_items: int, y: Any, attribute: Any, index: Any, n_attributes: int | None, sample_weight: Any
) -> tuple[LongTargets, torch.Tensor]:
    """Long-format targets and one weight per target (validated)."""
    wide = attribute is None and index is None
    y_np = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y, dtype=np.float64)
    if np.isinf(y_np).any():
        raise ValueError("y contains inf")
    t = as_long_targets(n_items, y_np, attribute, index, n_attributes)
    if sample_weight is None:
        return t, torch.ones(len(t.y), dtype=torch.float64)
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


def alpha_max(prob: "_Problem", tau: torch.Tensor) -> float:
    """The smallest alpha at which beta = 0 (the intercept-only model) is optimal at every
    level, up to ties: a feasible dual point of the intercept-only fit (tied rows share the
    slack) has |Z^T nu| <= this bound, which certifies beta = 0 for any alpha at or above it."""
    y, om = prob.y, prob.om
    b = weighted_quantile(y, om, tau)  # [K]
    above, below = y[None, :] > b[:, None], y[None, :] < b[:, None]
    tie = ~(above | below)
    tk = tau[:, None]
    nu = torch.where(above, om * tk, torch.where(below, om * (tk - 1), torch.zeros_like(om)))
    w_tie = (om * tie).sum(1, keepdim=True)
    c = -nu.sum(1, keepdim=True) / w_tie.clamp_min(1e-300)
    nu = torch.where(tie, om * c, nu)
    m = len(prob.items)
    g = torch.zeros(len(tau), m, dtype=torch.float64).index_add_(1, prob.idx, nu)
    if "Z" in prob.__dict__:
        g = g @ prob.Z
    else:  # features read in blocks: the same product, summed over blocks of items
        g = sum(g[:, s : s + len(b)] @ b for s, b in prob._source.blocks(prob.items))
    return float(g.abs().max()) if g.numel() else 0.0


class _Problem:
    """One attribute's targets on the standardised features: the items it rates (``Z``), the
    item of each target row (``idx``), targets and normalised weights. With features read in
    blocks (a :class:`~distrm.heads.blocks.StandardizedRows` source) ``Z`` is read only if a
    solver asks for it (the IPM, cross-validation); ADMM and ``alpha_max`` read blocks."""

    def __init__(self, Z: torch.Tensor | StandardizedRows, index: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> None:
        items, idx = torch.unique(index, return_inverse=True)
        self.items, self.idx = items, idx
        if isinstance(Z, torch.Tensor):
            self.Z = Z[items.to(Z.device)]
        else:
            self._source = Z
        self.y = y.double()
        self.om = (w / w.sum()).double()

    def __getattr__(self, name: str) -> Any:
        if name == "Z" and "_source" in self.__dict__:  # read on first use
            self.Z = self._source[self.items]
            return self.Z
        raise AttributeError(name)

    def subset(self, rows: torch.Tensor) -> "_Problem":
        p = _Problem.__new__(_Problem)
        items, idx = torch.unique(self.idx[rows], return_inverse=True)
        p.items, p.idx, p.Z = self.items[items], idx, self.Z[items]
        p.y = self.y[rows]
        w = self.om[rows]
        p.om = w / w.sum()
        return p


def _is_marginal(prob: "_Problem", tau: torch.Tensor, alpha: float, fit_intercept: bool) -> bool:
    """beta = 0 is optimal at this alpha (alpha_max is certified by a feasible dual point)."""
    return alpha == float("inf") or (fit_intercept and alpha >= alpha_max(prob, tau))


def _default_batch(dev: torch.device, cdt: torch.dtype, d: int, sizes: list[int]) -> int:
    """Attributes per first-order solve: 1 on a CPU, as many as fit in half the free GPU memory."""
    if dev.type != "cuda" or not sizes:
        return 1
    free, _ = torch.cuda.mem_get_info(dev)
    per = max(sizes) * d * torch.finfo(cdt).bits // 8 + 3 * d * d * 8
    return max(1, min(len(sizes), int(0.5 * free // per)))


def _solve(
    prob: _Problem, tau: torch.Tensor, alpha: float, solver: str, fit_intercept: bool, tol: float, max_iter: int,
    device: torch.device, verbose: bool = False, check_every: int = 20, pseudo_scale: float = 0.1,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """beta [K, d], b [K], objective [K], gap [K], n_iter for one attribute at one alpha."""
    d = prob.Z.shape[1]
    if _is_marginal(prob, tau, alpha, fit_intercept):
        # beta = 0 is optimal (alpha_max is certified by a feasible dual point): closed form
        b = weighted_quantile(prob.y, prob.om, tau)
        K = len(tau)
        P = (prob.om * pinball(prob.y[None, :] - b[:, None], tau[:, None])).sum(1)
        return {"beta": torch.zeros(K, d, dtype=torch.float64), "b": b, "objective": P,
                "gap": torch.zeros(K, dtype=torch.float64), "n_iter": 0}
    if solver == "ipm":
        # alpha = 0 (no penalty) is solved as a tiny one: the dual's |z_j^T nu| <= alpha box needs
        # an interior
        pen = torch.full((d,), max(alpha, 1e-10), dtype=torch.float64, device=device)
        out = ipm_quantile(
            prob.Z.to(device), prob.idx.to(device), prob.y.to(device), prob.om.to(device), tau.to(device), pen,
            tol=tol, max_iter=max_iter, intercept=fit_intercept, verbose=verbose,
        )
        return {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    out = admm_fit(
        prob.Z, prob.idx, prob.y, prob.om, [torch.arange(len(prob.y))], tau, [alpha], fit_intercept, tol, max_iter,
        check_every, pseudo_scale, device, dtype or torch.float32, verbose,
    )
    return {"beta": out["coef"][0].cpu(), "b": out["intercept"][0].cpu(), "objective": out["objective"][0].cpu(),
            "gap": out["gap"][0].cpu(), "n_iter": int(out["n_iter"])}


class QuantileHeads:
    """Linear quantile heads for M attributes x K levels, sklearn-like (parameters stored as
    given, validated in ``fit``; ``fit`` returns self; learned attributes end in ``_``).

    Args:
        levels: K strictly increasing quantile levels in (0, 1); default ``default_levels(19)``
            (0.05, 0.10, ..., 0.95).
        alpha: L1 penalty (a number, or one per attribute), on standardised features unless
            ``standardize=False``. :class:`QuantileHeadsCV` chooses it on held-out data.
        fit_intercept: fit an unpenalised intercept per head.
        standardize: centre and scale the features (fitted on ``X``, folded into ``coef_``).
        solver: "ipm" (exact interior point, default) or "admm" (first-order, for problems
            whose d x d systems do not fit; see the module docstring).
        device: where to solve ("cpu", "cuda", ...). Default: X's device.
        dtype: ADMM's iteration dtype (default float32); the IPM always runs in float64.
        tol: certified relative duality gap per head at which a solve stops (default 1e-6 for
            "ipm", 1e-3 for "admm").
        max_iter: iteration cap per attribute (default 100 Newton steps, or 5000 ADMM steps).
        check_every, pseudo_scale, attribute_batch: ADMM settings (see :mod:`distrm.heads.admm`).
        block_rows: read ``X`` in blocks of this many rows instead of copying it (standardiser,
            Gram matrices and objectives accumulated over blocks; ADMM then holds the features
            once, in its iteration dtype). The default for an ``np.memmap`` or a feature-store
            view (``extract(..., stream=True)``), with 8192 rows; None otherwise.
        verbose: log solver progress.
    """

    def __init__(
        self,
        levels: torch.Tensor | Sequence[float] | None = None,
        alpha: float | Sequence[float] = 0.003,
        fit_intercept: bool = True,
        standardize: bool = True,
        solver: Solver = "ipm",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        check_every: int = 20,
        pseudo_scale: float = 0.1,
        attribute_batch: int | None = None,
        block_rows: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.levels = levels
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.standardize = standardize
        self.solver = solver
        self.device = device
        self.dtype = dtype
        self.tol = tol
        self.max_iter = max_iter
        self.check_every = check_every
        self.pseudo_scale = pseudo_scale
        self.attribute_batch = attribute_batch
        self.block_rows = block_rows
        self.verbose = verbose

    # ------------------------------------------------------------------ config
    def _validate(self) -> tuple[torch.Tensor, float, int]:
        """(levels, tol, max_iter) from the parameters, each checked."""
        levels = _check_levels(self.levels)
        if self.solver not in _DEFAULT_TOL:
            raise ValueError(f"solver must be 'ipm' or 'admm', got {self.solver!r}")
        tol = _DEFAULT_TOL[self.solver] if self.tol is None else float(self.tol)
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        max_iter = _DEFAULT_MAX_ITER[self.solver] if self.max_iter is None else int(self.max_iter)
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        return levels, tol, max_iter

    @staticmethod
    def _alphas(alpha: Any, n_attributes: int) -> list[float]:
        alphas = [float(alpha)] * n_attributes if np.ndim(alpha) == 0 else [float(a) for a in alpha]
        if len(alphas) != n_attributes:
            raise ValueError(f"alpha has {len(alphas)} values for {n_attributes} attributes")
        if not all(a >= 0 and not np.isnan(a) for a in alphas):
            raise ValueError(f"alpha must be >= 0 (inf: the intercept-only model), got {alpha}")
        return alphas

    def get_config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (levels as a list, fitted alphas when fitted)."""
        alpha = self.alpha_.tolist() if hasattr(self, "alpha_") else self.alpha
        return {
            "levels": _check_levels(self.levels).tolist(),
            "alpha": alpha if np.ndim(alpha) == 0 else list(alpha),
            "fit_intercept": self.fit_intercept,
            "standardize": self.standardize,
            "solver": self.solver,
            "tol": self.tol,
            "max_iter": self.max_iter,
        }

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
        return self._fit(self._prepare(X, y, attribute, index, n_attributes, sample_weight), self.alpha)

    def _prepare(self, X: Any, y: Any, attribute: Any, index: Any, n_attributes: int | None,
                 sample_weight: Any) -> dict[str, Any]:
        """Validated inputs, the standardised features and one :class:`_Problem` per attribute
        (with ``block_rows``: row sources read in blocks in place of ``X64`` and ``Z``)."""
        block = self.block_rows if self.block_rows is not None else DEFAULT_BLOCK_ROWS if is_row_source(X) else None
        if block is not None:
            if int(block) < 1:
                raise ValueError(f"block_rows must be >= 1, got {self.block_rows}")
            if len(getattr(X, "shape", ())) != 2:
                raise ValueError(f"X must be 2-d [n_items, d]; got shape {tuple(getattr(X, 'shape', ()))}")
            n_rows, d = X.shape
        else:
            Xt = _check_X(X)
            n_rows, d = Xt.shape
        t, w = _long_targets(n_rows, y, attribute, index, n_attributes, sample_weight)
        M = t.n_attributes
        if M == 0:
            raise ValueError("no attributes to fit")
        levels, tol, max_iter = self._validate()
        zeros, ones = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
        if block is not None:  # the validation (finite values) happens in the standardiser's pass
            mean, scale = block_standardizer(X, int(block))
            if not self.standardize:
                mean, scale = zeros, ones
            X64, Z = StandardizedRows(X, int(block)), StandardizedRows(X, int(block), mean, scale)
        else:
            X64 = Xt.to(dtype=torch.float64)
            mean, scale = standardizer(X64) if self.standardize else (zeros, ones)
            Z = (X64 - mean) / scale
        rows, problems = [], []
        for m in range(M):
            sel = torch.nonzero((t.attribute == m) & (w > 0)).squeeze(1)
            if len(sel) == 0:
                raise ValueError(f"attribute {m} has no targets with positive weight")
            rows.append(sel)
            problems.append(_Problem(Z, t.index[sel], t.y[sel], w[sel]))
        dev = torch.device(self.device) if self.device is not None else Z.device
        return {"X64": X64, "Z": Z, "t": t, "w": w, "M": M, "d": d, "levels": levels, "tol": tol, "max_iter": max_iter,
                "mean": mean, "scale": scale, "rows": rows, "problems": problems, "dev": dev}

    def _fit(self, p: dict[str, Any], alpha: Any) -> "QuantileHeads":
        """Fit every attribute at its alpha on the prepared inputs ``p`` (:meth:`_prepare`)."""
        M, d, levels, tol, max_iter = p["M"], p["d"], p["levels"], p["tol"], p["max_iter"]
        mean, scale, problems, dev, X64, t, w = p["mean"], p["scale"], p["problems"], p["dev"], p["X64"], p["t"], p["w"]
        alphas = self._alphas(alpha, M)
        K = len(levels)
        self.coef_ = torch.zeros(M, K, d, dtype=torch.float64)
        self.intercept_ = torch.zeros(M, K, dtype=torch.float64)
        self.objective_ = torch.zeros(M, K, dtype=torch.float64)
        self.duality_gap_ = torch.zeros(M, K, dtype=torch.float64)
        self.n_iter_ = torch.zeros(M, dtype=torch.int64)
        t0 = time.perf_counter()
        results: dict[int, dict[str, Any]] = {}
        if self.solver == "admm":  # first-order solves batch attributes (padded to the largest) on a GPU
            cdt = self.dtype or torch.float32
            batch = [m for m in range(M) if not _is_marginal(problems[m], levels, alphas[m], self.fit_intercept)]
            B = self.attribute_batch or _default_batch(dev, cdt, d, [len(p["rows"][m]) for m in batch])
            for start in range(0, len(batch), B):
                ms = batch[start:start + B]
                out = admm_fit(p["Z"], t.index, t.y, w, [p["rows"][m] for m in ms], levels, [alphas[m] for m in ms],
                               self.fit_intercept, tol, max_iter, self.check_every, self.pseudo_scale, dev, cdt, self.verbose)
                for j, m in enumerate(ms):
                    results[m] = {"beta": out["coef"][j].cpu(), "b": out["intercept"][j].cpu(), "n_iter": int(out["n_iter"]),
                                  "objective": out["objective"][j].cpu(), "gap": out["gap"][j].cpu()}
        for m, prob in enumerate(problems):
            out = results.get(m) or _solve(prob, levels, alphas[m], self.solver, self.fit_intercept, tol, max_iter, dev,
                                           self.verbose, self.check_every, self.pseudo_scale, self.dtype)
            beta = out["beta"].double()  # [K, d] on standardised features
            self.coef_[m] = beta / scale
            self.intercept_[m] = out["b"].double() - self.coef_[m] @ mean
            self.objective_[m], self.duality_gap_[m] = out["objective"].double(), out["gap"].double()
            self.n_iter_[m] = int(out["n_iter"])
        self.fit_time_s_ = time.perf_counter() - t0
        self.levels_ = levels
        self.alpha_ = torch.tensor(alphas, dtype=torch.float64)
        self.feature_mean_, self.feature_scale_ = mean, scale
        self.n_features_in_ = d
        self.tol_ = tol
        # report the float64 objective of the returned heads on X as given (the solver's own
        # value comes from standardised features, and ADMM's from float32 matmuls)
        lower = self.objective_ * (1 - self.duality_gap_)
        self.objective_ = self._objective_long(X64, t, w)
        self.duality_gap_ = ((self.objective_ - lower) / self.objective_.abs().clamp_min(1e-300)).clamp_min(0)
        far = self.duality_gap_ > max(tol, _FAR_GAP)
        if bool(far.any()):
            worst = int(self.duality_gap_.max(1).values.argmax())
            warnings.warn(
                f"{int(far.sum())} of {M * K} quantile heads stopped {float(self.duality_gap_.max()):.1%} or less above "
                f"their optimum (certified), worst attribute #{worst}, after max_iter={max_iter}: raise max_iter"
                + (" or use solver='ipm'" if self.solver == "admm" else ""),
                RuntimeWarning,
                stacklevel=2,
            )
        return self

    def n_nonzero(self) -> torch.Tensor:
        """[M, K] non-zero coefficients per head."""
        self._check_fitted()
        return (self.coef_ != 0).sum(-1)

    def report(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per attribute: alpha (None = the marginal model), non-zero coefficients (median and
        max over levels), certified duality gap; the held-out columns (``heldout_pinball``,
        ``marginal_pinball``, ``improvement``, ``informative``) are None here and filled by
        :class:`QuantileHeadsCV`."""
        self._check_fitted()
        names = list(names) if names is not None else [str(m) for m in range(self.coef_.shape[0])]
        nnz = self.n_nonzero()
        return [{
            "attribute": name,
            "alpha": None if float(self.alpha_[m]) == float("inf") else float(self.alpha_[m]),
            "heldout_pinball": None, "marginal_pinball": None, "improvement": None,
            "nonzero_median": float(nnz[m].double().median()),
            "nonzero_max": int(nnz[m].max()),
            "duality_gap": float(self.duality_gap_[m].max()),
            "informative": None,
        } for m, name in enumerate(names)]

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("QuantileHeads is not fitted; call fit() or from_state_dict() first")

    def predict_raw(self, X: Any) -> torch.Tensor:
        """[n, M, K] head outputs as fitted (not rearranged; may cross)."""
        self._check_fitted()
        Xt = _check_X(X)
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
        """[M, K] the exact objective the fitted (raw) heads minimised on these targets, in
        float64: (1/W_m) sum_i w_i rho_tau(y_i - x_i^T coef - b) + alpha_m ||coef * scale||_1
        (scale = 1 when ``standardize=False``: sklearn's objective)."""
        self._check_fitted()
        Xt = _check_X(X).to(device=self.coef_.device, dtype=torch.float64)
        t, w = _long_targets(Xt.shape[0], y, attribute, index, n_attributes or self.coef_.shape[0], sample_weight)
        M, K = self.coef_.shape[:2]
        if t.n_attributes != M:
            raise ValueError(f"targets have {t.n_attributes} attributes, the heads {M}")
        return self._objective_long(Xt, t, w)

    def _objective_long(self, Xt: torch.Tensor, t: LongTargets, w: torch.Tensor) -> torch.Tensor:
        M, K = self.coef_.shape[:2]
        if isinstance(Xt, torch.Tensor):
            Xt = Xt.to(device=self.coef_.device, dtype=torch.float64)
        tau = self.levels_.to(Xt.device)
        out = torch.zeros(M, K, dtype=torch.float64)
        for m in range(M):
            sel = t.attribute == m
            if not bool(sel.any()):
                out[m] = float("nan")
                continue
            idx = t.index[sel].to(Xt.device)
            if isinstance(Xt, StandardizedRows):  # features read in blocks
                fit = torch.cat([b @ self.coef_[m].T for _, b in Xt.blocks(idx)]) + self.intercept_[m]
            else:
                fit = Xt[idx] @ self.coef_[m].T + self.intercept_[m]
            r = t.y[sel].to(Xt.device)[:, None] - fit
            wm = w[sel].to(Xt.device)
            loss = (wm[:, None] * pinball(r, tau)).sum(0) / wm.sum()
            l1 = (self.coef_[m] * self.feature_scale_).abs().sum(-1)
            pen = torch.zeros_like(l1) if float(self.alpha_[m]) == float("inf") else self.alpha_[m] * l1  # inf * 0 := 0
            out[m] = (loss + pen).cpu()
        return out

    # ------------------------------------------------------------------ save / load
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors-compatible, no pickle)."""
        self._check_fitted()
        return {
            "coef": self.coef_.detach().double().cpu().contiguous(),
            "intercept": self.intercept_.detach().double().cpu().contiguous(),
            "levels": self.levels_.double().cpu().contiguous(),
            "alpha": self.alpha_.double().cpu().contiguous(),
            "feature_mean": self.feature_mean_.double().cpu().contiguous(),
            "feature_scale": self.feature_scale_.double().cpu().contiguous(),
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
        levels = _check_levels(heads.levels)
        coef, intercept = state["coef"].double(), state["intercept"].double()
        if coef.ndim != 3 or tuple(intercept.shape) != tuple(coef.shape[:2]) or coef.shape[1] != len(levels):
            raise ValueError(
                f"state shapes coef {tuple(coef.shape)} / intercept {tuple(intercept.shape)} do not match "
                f"{len(levels)} levels"
            )
        if not torch.allclose(state["levels"].double(), levels):
            raise ValueError("state levels differ from config levels")
        heads.coef_, heads.intercept_ = coef.clone(), intercept.clone()
        heads.levels_ = levels
        M, K, d = coef.shape
        heads.n_features_in_ = d
        alpha = state.get("alpha")
        if alpha is None:
            alpha = torch.as_tensor(np.broadcast_to(np.asarray(heads.alpha, dtype=np.float64), (M,)).copy())
        heads.alpha_ = alpha.double().clone()
        heads.feature_mean_ = state.get("feature_mean", torch.zeros(d, dtype=torch.float64)).double().clone()
        heads.feature_scale_ = state.get("feature_scale", torch.ones(d, dtype=torch.float64)).double().clone()
        heads.objective_ = state.get("objective", torch.full((M, K), float("nan"))).double().clone()
        heads.duality_gap_ = state.get("duality_gap", torch.full((M, K), float("nan"))).double().clone()
        heads.n_iter_ = state.get("n_iter", torch.zeros(M, dtype=torch.int64)).clone()
        return heads




def _pooled(fold_loss: torch.Tensor, fold_w: torch.Tensor) -> torch.Tensor:
    """[P] the held-out loss per alpha: folds weighted by their held-out weight."""
    share = fold_w / fold_w.sum().clamp_min(1e-300)
    return torch.nansum(fold_loss * share, -1)


class QuantileHeadsCV(QuantileHeads):
    """:class:`QuantileHeads` with alpha chosen per attribute by cross-validation grouped by
    prompt, then refitted on all the data (sklearn's ``LassoCV`` pattern).

    The path for attribute m is ``[inf] + alpha_max * ratio**(i / (n_alphas - 1))``,
    i = 1..n_alphas-1: ``inf`` is the intercept-only (marginal) model, computed in closed form,
    and ``alpha_max`` the smallest penalty at which it is optimal on the attribute's data. When
    the smallest alpha wins, the path is extended downwards (same ratio, up to 4 steps) until
    the held-out loss turns up.
    Each alpha's score is the held-out pinball loss (rater weights, averaged over the CV
    levels; predictions rearranged as at scoring) summed over folds that hold out whole
    prompts. The lowest wins.

    Args (beside :class:`QuantileHeads`' own, except ``alpha``):
        alphas: an explicit decreasing grid instead of the automatic path (``inf`` allowed).
        n_alphas: path length including the marginal model.
        alpha_min_ratio: smallest alpha as a fraction of ``alpha_max``.
        cv: number of folds.
        cv_levels: levels scored in cross-validation (default: all of ``levels``). Fewer levels
            make CV proportionally cheaper; the final fit always uses every level.
        seed: fold assignment.
        progress: a progress bar over the (attribute, fold) solves.

    Fitted, beside :class:`QuantileHeads`' attributes: ``cv_alphas_`` [M, P] (the path,
    ``inf`` first), ``cv_loss_`` [M, P], ``cv_fold_loss_`` [M, P, F], ``marginal_loss_`` and
    ``best_loss_`` [M] (held-out pinball of the marginal model and of the chosen alpha),
    ``informative_`` [M] (the chosen model beats the marginal one by more than one standard
    error of the per-fold differences).
    """

    def __init__(
        self,
        levels: torch.Tensor | Sequence[float] | None = None,
        alphas: Sequence[float] | None = None,
        n_alphas: int = 8,
        alpha_min_ratio: float = 1e-2,
        cv: int = 3,
        cv_levels: Sequence[float] | None = None,
        fit_intercept: bool = True,
        standardize: bool = True,
        solver: Solver = "ipm",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        seed: int = 0,
        block_rows: int | None = None,
        verbose: bool = False,
        progress: bool = False,
    ) -> None:
        super().__init__(levels=levels, alpha=0.0, fit_intercept=fit_intercept, standardize=standardize, solver=solver,
                         device=device, dtype=dtype, tol=tol, max_iter=max_iter, block_rows=block_rows, verbose=verbose)
        self.alphas = alphas
        self.n_alphas = n_alphas
        self.alpha_min_ratio = alpha_min_ratio
        self.cv = cv
        self.cv_levels = cv_levels
        self.seed = seed
        self.progress = progress

    def _path(self, prob: _Problem, tau: torch.Tensor) -> list[float]:
        if self.alphas is not None:
            path = sorted((float(a) for a in self.alphas), reverse=True)
            if not path or any(not a >= 0 for a in path):
                raise ValueError(f"alphas must be a non-empty list of values >= 0, got {self.alphas}")
            return path
        if self.n_alphas < 2:
            raise ValueError(f"n_alphas must be >= 2 (the marginal model and one penalty), got {self.n_alphas}")
        if not 0 < self.alpha_min_ratio < 1:
            raise ValueError(f"alpha_min_ratio must lie in (0, 1), got {self.alpha_min_ratio}")
        amax = alpha_max(prob, tau)
        steps = np.arange(1, self.n_alphas) / (self.n_alphas - 1)
        return [float("inf")] + [amax * self.alpha_min_ratio**s for s in steps]

    def _cv_losses(self, prob: _Problem, fold: torch.Tensor, path: list[float], cv_tau: torch.Tensor, tol: float,
                   max_iter: int, dev: torch.device, bar: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """([len(path), F] held-out pinball per alpha and fold, [F] held-out weight per fold)."""
        F = int(fold.max()) + 1
        loss = torch.full((len(path), F), float("nan"), dtype=torch.float64)
        wts = torch.zeros(F, dtype=torch.float64)
        for f in range(F):
            test = torch.nonzero(fold == f).squeeze(1)
            train = torch.nonzero(fold != f).squeeze(1)
            if len(train) == 0 or len(test) == 0:
                bar.update(len(path))
                continue
            tr = prob.subset(train)
            wts[f] = prob.om[test].sum()
            Zte, yte, wte = prob.Z[prob.idx[test]], prob.y[test], prob.om[test]
            for a_i, alpha in enumerate(path):
                out = _solve(tr, cv_tau, alpha, self.solver, self.fit_intercept, tol, max_iter, dev,
                             check_every=self.check_every, pseudo_scale=self.pseudo_scale, dtype=self.dtype)
                pred = (Zte @ out["beta"].double().T + out["b"].double()).sort(dim=-1).values  # [n_test, K']
                loss[a_i, f] = ((wte[:, None] * pinball(yte[:, None] - pred, cv_tau[None, :])).sum(0) / wte.sum()).mean()
                bar.update(1)
        return loss, wts

    def fit(
        self,
        X: Any,
        y: Any,
        attribute: Any = None,
        index: Any = None,
        n_attributes: int | None = None,
        sample_weight: Any = None,
        groups: Sequence[Any] | None = None,
    ) -> "QuantileHeadsCV":
        """As :meth:`QuantileHeads.fit`; ``groups [n_items]`` (e.g. the prompt of each row of X)
        keeps equal groups in one fold (default: every item its own group)."""
        from tqdm.auto import tqdm

        p = self._prepare(X, y, attribute, index, n_attributes, sample_weight)
        M, levels, tol, max_iter, dev, problems = p["M"], p["levels"], p["tol"], p["max_iter"], p["dev"], p["problems"]
        n_rows = p["X64"].shape[0]
        cv_tau = levels if self.cv_levels is None else _check_levels(self.cv_levels)
        if groups is not None and len(groups) != n_rows:
            raise ValueError(f"groups has {len(groups)} entries for {n_rows} feature rows")
        group_arr = np.asarray([str(g) for g in groups]) if groups is not None else np.arange(n_rows).astype(str)
        paths, folds = [], []
        for m, prob in enumerate(problems):
            paths.append(self._path(prob, levels))
            item_fold = group_folds(group_arr[prob.items.numpy()], self.cv, self.seed + m)
            folds.append(torch.as_tensor(item_fold)[prob.idx])
        F = self.cv
        bar = tqdm(total=sum(len(p) * int(f.max() + 1) for p, f in zip(paths, folds)), desc="heads: alpha path x folds",
                   disable=not self.progress, leave=False)
        losses, weights = [], []
        for m, (prob, fold) in enumerate(zip(problems, folds)):
            fl, fw = self._cv_losses(prob, fold, paths[m], cv_tau, tol, max_iter, dev, bar)
            # the best alpha at the end of the path: extend it downwards until the loss turns up
            extra = 0
            while self.alphas is None and int(_pooled(fl, fw).argmin()) == len(paths[m]) - 1 and extra < 4:
                step = paths[m][-1] * (paths[m][-1] / paths[m][-2]) if len(paths[m]) > 2 else paths[m][-1] / 10
                bar.total += int(fold.max()) + 1
                more, _ = self._cv_losses(prob, fold, [step], cv_tau, tol, max_iter, dev, bar)
                paths[m].append(step)
                fl = torch.cat([fl, more])
                extra += 1
            losses.append(fl)
            weights.append(fw)
        bar.close()
        P = max(len(path) for path in paths)
        fold_loss = torch.full((M, P, F), float("nan"), dtype=torch.float64)
        cv_loss = torch.full((M, P), float("inf"), dtype=torch.float64)  # inf: past an attribute's path, or no fold
        for m in range(M):
            fold_loss[m, : losses[m].shape[0], : losses[m].shape[1]] = losses[m]
            pooled = _pooled(losses[m], weights[m])
            cv_loss[m, : len(pooled)] = torch.where(torch.isnan(losses[m]).all(-1), float("inf"), pooled)
        best = cv_loss.argmin(1)
        chosen = [paths[m][int(best[m])] for m in range(M)]
        # refit every attribute at its chosen alpha on all of its data (the same prepared inputs)
        self._fit(p, chosen)
        self.cv_alphas_ = torch.full((M, P), float("nan"), dtype=torch.float64)
        for m, path in enumerate(paths):
            self.cv_alphas_[m, : len(path)] = torch.tensor(path, dtype=torch.float64)
        self.cv_loss_, self.cv_fold_loss_ = cv_loss, fold_loss
        self.marginal_loss_ = cv_loss[:, 0] if self.alphas is None else torch.full((M,), float("nan"), dtype=torch.float64)
        self.best_loss_ = cv_loss.gather(1, best[:, None]).squeeze(1)
        diff = fold_loss[:, 0, :] - fold_loss.gather(1, best[:, None, None].expand(M, 1, F)).squeeze(1)  # [M, F]
        n_f = (~torch.isnan(diff)).sum(1).clamp_min(1)
        d_mean = torch.nansum(diff, 1) / n_f
        d_se = torch.sqrt(torch.nansum((diff - d_mean[:, None]) ** 2, 1) / (n_f - 1).clamp_min(1) / n_f)
        self.informative_ = (d_mean > d_se) & (best > 0) if self.alphas is None else torch.ones(M, dtype=torch.bool)
        return self

    def report(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """:meth:`QuantileHeads.report` with the cross-validation columns filled in."""
        rows = super().report(names)
        for m, row in enumerate(rows):
            marg, bestl = float(self.marginal_loss_[m]), float(self.best_loss_[m])
            row.update(heldout_pinball=bestl, marginal_pinball=marg, improvement=(marg - bestl) / marg if marg > 0 else 0.0,
                       informative=bool(self.informative_[m]))
        return rows
