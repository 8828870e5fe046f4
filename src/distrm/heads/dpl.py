"""Distributional preference learning (DPL) heads: a reward *distribution* from pairs alone.

Siththaranjan, Laidlaw and Hadfield-Menell (2023), "Distributional Preference Learning:
Understanding and Accounting for Hidden Context in RLHF". When annotators differ in
something the data do not record (their group, their values), a Bradley-Terry head fits one
utility per response and averages the disagreement away: a response one group loves and the
other hates looks like a mediocre one. DPL instead models each response's utility as a random
variable U(x) -- the spread over the unobserved context -- and fits its distribution by the
likelihood of the observed preferences, with U(a) and U(b) independent:

* :class:`MeanVarianceDPLHeads` -- U(x) ~ N(mu(x), sigma(x)^2), the paper's mean-and-variance
  model, with linear maps from frozen features:

      mu(x) = w^T x,    log sigma(x) = v^T x + c,
      P(a > b) = Phi((mu_a - mu_b) / sqrt(sigma_a^2 + sigma_b^2))       (the normal CDF link)

  fitted by the mean negative log-likelihood -log Phi(z) over pairs (``torch.special.log_ndtr``,
  stable for large |z|) + (l2 / 2)(||w||^2 + ||v||^2 + c^2) on standardised features. Why the
  penalty on c: the likelihood only sees the ratio of the mean difference to the spread, so
  (w, sigma) and (k w, k sigma) fit equally well; the penalty fixes the scale (sigma = 1 at
  v = c = 0). No mean intercept: it cancels in mu_a - mu_b. ``variance_penalty`` (the
  reference implementation's option) adds mean(sigma_a^2 + sigma_b^2) x that weight.
  log sigma is linear, so sigma is monotone along every feature direction: a context that
  splits the annotators must be a direction the features order (e.g. "how much of the
  contested property"), not a distance from some centre -- a limitation of linear heads.

* :class:`CategoricalDPLHeads` -- U(x) on n_bins fixed atoms a_1 < ... < a_J (default
  linspace(0, 1, 10) as the paper), p(x) = softmax(W x + b):

      P(a > b) = sum_{j,i} p_j(a) p_i(b) ([a_j > a_i] + 0.5 [a_j = a_i]) = p(a)^T T p(b)

  fitted by -log P(chosen > rejected) + (l2 / 2) ||W||^2 - entropy_weight * H(mean p), the
  last term (the paper's entropy bonus, on the distribution averaged over the batch's
  responses) keeps all atoms in use so the head cannot collapse on two of them. A softmax of
  linear logits can be bimodal (logits convex in j along a feature direction put mass on both
  ends), which the normal head cannot express: where two annotator groups pull a response's
  utility apart, the categorical head shows the two groups as two modes.

Both heads are scikit-learn-like (parameters verbatim in ``__init__``, validation in ``fit``,
learned attributes end in ``_``) and fitted full-batch by L-BFGS in float64 (the losses are
smooth, the parameter count is small, and a deterministic optimiser makes ``seed`` matter only
for the initial logits of the categorical head). ``coef_`` / ``intercept_`` act on raw
features (standardisation folded in), so a saved model reloads exactly.

As a :class:`~distrm.distribution.RewardDistribution` (``predict_dist``), both are quantile
functions at ``n_levels`` equal cells of (0, 1), level = cell midpoint, value = the *average*
of the exact quantile function over the cell. Why cell averages: the piecewise-linear
quantile function with constant tails that ``RewardDistribution`` integrates then has
exactly the model's mean (its integral is the sum of the cell averages / K); for the normal,
the values are further scaled about mu so the variance is exact too (one constant per K,
:func:`normal_cell_quantiles`). CVaR and other tail measures are then within a cell's mass of
the exact ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from distrm.distribution import RewardDistribution
from distrm.heads.objective import standardizer


def _as_f64(X: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X).double()


def _check_pairs(X_chosen: Any, X_rejected: Any) -> tuple[torch.Tensor, torch.Tensor]:
    Xc, Xr = _as_f64(X_chosen), _as_f64(X_rejected)
    if Xc.shape != Xr.shape or Xc.ndim != 2:
        raise ValueError(f"chosen and rejected features must both be [n, d]; got {tuple(Xc.shape)}, {tuple(Xr.shape)}")
    if Xc.shape[0] < 1:
        raise ValueError("no preference pairs to fit on")
    if not bool(torch.isfinite(Xc).all() and torch.isfinite(Xr).all()):
        raise ValueError("features hold non-finite values")
    return Xc, Xr


def cell_levels(n_levels: int) -> torch.Tensor:
    """[K] midpoints (k - 0.5) / K of K equal cells of (0, 1)."""
    if n_levels < 2:
        raise ValueError(f"n_levels must be >= 2, got {n_levels}")
    return (torch.arange(n_levels, dtype=torch.float64) + 0.5) / n_levels


def normal_cell_quantiles(n_levels: int) -> torch.Tensor:
    """[K] standard-normal quantile values at :func:`cell_levels` such that the
    ``RewardDistribution`` they make has mean 0 and variance 1 exactly: E[Z | Z in cell k]
    = K (phi(z_{k-1}) - phi(z_k)), scaled by one constant (symmetry keeps the mean at 0)."""
    edges = torch.linspace(0, 1, n_levels + 1, dtype=torch.float64)
    z = torch.special.ndtri(edges)  # -inf .. inf
    phi = torch.where(torch.isfinite(z), torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi), torch.zeros_like(z))
    vals = n_levels * (phi[:-1] - phi[1:])
    var = RewardDistribution(values=vals, levels=cell_levels(n_levels), kind="quantile").variance()
    return vals / var.sqrt()


def discrete_cell_quantiles(probs: torch.Tensor, atoms: torch.Tensor, n_levels: int) -> torch.Tensor:
    """[..., K] cell averages of the quantile function of the discrete distribution with
    ``probs`` [..., J] on sorted ``atoms`` [J]: (1/|cell|) integral of Q over each cell, read
    off G(u) = integral_0^u Q = sum_j a_j clamp(min(u, C_j) - C_{j-1}, 0) at the cell edges
    (C_j the cumulative probabilities)."""
    C = probs.cumsum(-1)
    C = C / C[..., -1:]  # rounding: the last cumulative is 1
    lo = torch.cat([torch.zeros_like(C[..., :1]), C[..., :-1]], -1)
    u = torch.linspace(0, 1, n_levels + 1, dtype=probs.dtype, device=probs.device)
    G = ((torch.minimum(u[:, None], C[..., None, :]) - lo[..., None, :]).clamp_min(0) * atoms).sum(-1)  # [..., K + 1]
    return (G[..., 1:] - G[..., :-1]) * n_levels


class _DPLBase:
    """What both heads share: validation, standardisation, the L-BFGS loop, the raw-unit fold."""

    def _standardise(self, Xc: torch.Tensor, Xr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        X = torch.cat([Xc, Xr])
        if self.standardize:
            return standardizer(X)
        return torch.zeros(X.shape[1], dtype=torch.float64), torch.ones(X.shape[1], dtype=torch.float64)

    def _check_common(self) -> None:
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")

    def _lbfgs(self, params: list[torch.Tensor], objective) -> list[float]:
        history: list[float] = []
        opt = torch.optim.LBFGS(params, max_iter=self.max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = objective()
            loss.backward()
            history.append(float(loss.detach()))
            return loss

        opt.step(closure)
        if not all(math.isfinite(h) for h in history):
            raise FloatingPointError(f"{type(self).__name__}: the loss became non-finite during fitting")
        return history

    @staticmethod
    def _fold(W: torch.Tensor, b: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear maps on standardised features (x - mean) / scale -> the same maps on raw x."""
        coef = W / scale
        return coef, b - coef @ mean

    def _linear(self, X: Any) -> torch.Tensor:
        X = _as_f64(X)
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[1]:
            raise ValueError(f"features must be [n, {self.coef_.shape[1]}], got {tuple(X.shape)}")
        return X @ self.coef_.T + self.intercept_


