"""Cross-validation folds grouped by prompt, shared by every head that picks its penalty.

Responses to one prompt are not independent draws (same topic, often the same raters), so a
fold holds out whole prompts: a penalty chosen on folds that split a prompt would be chosen
for memorising prompts, the thing held-out data must not reward.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def group_folds(groups: Sequence[Any], n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold id in [0, n_folds) per element, equal groups in equal folds, folds balanced in
    groups (a seeded permutation of the distinct groups dealt round-robin). With fewer distinct
    groups than folds every group is its own fold."""
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {n_folds}")
    codes, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    perm = np.random.default_rng(seed).permutation(len(codes))
    fold_of_group = np.empty(len(codes), dtype=np.int64)
    fold_of_group[perm] = np.arange(len(codes)) % max(1, min(n_folds, len(codes)))
    return fold_of_group[inverse]
