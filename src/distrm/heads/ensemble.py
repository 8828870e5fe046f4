"""Ensembles of heads on frozen features: epistemic uncertainty from disagreement.

* :class:`BTEnsembleHeads` -- N linear Bradley-Terry heads r_i(x) = w_i^T phi(x) trained
  together in ONE pass on the summed loss (uncertainty-aware RLHF paper, section 4:
  "parallel reward heads" on a frozen foundation model):

      L(W) = sum_i L_i(w_i),
      L_i(w_i) = (1/n) sum_p c_ip softplus(-(w_i^T (phi_c,p - phi_r,p))) + (l2 / 2) ||w_i||^2

  with c_ip = 1, or bootstrap counts (c_i. ~ Multinomial(n, 1/n)) when ``bootstrap=True``.
  dL/dw_i = dL_i/dw_i, so the summed loss trains N *independent* models in one pass; they
  differ through their initialisation (and the bootstrap), and -- with Adam on mini-batches
  for a finite number of epochs, the paper's "stochastic, incomplete optimisation" -- through
  how far each got from its start. With ``optimizer="lbfgs"`` (full batch, to convergence)
  every member reaches the unique optimum of its own strictly convex L_i, so members then
  differ only if ``bootstrap=True``. ``init="single_head"`` first fits one BT head and
  attaches the N heads at it plus N(0, init_std^2) noise (the paper's recipe; fine-tuning
  the backbone before that is a separate command, not done here).
  There is no intercept: it cancels in r_c - r_r, so BT cannot identify it.

  Diversity with epistemic meaning. A linear BT head with an L2 penalty is strictly convex:
  without the bootstrap, converged members from any starts are the same head (correlation
  1.000). Two remedies, combinable with the bootstrap and with each other, replace the
  penalty's centre 0 by a per-member centre m_i (standardised-weight units):

      L_i(w_i) = (1/n) sum_p c_ip softplus(-(w_i^T D_p)) + (l2 / 2) ||w_i - m_i||^2,
      m_i = a_i + beta * v_i,     a_i, v_i ~ N(0, s^2 I) independent, fixed before training,

  * ``anchored=True`` (Pearce et al. 2020, "Uncertainty in Neural Networks: Approximately
    Bayesian Ensembling"): anchor a_i drawn from the prior N(0, s^2 I); member i's
    regulariser pulls toward its own anchor instead of 0. The Gaussian prior implied by the
    penalty of the mean loss is N(0, 1/(n l2) I), hence the default s = 1/sqrt(n l2); with that
    prior the anchored members of a linear-Gaussian model are exact posterior draws.
  * ``prior_scale=beta > 0`` (Osband et al. 2018, "Randomized Prior Functions"): member i is
    f_i(x) = g_i(x) + beta * p_i(x) with a trainable g_i(x) = theta_i^T x (penalised towards
    0) and a fixed random linear prior p_i(x) = v_i^T x. With w_i = theta_i + beta v_i,
    ||theta_i||^2 = ||w_i - beta v_i||^2: for linear heads the randomized prior *is* anchoring
    at beta v_i. The saved head is the sum, coef_ = theta_i + beta v_i (prior folded in), so
    the model stays N linear heads.

  In directions the training differences D never span (features that are constant, or that
  cancel in every pair), the data say nothing: plain and bootstrap members all sit at 0
  there, anchored / prior members at their own m_i -- disagreement exactly where the data
  are silent. Along spanned directions far from the data, every variant's member variance
  grows with the distance (the spread of w_i times the feature norm).
  With ``init="random"`` a member starts at m_i + N(0, init_std^2) noise.

  Collapse check: after ``fit``, ``member_correlation_`` is the mean pairwise Pearson
  correlation of the members' rewards on the training features (chosen and rejected), and
  ``member_disagreement_`` the mean across inputs of the across-member variance divided by
  the variance over inputs of the ensemble-mean reward; a warning is logged when the
  correlation exceeds ``collapse_corr``.

* :class:`BootstrapQuantileHeads` -- B quantile-head models (``QuantileHeads``), each fit on
  a bootstrap resample of the rated *items* (an item keeps all its raters: raters of one
  item are not independent draws, so the item is the resampling unit). Per input and
  attribute, member b predicts a distribution with exact mean m_b and variance v_b
  (:class:`RewardDistribution`, piecewise-linear quantile function). The equal-weight
  probability mixture of the members has, by the law of total variance,

      Var = E_b[v_b] + Var_b[m_b]        (aleatoric + epistemic; Var_b with 1/B)

  ``decompose`` computes ``total`` independently, as E_b[E_b-second moment] - (E_b m_b)^2,
  so the identity is a check, not a definition.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from distrm.distribution import RewardDistribution, default_levels
from distrm.heads.targets import as_long_targets

logger = logging.getLogger(__name__)

Optimizer = Literal["adam", "lbfgs"]
Init = Literal["random", "single_head"]


def _as_f64(X: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(X), dtype=torch.float64)


def bootstrap_counts(n: int, n_members: int, generator: torch.Generator) -> torch.Tensor:
    """[N, n] multiplicities of a with-replacement resample of size n per member (rows sum to n)."""
    idx = torch.randint(0, n, (n_members, n), generator=generator)
    counts = torch.zeros(n_members, n, dtype=torch.float64)
    return counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


class BTEnsembleHeads:
    """N linear Bradley-Terry heads trained in one pass on the summed loss (sklearn-like:
    ``fit`` returns self, learned attributes end in ``_``).

    Args:
        n_members: N, ensemble size (paper: 10).
        bootstrap: resample the pairs per member (weights = multinomial counts).
        l2: ridge penalty per member, (l2 / 2) ||w_i||^2.
        lr, epochs, batch_size: Adam settings (``batch_size=None``: full batch).
        init_std: std of the independent N(0, init_std^2) initialisation of each weight
            (for ``init="single_head"``: of the noise added to the single head's weights).
        seed: seeds the initialisation, the bootstrap and the mini-batch order.
        optimizer: "adam" (mini-batch, finite epochs) or "lbfgs" (full batch, to convergence).
        init: "random" or "single_head" (fit one head first, attach the N heads at it).
        max_iter: L-BFGS iterations (also for the single head).
        standardize: train on features divided by their spread (so ``l2`` and ``init_std`` mean
            the same on every backbone); folded into ``coef_``, which acts on raw features.
        anchored: anchored ensemble (Pearce et al. 2020): member i's L2 penalty pulls toward
            its own anchor a_i ~ N(0, prior_std^2 I) instead of 0.
        prior_scale: beta of the randomized prior functions (Osband et al. 2018): member i =
            trainable linear head + beta * fixed random linear prior v_i ~ N(0, prior_std^2 I);
            folded into ``coef_``. 0 = off.
        prior_std: std of the anchors / prior weights (standardised units); None = the prior
            implied by the penalty, 1 / sqrt(n * l2).
        collapse_corr: log a collapse warning when the members' mean pairwise reward
            correlation on the training features is above this.
    """

    def __init__(
        self,
        n_members: int = 10,
        bootstrap: bool = False,
        l2: float = 1e-3,
        lr: float = 1e-2,
        epochs: int = 30,
        batch_size: int | None = 256,
        init_std: float = 0.05,
        seed: int = 0,
        optimizer: Optimizer = "adam",
        init: Init = "random",
        max_iter: int = 500,
        standardize: bool = True,
        anchored: bool = False,
        prior_scale: float = 0.0,
        prior_std: float | None = None,
        collapse_corr: float = 0.99,
    ) -> None:
        self.n_members = n_members
        self.bootstrap = bootstrap
        self.l2 = l2
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.init_std = init_std
        self.seed = seed
        self.optimizer = optimizer
        self.init = init
        self.max_iter = max_iter
        self.standardize = standardize
        self.anchored = anchored
        self.prior_scale = prior_scale
        self.prior_std = prior_std
        self.collapse_corr = collapse_corr

    # ------------------------------------------------------------------ loss
    def _member_losses(self, W: torch.Tensor, D: torch.Tensor, C: torch.Tensor, M: torch.Tensor | None = None) -> torch.Tensor:
        """[N] per-member losses L_i on pairs D [n, d] with weights C [N, n], penalty centres M [N, d]."""
        S = D @ W.T  # [n, N] margins r_c - r_r per member
        data = (C.T * F.softplus(-S)).sum(0) / D.shape[0]
        R = W if M is None else W - M
        return data + 0.5 * self.l2 * (R * R).sum(1)

    def member_losses(self, X_chosen: Any, X_rejected: Any) -> torch.Tensor:
        """[N] each member's own objective L_i (its bootstrap weights included) at the fit."""
        D = (_as_f64(X_chosen) - _as_f64(X_rejected)) / self.feature_scale_
        return self._member_losses(self.coef_ * self.feature_scale_, D, self.counts_, self.penalty_centre_)

    def member_gradients(self, X_chosen: Any, X_rejected: Any) -> torch.Tensor:
        """[N, d] dL_i/dw_i at the fitted weights (~0 when each member reached its optimum)."""
        D = (_as_f64(X_chosen) - _as_f64(X_rejected)) / self.feature_scale_
        W = (self.coef_ * self.feature_scale_).requires_grad_(True)
        self._member_losses(W, D, self.counts_, self.penalty_centre_).sum().backward()
        return W.grad.detach()  # with respect to the standardised weights

    # ------------------------------------------------------------------ fit
    def fit(self, X_chosen: Any, X_rejected: Any) -> "BTEnsembleHeads":
        Xc, Xr = _as_f64(X_chosen), _as_f64(X_rejected)
        if Xc.shape != Xr.shape or Xc.ndim != 2:
            raise ValueError(f"chosen and rejected features must both be [n, d]; got {tuple(Xc.shape)}, {tuple(Xr.shape)}")
        if Xc.shape[0] < 1:
            raise ValueError("no preference pairs to fit on")
        if self.n_members < 1:
            raise ValueError("n_members must be >= 1")
        if self.optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {self.optimizer!r}")
        if self.init not in ("random", "single_head"):
            raise ValueError(f"init must be 'random' or 'single_head', got {self.init!r}")
        if not self.prior_scale >= 0:
            raise ValueError(f"prior_scale must be >= 0, got {self.prior_scale}")
        diverse_prior = self.anchored or self.prior_scale > 0
        if diverse_prior and self.prior_std is None and not self.l2 > 0:
            raise ValueError("anchored / prior_scale need l2 > 0 (the penalty is what pulls toward the anchor) or an explicit prior_std")
        if self.prior_std is not None and not self.prior_std > 0:
            raise ValueError(f"prior_std must be > 0, got {self.prior_std}")
        from distrm.heads.objective import standardizer

        scale = standardizer(torch.cat([Xc, Xr]))[1] if self.standardize else torch.ones(Xc.shape[1], dtype=torch.float64)
        D = (Xc - Xr) / scale
        n, d = D.shape
        N = self.n_members
        g = torch.Generator().manual_seed(self.seed)
        C = bootstrap_counts(n, N, g) if self.bootstrap else torch.ones(N, n, dtype=torch.float64)

        W0 = torch.randn(N, d, generator=g, dtype=torch.float64) * self.init_std
        # penalty centres m_i = a_i + beta v_i (zeros: the plain ridge penalty)
        M = torch.zeros(N, d, dtype=torch.float64)
        s_prior = float(self.prior_std) if self.prior_std is not None else (1.0 / float(n * self.l2) ** 0.5 if diverse_prior else 0.0)
        g_prior = torch.Generator().manual_seed(self.seed + 7919)  # own stream: the other draws stay as without it
        self.anchor_coef_ = self.prior_coef_ = None
        if self.anchored:
            A = torch.randn(N, d, generator=g_prior, dtype=torch.float64) * s_prior
            M = M + A
            self.anchor_coef_ = A / scale  # raw units
        if self.prior_scale > 0:
            V = torch.randn(N, d, generator=g_prior, dtype=torch.float64) * s_prior
            M = M + self.prior_scale * V
            self.prior_coef_ = V / scale  # raw units; the prior function is x -> prior_scale * prior_coef_ x
        self.prior_std_ = s_prior
        if self.init == "random":
            W0 = W0 + M  # start at the centre of the member's own penalty
        if self.init == "single_head":
            from distrm.heads.baselines import BTHead

            single = BTHead(l2=self.l2, max_iter=self.max_iter, standardize=self.standardize).fit(Xc, Xr)
            self.single_head_coef_ = single.coef_.clone()
            W0 = W0 + (single.coef_ * scale)[None, :]
        self.init_coef_ = W0 / scale  # raw units, like coef_

        W = W0.clone().requires_grad_(True)
        history: list[float] = []
        if self.optimizer == "lbfgs":
            opt = torch.optim.LBFGS(
                [W], max_iter=self.max_iter, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
            )

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = self._member_losses(W, D, C, M).sum()
                loss.backward()
                history.append(float(loss.detach()) / N)
                return loss

            opt.step(closure)
        else:
            opt = torch.optim.Adam([W], lr=self.lr)
            bs = n if not self.batch_size else min(self.batch_size, n)
            for _ in range(self.epochs):
                perm = torch.randperm(n, generator=g)
                for s in range(0, n, bs):
                    b = perm[s : s + bs]
                    opt.zero_grad()
                    # mini-batch estimate of sum_i L_i (weights of the batch rows, mean over the batch)
                    S = D[b] @ W.T
                    R = W - M
                    loss = (C[:, b].T * F.softplus(-S)).sum() / len(b) + 0.5 * self.l2 * (R * R).sum()
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    history.append(float(self._member_losses(W, D, C, M).mean()))
        self.coef_ = W.detach() / scale  # prior functions included (w_i = theta_i + beta v_i)
        self.feature_scale_ = scale
        self.counts_ = C
        self.penalty_centre_ = M  # [N, d] m_i, standardised units
        self.loss_history_ = history
        with torch.no_grad():
            S = D @ W.detach().T
            self.train_accuracy_ = ((S > 0).double().mean(0))  # [N], on all pairs (not the resample)
        self.n_features_in_ = d
        self._check_collapse(torch.cat([Xc, Xr]))
        return self

    def _check_collapse(self, X: torch.Tensor) -> None:
        from distrm.eval.disagreement import member_diversity

        N = self.n_members
        div = member_diversity(self.predict(X))
        self.member_correlation_ = div["mean_pairwise_corr"]
        spread = div["reward_std"] ** 2
        self.member_disagreement_ = div["mean_variance"] / spread if spread > 0 else float("nan")
        if N > 1 and not self.member_correlation_ <= self.collapse_corr:
            logger.warning(
                "ensemble collapse: the %d members' rewards correlate at %.4f (mean pairwise, training "
                "features; threshold %.2f), member variance / reward variance = %.2g; their disagreement "
                "carries little epistemic information. Use bootstrap=True and/or anchored=True or "
                "prior_scale > 0 (anchored / randomized-prior ensembles)%s.",
                N, self.member_correlation_, self.collapse_corr, self.member_disagreement_,
                "" if self.bootstrap else "; bootstrap is off",
            )

    def predict(self, X: Any) -> torch.Tensor:
        """[n, N] member rewards."""
        return _as_f64(X) @ self.coef_.T


# ============================================================================ bootstrap QRM
def _default_quantile_heads(levels: torch.Tensor, alpha: float, device: str | None) -> Any:
    from distrm.heads.quantile import QuantileHeads

    return QuantileHeads(levels=levels, alpha=alpha, device=device)


class BootstrapQuantileHeads:
    """B quantile-head models on bootstrap resamples of the rated items: aleatoric spread
    (within a member) and epistemic spread (between members) at once.

    Args:
        n_boot: B, number of bootstrap members.
        levels: quantile levels (default: 19, 0.05..0.95 as QRM).
        alpha: L1 penalty passed to ``QuantileHeads``.
        seed: seeds the resampling.
        base: ``f(levels, alpha, device) -> estimator`` with ``fit(X, y, attribute=, index=,
            n_attributes=)`` and ``coef_ [M, K, d]``, ``intercept_ [M, K]`` (default:
            :class:`distrm.heads.quantile.QuantileHeads`).
        device: passed to the base estimator.
    """

    def __init__(
        self,
        n_boot: int = 10,
        levels: torch.Tensor | list[float] | None = None,
        alpha: float = 0.003,
        seed: int = 0,
        base: Callable[[torch.Tensor, float, str | None], Any] | None = None,
        device: str | None = None,
    ) -> None:
        self.n_boot = n_boot
        self.levels = levels
        self.alpha = alpha
        self.seed = seed
        self.base = base
        self.device = device

    def fit(
        self, X: Any, y: Any, attribute: Any = None, index: Any = None, n_attributes: int | None = None, sample_weight: Any = None
    ) -> "BootstrapQuantileHeads":
        """``sample_weight [L]`` (long format only): the weight of each target row, e.g. the
        rater counts of :func:`distrm.training.qrm.build_targets`' aggregated distinct targets;
        without it, aggregated targets would count every distinct score once."""
        X_t = _as_f64(X)
        t = as_long_targets(X_t.shape[0], y, attribute, index, n_attributes)
        w = None
        if sample_weight is not None:
            if attribute is None:
                raise ValueError("sample_weight needs long-format targets (y, attribute, index)")
            w = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64))
            if w.shape != t.y.shape:
                raise ValueError(f"sample_weight must be [L]={tuple(t.y.shape)}, got {tuple(w.shape)}")
        levels = default_levels(19, torch.float64) if self.levels is None else torch.as_tensor(self.levels, dtype=torch.float64)
        make = self.base or _default_quantile_heads
        items = torch.unique(t.index)
        # rows of each item, so that a resampled item brings all its raters along
        order = torch.argsort(t.index, stable=True)
        starts = torch.searchsorted(t.index[order], items)
        ends = torch.searchsorted(t.index[order], items, right=True)
        g = torch.Generator().manual_seed(self.seed)
        coefs, intercepts, draws = [], [], []
        for _ in range(self.n_boot):
            pick = torch.randint(0, len(items), (len(items),), generator=g)
            rows = torch.cat([order[starts[j] : ends[j]] for j in pick.tolist()])
            est = make(levels, self.alpha, self.device)
            kw = {} if w is None else {"sample_weight": w[rows]}
            est.fit(X_t, t.y[rows], attribute=t.attribute[rows], index=t.index[rows], n_attributes=t.n_attributes, **kw)
            coefs.append(torch.as_tensor(est.coef_).double().cpu())
            intercepts.append(torch.as_tensor(est.intercept_).double().cpu())
            draws.append(items[pick])
        self.coef_ = torch.stack(coefs)  # [B, M, K, d]
        self.intercept_ = torch.stack(intercepts)  # [B, M, K]
        self.levels_ = levels
        self.boot_items_ = draws  # item ids drawn per member (with repeats)
        self.n_features_in_ = X_t.shape[1]
        return self

    def predict(self, X: Any) -> torch.Tensor:
        """[n, B, M, K] member quantiles, sorted along K (monotone rearrangement)."""
        vals = torch.einsum("nd,bmkd->nbmk", _as_f64(X), self.coef_) + self.intercept_
        return vals.sort(dim=-1).values

    def member_distributions(self, X: Any) -> RewardDistribution:
        """Per-member distributions, values [n, M, B, K] (kind "quantile")."""
        return RewardDistribution(values=self.predict(X).transpose(1, 2), levels=self.levels_, kind="quantile")

    def decompose(self, X: Any) -> dict[str, torch.Tensor]:
        """Law-of-total-variance split per input and attribute, each [n, M]:

        mean = E_b[m_b]; aleatoric = E_b[v_b]; epistemic = E_b[(m_b - mean)^2];
        total = E_b[E_b[R^2]] - mean^2 (the equal-weight mixture's exact variance)."""
        dist = self.member_distributions(X)
        m, v, m2 = dist.mean(), dist.variance(), dist.second_moment()  # [n, M, B]
        mean = m.mean(-1)
        return {
            "mean": mean,
            "total": m2.mean(-1) - mean * mean,
            "aleatoric": v.mean(-1),
            "epistemic": ((m - mean[..., None]) ** 2).mean(-1),
        }