class MeanVarianceDPLHeads(_DPLBase):
    """Mean-and-variance DPL: U(x) ~ N(w^T x, exp(v^T x + c)^2) from preference pairs.

    Args:
        l2: (l2 / 2)(||w||^2 + ||v||^2 + c^2) on standardised features (the c term fixes the
            otherwise free utility scale; see the module docstring).
        variance_penalty: + this x mean(sigma_c^2 + sigma_r^2) (0: off, as the paper's default).
        max_iter: L-BFGS iterations.
        standardize: fit on (x - mean) / spread (folded into ``coef_`` / ``intercept_``).
        n_levels: quantile cells of ``predict_dist``.
        seed: unused by the deterministic fit (kept so every head takes one); recorded.

    Fitted: ``coef_`` [2, d] (row 0: mu, row 1: log sigma, raw features), ``intercept_`` [2]
    (mu's is 0), ``loss_history_``, ``train_accuracy_`` (mu_c > mu_r), ``n_features_in_``.
    """

    def __init__(self, l2: float = 1e-2, variance_penalty: float = 0.0, max_iter: int = 500, standardize: bool = True,
                 n_levels: int = 100, seed: int = 0) -> None:
        self.l2 = l2
        self.variance_penalty = variance_penalty
        self.max_iter = max_iter
        self.standardize = standardize
        self.n_levels = n_levels
        self.seed = seed

    @staticmethod
    def pair_log_prob(mu_c: torch.Tensor, sig_c: torch.Tensor, mu_r: torch.Tensor, sig_r: torch.Tensor) -> torch.Tensor:
        """log P(chosen > rejected) = log Phi((mu_c - mu_r) / sqrt(sigma_c^2 + sigma_r^2))."""
        return torch.special.log_ndtr((mu_c - mu_r) / torch.sqrt(sig_c * sig_c + sig_r * sig_r))

    def fit(self, X_chosen: Any, X_rejected: Any) -> "MeanVarianceDPLHeads":
        self._check_common()
        if not self.variance_penalty >= 0:
            raise ValueError(f"variance_penalty must be >= 0, got {self.variance_penalty}")
        cell_levels(self.n_levels)
        Xc, Xr = _check_pairs(X_chosen, X_rejected)
        mean, scale = self._standardise(Xc, Xr)
        Zc, Zr = (Xc - mean) / scale, (Xr - mean) / scale
        d = Zc.shape[1]
        W = torch.zeros(2, d, dtype=torch.float64, requires_grad=True)  # mu, log sigma
        c = torch.zeros(1, dtype=torch.float64, requires_grad=True)

        def objective() -> torch.Tensor:
            mu_c, mu_r = Zc @ W[0], Zr @ W[0]
            sc, sr = torch.exp(Zc @ W[1] + c), torch.exp(Zr @ W[1] + c)
            loss = -self.pair_log_prob(mu_c, sc, mu_r, sr).mean() + 0.5 * self.l2 * ((W * W).sum() + (c * c).sum())
            if self.variance_penalty > 0:
                loss = loss + self.variance_penalty * (sc * sc + sr * sr).mean()
            return loss

        self.loss_history_ = self._lbfgs([W, c], objective)
        self.coef_, self.intercept_ = self._fold(W.detach(), torch.cat([torch.zeros(1, dtype=torch.float64), c.detach()]),
                                                 mean, scale)
        self.intercept_[0] = 0.0  # the mean's intercept cancels in every comparison; fix it at 0
        self.n_features_in_ = d
        mu_c, mu_r = self.predict_params(Xc)[0], self.predict_params(Xr)[0]
        self.train_accuracy_ = float((mu_c > mu_r).double().mean())
        return self

    def predict_params(self, X: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu [n], sigma [n]) of each response's utility."""
        out = self._linear(X)
        return out[:, 0], torch.exp(out[:, 1])

    def predict_pair_proba(self, X_a: Any, X_b: Any) -> torch.Tensor:
        """[n] P(a > b) under the model."""
        (ma, sa), (mb, sb) = self.predict_params(X_a), self.predict_params(X_b)
        return torch.exp(self.pair_log_prob(ma, sa, mb, sb))

    def predict_dist(self, X: Any) -> RewardDistribution:
        """[n, K] the normal utility as quantiles at :func:`cell_levels` (exact mean and variance)."""
        mu, sigma = self.predict_params(X)
        vals = mu[:, None] + sigma[:, None] * normal_cell_quantiles(self.n_levels)
        return RewardDistribution(values=vals, levels=cell_levels(self.n_levels), kind="quantile")


