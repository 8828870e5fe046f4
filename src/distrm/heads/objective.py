"""Numerics shared by the heads, their solvers and evaluation: the pinball (check) loss, the
weighted quantile (the intercept-only model of a quantile head), and per-feature
standardisation (what makes a penalty mean the same on every backbone)."""

from __future__ import annotations

import torch


def pinball(r: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """rho_tau(r) = max(tau r, (tau - 1) r), elementwise; tau broadcasts."""
    return torch.maximum(tau * r, (tau - 1) * r)


def weighted_quantile(y: torch.Tensor, w: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """[K] a minimiser of sum_i w_i rho_tau(y_i - b) (the lower weighted tau-quantile)."""
    order = torch.argsort(y)
    cw = torch.cumsum(w[order], 0) / w.sum()
    pos = torch.searchsorted(cw, tau.to(cw.dtype) - 1e-12).clamp(max=len(y) - 1)
    return y[order][pos]


def standardizer(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [d], scale [d]) of the rows of X; a constant column gets scale 1 (its standardised
    value is 0, so its coefficient is 0 under any penalty)."""
    mean = X.mean(0)
    return mean, safe_scale((X - mean).pow(2).mean(0).sqrt())


def safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """Column spreads with the constant columns (spread ~0 relative to the largest) set to 1."""
    tiny = 1e-12 * float(scale.max()) if scale.numel() else 0.0
    return torch.where(scale > max(tiny, 1e-300), scale, torch.ones_like(scale))
