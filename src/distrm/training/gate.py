"""Training of the QRM gate (step 2): Bradley-Terry on the mixture mean, heads frozen.

Kept apart from :class:`~distrm.heads.gate.GatingNetwork` (the model part) so that loading a
model never imports training code. See the gate module docstring for the loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distrm.config import GateConfig
from distrm.heads.blocks import DEFAULT_BLOCK_ROWS, block_standardizer, take_rows
from distrm.heads.gate import GatingNetwork
from distrm.heads.objective import standardizer


def train_gate(
    gate: GatingNetwork,
    prompt_features: Any,
    mean_chosen: torch.Tensor,
    mean_rejected: torch.Tensor,
    cfg: GateConfig,
    seed: int = 0,
    progress: bool = True,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> list[dict]:
    """Fit the gate on preference pairs; returns the per-epoch log (loss, accuracy).

    ``cfg`` is the same :class:`~distrm.config.GateConfig` the YAML fills (``lr``,
    ``batch_size``, ``weight_decay``, ``epochs``; paper defaults, QRM section 4.1: AdamW lr
    3e-4, batch 1024, cosine decay, weight decay 1e-3, 3 epochs -- with a few thousand pairs
    that is a handful of steps, so the embedded default config raises ``epochs``).

    Args:
        prompt_features: [n, d] prompt-only features of each pair: a tensor, or rows read on
            demand (a :class:`~distrm.features.store.StoredFeatures` view from
            ``extract(..., stream=True)``, an ``np.memmap``, an array). Then the input
            standardisation is fitted over blocks of ``block_rows`` rows and each minibatch
            reads its own rows (sorted, from the memory-mapped shards), so memory does not grow
            with n; the minibatches and steps are those of the in-memory path.
        mean_chosen / mean_rejected: [n, M] per-attribute distribution means (heads frozen,
            verbosity-debiased if enabled; small: compute them over blocks of reward rows).
    """
    n = prompt_features.shape[0]
    if n == 0:
        raise ValueError("no preference pairs to train the gate on")
    if mean_chosen.shape != mean_rejected.shape or mean_chosen.shape[0] != n:
        raise ValueError("prompt features and attribute means disagree on the number of pairs")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(gate.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    diff = (mean_chosen - mean_rejected).float()
    in_memory = isinstance(prompt_features, torch.Tensor)
    if in_memory:
        feats = prompt_features.float()
        mean, scale = standardizer(feats)
    else:
        mean, scale = block_standardizer(prompt_features, block_rows, dtype=torch.float32)

    def rows(idx: torch.Tensor) -> torch.Tensor:
        return feats[idx] if in_memory else take_rows(prompt_features, idx, torch.float32)

    with torch.no_grad():
        gate.input_mean.copy_(mean)
        gate.input_scale.copy_(scale)
    log: list[dict] = []
    bar = tqdm(total=total, desc="gate", disable=not progress, leave=False)
    gate.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        tot_loss, tot_correct = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            if idx.numel() < 2 and n >= 2:  # BatchNorm needs two rows; fold a lone row in
                idx = perm[-2:]
            w = gate(rows(idx))
            margin = (w * diff[idx]).sum(-1)
            loss = -F.logsigmoid(gate.log_scale.exp() * margin).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * idx.numel()
            tot_correct += int((margin > 0).sum())
            bar.update(1)
        entry = {"epoch": epoch + 1, "loss": tot_loss / n, "train_accuracy": tot_correct / n}
        log.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.4f}", acc=f"{entry['train_accuracy']:.3f}")
    bar.close()
    gate.eval()
    return log