class CategoricalDPLHeads(_DPLBase):
    """Categorical DPL: U(x) on ``n_bins`` fixed atoms, p(x) = softmax(W x + b), from pairs.

    Args:
        n_bins: J atoms, linspace(support_min, support_max, J) (paper: 10 on [0, 1]).
        l2: (l2 / 2) ||W||^2 on standardised features (the logit intercepts are free).
        entropy_weight: weight of the entropy bonus on the batch-mean distribution (paper: 0.1).
        max_iter: L-BFGS iterations.
        standardize: fit on (x - mean) / spread (folded into ``coef_`` / ``intercept_``).
        init_std: std of the random initial logit weights (a start at exactly 0 is a saddle
            where every bin moves alike).
        support_min, support_max: the atoms' range; the utility scale is arbitrary, [0, 1]
            as the paper.
        n_levels: quantile cells of ``predict_dist``.
        seed: seeds the initial logit weights.

    Fitted: ``coef_`` [J, d], ``intercept_`` [J] (raw features), ``atoms_`` [J],
    ``loss_history_``, ``train_accuracy_`` (mean utility of chosen > rejected), ``n_features_in_``.
    """

    def __init__(self, n_bins: int = 10, l2: float = 1e-2, entropy_weight: float = 0.1, max_iter: int = 500,
                 standardize: bool = True, init_std: float = 0.01, support_min: float = 0.0, support_max: float = 1.0,
                 n_levels: int = 100, seed: int = 0) -> None:
        self.n_bins = n_bins
        self.l2 = l2
        self.entropy_weight = entropy_weight
        self.max_iter = max_iter
        self.standardize = standardize
        self.init_std = init_std
        self.support_min = support_min
        self.support_max = support_max
        self.n_levels = n_levels
        self.seed = seed

    @staticmethod
    def comparison_matrix(n_bins: int) -> torch.Tensor:
        """T [J, J]: T[j, i] = P(a beats b | a on atom j, b on atom i) = 1 (j > i), 0.5 (j = i), 0."""
        j = torch.arange(n_bins)
        return (j[:, None] > j[None, :]).double() + 0.5 * torch.eye(n_bins, dtype=torch.float64)

    def fit(self, X_chosen: Any, X_rejected: Any) -> "CategoricalDPLHeads":
        self._check_common()
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        if not self.entropy_weight >= 0:
            raise ValueError(f"entropy_weight must be >= 0, got {self.entropy_weight}")
        if not self.support_max > self.support_min:
            raise ValueError(f"support_max must be > support_min, got [{self.support_min}, {self.support_max}]")
        cell_levels(self.n_levels)
        Xc, Xr = _check_pairs(X_chosen, X_rejected)
        mean, scale = self._standardise(Xc, Xr)
        Zc, Zr = (Xc - mean) / scale, (Xr - mean) / scale
        d, J = Zc.shape[1], self.n_bins
        T = self.comparison_matrix(J)
        g = torch.Generator().manual_seed(self.seed)
        W = (torch.randn(J, d, generator=g, dtype=torch.float64) * self.init_std).requires_grad_(True)
        b = torch.zeros(J, dtype=torch.float64, requires_grad=True)

        def objective() -> torch.Tensor:
            pc, pr = torch.softmax(Zc @ W.T + b, -1), torch.softmax(Zr @ W.T + b, -1)
            p_win = ((pc @ T) * pr).sum(-1)
            loss = -torch.log(p_win.clamp_min(1e-300)).mean() + 0.5 * self.l2 * (W * W).sum()
            if self.entropy_weight > 0:
                m = torch.cat([pc, pr]).mean(0)
                loss = loss + self.entropy_weight * (m * torch.log(m.clamp_min(1e-300))).sum()
            return loss

        self.loss_history_ = self._lbfgs([W, b], objective)
        self.coef_, self.intercept_ = self._fold(W.detach(), b.detach(), mean, scale)
        self.atoms_ = torch.linspace(self.support_min, self.support_max, J, dtype=torch.float64)
        self.n_features_in_ = d
        self.train_accuracy_ = float((self.predict_mean(Xc) > self.predict_mean(Xr)).double().mean())
        return self

    def predict_proba(self, X: Any) -> torch.Tensor:
        """[n, J] each response's probabilities over the atoms."""
        return torch.softmax(self._linear(X), -1)

    def predict_mean(self, X: Any) -> torch.Tensor:
        """[n] the utility's mean, sum_j p_j a_j."""
        return self.predict_proba(X) @ self.atoms_

    def predict_pair_proba(self, X_a: Any, X_b: Any) -> torch.Tensor:
        """[n] P(a > b) = p(a)^T T p(b)."""
        pa, pb = self.predict_proba(X_a), self.predict_proba(X_b)
        return ((pa @ self.comparison_matrix(pa.shape[-1])) * pb).sum(-1)

    def predict_dist(self, X: Any) -> RewardDistribution:
        """[n, K] the discrete utility as quantile-cell averages (exact mean; see the module docstring)."""
        vals = discrete_cell_quantiles(self.predict_proba(X), self.atoms_, self.n_levels)
        return RewardDistribution(values=vals, levels=cell_levels(self.n_levels), kind="quantile")
