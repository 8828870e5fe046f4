"""Point-estimate heads on the same frozen features, for honest comparison with QRM.

* :class:`RidgeHeads` -- ArmoRM stage 1: one ridge regression per attribute on its own rows
  (raters' scores as separate targets, which for least squares equals fitting their mean
  with the count as weight), ridge alpha picked per attribute from 1e-4..1e4 on a 20%
  validation split of items. Unlike ArmoRM we fit an intercept: our features are not
  centred. Output: one value per attribute (``[n, M, 1]``).
* :class:`BTHead` -- a linear Bradley-Terry reward model r(x) = w^T phi(x), fit on
  preference pairs by L-BFGS on -log sigmoid(r_c - r_r) + l2 ||w||^2 / 2, on standardised
  features; :class:`BTHeadCV` picks l2 on held-out pair likelihood (folds hold out prompts).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from distrm.heads.objective import standardizer
from distrm.heads.targets import LongTargets, as_long_targets

ALPHA_GRID = tuple(10.0**k for k in range(-4, 5))


def _ridge_solve(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted ridge with an unpenalised intercept: centre, solve, recover the intercept."""
    sw = w / w.sum()
    xm = (sw[:, None] * X).sum(0)
    ym = (sw * y).sum()
    Xc, yc = X - xm, y - ym
    A = Xc.T @ (w[:, None] * Xc) + alpha * torch.eye(X.shape[1], dtype=X.dtype)
    coef = torch.linalg.solve(A, Xc.T @ (w * yc))
    return coef, ym - xm @ coef


class RidgeHeads:
    """Per-attribute ridge regression (sklearn-like: ``fit`` returns self, learned
    attributes end in ``_``)."""

    def __init__(self, alphas: tuple[float, ...] = ALPHA_GRID, val_fraction: float = 0.2, seed: int = 0) -> None:
        self.alphas = alphas
        self.val_fraction = val_fraction
        self.seed = seed

    def fit(self, X, y, attribute=None, index=None, n_attributes: int | None = None) -> "RidgeHeads":
        X = torch.as_tensor(np.asarray(X), dtype=torch.float64)
        t: LongTargets = as_long_targets(X.shape[0], y, attribute, index, n_attributes)
        M, d = t.n_attributes, X.shape[1]
        self.coef_ = torch.zeros(M, d, dtype=torch.float64)
        self.intercept_ = torch.zeros(M, dtype=torch.float64)
        self.alpha_ = torch.zeros(M, dtype=torch.float64)
        rng = np.random.default_rng(self.seed)
        for m in range(M):
            sel = t.attribute == m
            if not bool(sel.any()):
                raise ValueError(f"attribute {m} has no targets")
            # aggregate raters per item: mean target, count as weight
            items, inv = torch.unique(t.index[sel], return_inverse=True)
            cnt = torch.zeros(len(items), dtype=torch.float64).index_add_(0, inv, torch.ones(len(inv), dtype=torch.float64))
            ysum = torch.zeros(len(items), dtype=torch.float64).index_add_(0, inv, t.y[sel].double())
            ym, Xm = ysum / cnt, X[items]
            is_val = torch.as_tensor(rng.random(len(items)) < self.val_fraction)
            if is_val.sum() < 2 or (~is_val).sum() < 2:
                best = 1.0
            else:
                errs = []
                for a in self.alphas:
                    c, b = _ridge_solve(Xm[~is_val], ym[~is_val], cnt[~is_val], a)
                    errs.append(float((cnt[is_val] * (Xm[is_val] @ c + b - ym[is_val]) ** 2).sum()))
                best = self.alphas[int(np.argmin(errs))]
            self.coef_[m], self.intercept_[m] = _ridge_solve(Xm, ym, cnt, best)
            self.alpha_[m] = best
        self.n_features_in_ = d
        return self

    def predict(self, X) -> torch.Tensor:
        """[n, M, 1] point estimates."""
        X = torch.as_tensor(np.asarray(X), dtype=torch.float64)
        return (X @ self.coef_.T + self.intercept_).unsqueeze(-1)


