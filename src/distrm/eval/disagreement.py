"""Ensemble disagreement per pair, per section: the uncertainty-aware RLHF paper's Figure 6.

For pair p with member rewards r_i(chosen_p) and r_i(rejected_p), i = 1..N:

* top row: the sample variance across members of the chosen reward,
  s^2_c(p) = 1/(N-1) sum_i (r_i(c_p) - mean_i r_i(c_p))^2;
* bottom row: the sample variance of the margin d_i(p) = r_i(c_p) - r_i(r_p).
  Members that were translations of one another (r_i = r + a_i) would give s^2_d = 0 for
  every pair (a Dirac at zero); mass away from zero means they rank differently.

Also reported: the share of pairs on which the members do not all agree on the sign of the
margin (some member prefers the rejected response while another prefers the chosen one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

STAT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _summary(x: np.ndarray) -> dict[str, float]:
    q = np.quantile(x, STAT_QUANTILES)
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "min": float(x.min()),
        "max": float(x.max()),
        **{f"q{int(round(t * 100)):02d}": float(v) for t, v in zip(STAT_QUANTILES, q)},
    }


def ensemble_disagreement(
    chosen_members: Any,
    rejected_members: Any,
    sections: Sequence[str],
    png_path: str | Path | None = None,
    title: str = "Ensemble disagreement per pair",
    section_order: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-section statistics of the per-pair member variance (chosen reward and margin),
    and a 2 x S grid of histograms written to ``png_path`` (PNG, matplotlib Agg).

    Args:
        chosen_members, rejected_members: [n, N] member rewards (N >= 2).
        sections: [n] section label per pair (e.g. dataset or RewardBench section).
        png_path: where to write the figure (None: no figure).
        section_order: column order (default: sorted labels).
    Returns: {"n_members", "sections": {label: {"n", "var_chosen": stats, "var_margin": stats,
        "sign_disagreement": share, "accuracy_mean": share}}, "png": path or None}.
    """
    C = np.asarray(chosen_members, dtype=np.float64)
    R = np.asarray(rejected_members, dtype=np.float64)
    labels = np.asarray(list(sections), dtype=object)
    if C.ndim != 2 or C.shape != R.shape:
        raise ValueError(f"chosen and rejected member rewards must both be [n, N]; got {C.shape}, {R.shape}")
    if C.shape[1] < 2:
        raise ValueError("a sample variance across members needs N >= 2 members")
    if len(labels) != C.shape[0]:
        raise ValueError(f"{len(labels)} section labels for {C.shape[0]} pairs")
    margin = C - R
    var_c = C.var(axis=1, ddof=1)
    var_m = margin.var(axis=1, ddof=1)
    pos = (margin > 0).sum(1)
    split_vote = (pos > 0) & (pos < C.shape[1])
    order = list(section_order) if section_order is not None else sorted(set(labels.tolist()))
    out: dict[str, Any] = {"n_members": int(C.shape[1]), "variance": "sample (ddof=1) across members", "sections": {}}
    for s in order:
        sel = labels == s
        if not sel.any():
            continue
        out["sections"][s] = {
            "n": int(sel.sum()),
            "var_chosen": _summary(var_c[sel]),
            "var_margin": _summary(var_m[sel]),
            "sign_disagreement": float(split_vote[sel].mean()),
            "accuracy_mean": float((margin[sel].mean(1) > 0).mean()),
        }
    out["png"] = None
    if png_path is not None:
        out["png"] = str(_plot(var_c, var_m, labels, [s for s in order if s in out["sections"]], out, Path(png_path), title))
    return out


def _plot(var_c: np.ndarray, var_m: np.ndarray, labels: np.ndarray, order: list[str], stats: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S = len(order)
    fig, axes = plt.subplots(2, S, figsize=(3.4 * S + 0.6, 6.2), squeeze=False, sharey=False)
    rows = [("chosen reward", var_c, "var_chosen", "#3b6ea5"), ("margin chosen - rejected", var_m, "var_margin", "#c2553a")]
    for r, (name, vals, key, color) in enumerate(rows):
        # one bin grid per row so the sections are comparable by eye
        hi = float(np.quantile(vals, 0.99)) if len(vals) else 1.0
        bins = np.linspace(0.0, hi if hi > 0 else 1.0, 31)
        for c, s in enumerate(order):
            ax = axes[r, c]
            v = vals[labels == s]
            clipped = np.clip(v, None, bins[-1])  # the top 1% piles into the last bin
            ax.hist(clipped, bins=bins, color=color, alpha=0.85, edgecolor="white", linewidth=0.4)
            st = stats["sections"][s][key]
            ax.axvline(st["mean"], color="black", lw=1.0, ls="--")
            ax.axvline(st["median"], color="black", lw=1.0, ls=":")
            ax.text(
                0.97, 0.95, f"n={len(v)}\nmean={st['mean']:.3g}\nmedian={st['median']:.3g}",
                transform=ax.transAxes, ha="right", va="top", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.7", alpha=0.9),
            )
            if r == 0:
                ax.set_title(s, fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{name}\n#pairs", fontsize=9)
            ax.set_xlabel("variance across members" if r == 1 else "", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    fig.suptitle(f"{title}  (dashed: mean, dotted: median; values above the 99th pct in the last bin)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def member_diversity(members: torch.Tensor) -> dict[str, float]:
    """How different the members are on a set of inputs (``members`` [n, N]): pairwise
    Pearson correlation of member rewards (1 = identical up to an affine map) and the
    per-input population variance across members, on the reward scale (compare it with
    ``reward_std``, the spread of the ensemble mean over inputs)."""
    m = members.double()
    c = torch.corrcoef(m.T)
    N = m.shape[1]
    # a member constant over the inputs has no correlation: 1 with another constant member
    # (indistinguishable rankings), 0 with any other
    const = m.std(dim=0) == 0
    if bool(const.any()):
        both = const[:, None] & const[None, :]
        c = torch.where(torch.isnan(c), both.double(), c)
    off = c[~torch.eye(N, dtype=torch.bool)]
    var = m.var(dim=1, unbiased=False)
    return {
        "mean_pairwise_corr": float(off.mean()) if N > 1 else 1.0,
        "min_pairwise_corr": float(off.min()) if N > 1 else 1.0,
        "mean_variance": float(var.mean()),
        "median_variance": float(var.median()),
        "reward_std": float(m.mean(1).std()),
    }
