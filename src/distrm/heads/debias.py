"""Verbosity debiasing as in ArmoRM, applied to whole attribute distributions.

Reward models love long answers. ArmoRM removes that by subtracting from each attribute a
multiple of a verbosity signal v, with the multiple chosen per attribute:

    Q~_m(tau | x, y) = Q_m(tau | x, y) - p_m * v(x, y)

p_m is the *smallest* value on the grid {0, .01, .025, .05, .10, ..., .95} such that
Spearman(mean_m - p_m * v, v) <= threshold (default 0.03) on a reference preference set
(chosen and rejected responses pooled). Subtracting a per-input constant shifts the
distribution and keeps its shape (spread, skew, modes), so the quantile structure is kept.

The verbosity signal v is either one of the model's attributes (e.g. HelpSteer's
"verbosity", whose own p is then 1 so it drops out, as in ArmoRM) or, when no such
attribute is trained, the response length on the attribute scale:
v = min(1, log1p(words) / log1p(2048)).

Unlike ArmoRM's script (its matrix is computed but never used or saved), p is stored in
the model and applied at every score.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

GRID = np.array([0.0, 0.01, 0.025] + [round(x, 2) for x in np.arange(0.05, 0.951, 0.05)])
LENGTH_CAP_WORDS = 2048


def length_signal(responses: Sequence[str]) -> torch.Tensor:
    """v = min(1, log1p(words) / log1p(2048)) per response, on the [0, 1] attribute scale."""
    words = torch.tensor([len(r.split()) for r in responses], dtype=torch.float64)
    return (torch.log1p(words) / math.log1p(LENGTH_CAP_WORDS)).clamp(max=1.0)


def _is_constant(x: np.ndarray) -> bool:
    """Constant up to float rounding: a spread below 1e-9 of the values' magnitude (heads whose
    coefficients are all zero give means that differ by ~1e-16 after the quantile sort)."""
    return bool(np.ptp(x) <= 1e-9 * max(1.0, float(np.abs(x).max()))) if len(x) else True


def fit_debias(
    attribute_means: torch.Tensor, verbosity: torch.Tensor, threshold: float = 0.03, verbosity_index: int | None = None
) -> torch.Tensor:
    """Per-attribute penalties p [M] from pooled reference responses.

    Args:
        attribute_means: [n, M] attribute means of the reference responses.
        verbosity: [n] the verbosity signal of the same responses.
        verbosity_index: attribute that *is* verbosity (its p is 1), if any.
    """
    a = attribute_means.double().cpu().numpy()
    v = verbosity.double().cpu().numpy()
    if a.shape[0] != v.shape[0]:
        raise ValueError("attribute means and verbosity signal disagree on the number of responses")
    if _is_constant(v):
        return torch.zeros(a.shape[1], dtype=torch.float64)
    p = np.zeros(a.shape[1])
    for m in range(a.shape[1]):
        if verbosity_index is not None and m == verbosity_index:
            p[m] = 1.0
            continue
        if _is_constant(a[:, m]):  # a flat attribute: a penalty would turn it into a pure length rule
            continue
        p[m] = GRID[-1]
        for cand in GRID:
            rho = spearmanr(a[:, m] - cand * v, v).statistic
            if rho <= threshold:
                p[m] = cand
                break
    return torch.tensor(p, dtype=torch.float64)
