"""The pinball (check) loss, shared by the quantile heads, their solvers and evaluation."""

from __future__ import annotations

import torch


def pinball(r: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """rho_tau(r) = max(tau r, (tau - 1) r), elementwise; tau broadcasts."""
    return torch.maximum(tau * r, (tau - 1) * r)