class BTHead:
    """Linear Bradley-Terry reward model on frozen features, sklearn-like.

    Args:
        l2: ridge penalty (l2 / 2) ||w||^2 on the standardised weights (see ``standardize``).
        max_iter: L-BFGS iterations.
        standardize: divide each feature by its spread over the training responses (chosen and
            rejected pooled) before the penalty, so that ``l2`` means the same on every backbone;
            folded into ``coef_`` (which acts on raw features). No centring: the mean cancels in
            r_c - r_r.
    """

    def __init__(self, l2: float = 1e-3, max_iter: int = 200, standardize: bool = True) -> None:
        self.l2 = l2
        self.max_iter = max_iter
        self.standardize = standardize

    @staticmethod
    def _check(X_chosen, X_rejected) -> tuple[torch.Tensor, torch.Tensor]:
        Xc = torch.as_tensor(np.asarray(X_chosen), dtype=torch.float64)
        Xr = torch.as_tensor(np.asarray(X_rejected), dtype=torch.float64)
        if Xc.shape != Xr.shape or Xc.ndim != 2:
            raise ValueError(f"chosen and rejected features must both be [n, d]; got {tuple(Xc.shape)}, {tuple(Xr.shape)}")
        if Xc.shape[0] == 0:
            raise ValueError("no preference pairs to fit on")
        return Xc, Xr

    def fit(self, X_chosen, X_rejected) -> "BTHead":
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        Xc, Xr = self._check(X_chosen, X_rejected)
        scale = standardizer(torch.cat([Xc, Xr]))[1] if self.standardize else torch.ones(Xc.shape[1], dtype=torch.float64)
        D = (Xc - Xr) / scale
        w = torch.zeros(D.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = -F.logsigmoid(D @ w).mean() + 0.5 * self.l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.coef_ = w.detach() / scale
        self.feature_scale_ = scale
        self.train_accuracy_ = float((((Xc - Xr) @ self.coef_) > 0).double().mean())
        self.n_features_in_ = D.shape[1]
        return self

    def predict(self, X) -> torch.Tensor:
        """[n] rewards (no intercept: it cancels in every comparison)."""
        return torch.as_tensor(np.asarray(X), dtype=torch.float64) @ self.coef_


L2_GRID = tuple(10.0**k for k in range(-4, 3))


def pair_log_likelihood(coef: torch.Tensor, Xc: torch.Tensor, Xr: torch.Tensor) -> float:
    """Mean log sigmoid(r_c - r_r): the Bradley-Terry log-likelihood per pair."""
    return float(F.logsigmoid((Xc - Xr) @ coef).mean())


class BTHeadCV(BTHead):
    """:class:`BTHead` with ``l2`` chosen on held-out pair likelihood: K-fold cross-validation
    with whole prompts held out (``groups``), then a refit on every pair at the best value.

    Fitted, beside :class:`BTHead`'s: ``l2_`` (chosen), ``cv_l2s_``, ``cv_log_likelihood_``
    (mean held-out log-likelihood per pair, per grid value)."""

    def __init__(self, l2s: tuple[float, ...] = L2_GRID, cv: int = 3, max_iter: int = 200, standardize: bool = True,
                 seed: int = 0) -> None:
        super().__init__(l2=float("nan"), max_iter=max_iter, standardize=standardize)
        self.l2s = l2s
        self.cv = cv
        self.seed = seed

    def fit(self, X_chosen, X_rejected, groups=None) -> "BTHeadCV":
        from distrm.heads.cv import group_folds

        Xc, Xr = self._check(X_chosen, X_rejected)
        grid = sorted(float(v) for v in self.l2s)
        if not grid or any(not v >= 0 for v in grid):
            raise ValueError(f"l2s must be a non-empty list of values >= 0, got {self.l2s}")
        n = Xc.shape[0]
        groups = list(range(n)) if groups is None else list(groups)
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} pairs")
        fold = torch.as_tensor(group_folds(groups, self.cv, self.seed))
        ll = torch.zeros(len(grid), dtype=torch.float64)
        for f in range(int(fold.max()) + 1):
            te, tr = fold == f, fold != f
            if not bool(te.any()) or not bool(tr.any()):
                continue
            for i, l2 in enumerate(grid):
                h = BTHead(l2=l2, max_iter=self.max_iter, standardize=self.standardize).fit(Xc[tr], Xr[tr])
                ll[i] += float(F.logsigmoid((Xc[te] - Xr[te]) @ h.coef_).sum())
        ll /= n
        best = int(ll.argmax())
        self.l2_ = grid[best]
        self.cv_l2s_, self.cv_log_likelihood_ = grid, ll.tolist()
        h = BTHead(l2=self.l2_, max_iter=self.max_iter, standardize=self.standardize).fit(Xc, Xr)
        self.coef_, self.feature_scale_ = h.coef_, h.feature_scale_
        self.train_accuracy_, self.n_features_in_ = h.train_accuracy_, h.n_features_in_
        return self
