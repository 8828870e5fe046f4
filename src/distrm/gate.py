"""Step 2 of QRM: the gating network that mixes attribute distributions.

The gate sees only the prompt feature and outputs softmax weights g(x) over the M
attributes. It is trained with the Bradley-Terry loss on the *mean of the mixture*,
with the attribute heads frozen:

    mean_mix(x, y) = sum_m g_m(x) * mean(Q_m(. | x, y))
    loss = -log sigmoid(s * (mean_mix(x, y_c) - mean_mix(x, y_r)))

``s`` is a learned positive scale (the BT temperature): it makes the loss well posed on
rewards that live on the [0, 1] attribute scale and does not change any ranking.
Because the mixture's mean is linear in the attribute means, training only needs the
per-attribute means of chosen and rejected: heads are evaluated once, not per step.

Architecture as in QRM's released model / ArmoRM: ``n_hidden`` x [Linear(no bias) ->
ReLU -> BatchNorm1d (or Dropout)] -> Linear -> softmax(logits / temperature).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distrm.heads.objective import standardizer


class GatingNetwork(nn.Module):
    def __init__(
        self,
        in_dim: int,
        n_attributes: int,
        hidden: int = 1024,
        n_hidden: int = 3,
        temperature: float = 5.0,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_hidden):
            layers += [nn.Linear(d, hidden, bias=False), nn.ReLU()]
            layers.append(nn.BatchNorm1d(hidden) if batch_norm else nn.Identity())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = hidden
        layers.append(nn.Linear(d, n_attributes))
        self.net = nn.Sequential(*layers)
        self.temperature = temperature
        # standardisation of the prompt features (fitted on the training prompts by train_gate):
        # the weight decay then means the same on every backbone
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_scale", torch.ones(in_dim))
        # log of the BT scale s; exp keeps it positive. Starts at s = 10 (rewards in [0, 1]).
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, prompt_features: torch.Tensor) -> torch.Tensor:
        """Gate weights [n, M], rows sum to one."""
        x = (prompt_features - self.input_mean) / self.input_scale
        return F.softmax(self.net(x) / self.temperature, dim=-1)


@dataclass
class GateTrainConfig:
    """Paper defaults (QRM section 4.1): AdamW lr 3e-4, batch 1024, cosine decay,
    weight decay 1e-3, 3 epochs. With a few thousand pairs, 3 epochs are only a handful
    of steps: raise ``epochs`` (the embedded default config does)."""

    lr: float = 3e-4
    batch_size: int = 1024
    weight_decay: float = 1e-3
    epochs: int = 3
    seed: int = 0
    progress: bool = True


def train_gate(
    gate: GatingNetwork,
    prompt_features: torch.Tensor,
    mean_chosen: torch.Tensor,
    mean_rejected: torch.Tensor,
    cfg: GateTrainConfig,
) -> list[dict]:
    """Fit the gate on preference pairs; returns the per-epoch log (loss, accuracy).

    Args:
        prompt_features: [n, d] prompt-only features of each pair.
        mean_chosen / mean_rejected: [n, M] per-attribute distribution means (heads frozen,
            verbosity-debiased if enabled).
    """
    n = prompt_features.shape[0]
    if n == 0:
        raise ValueError("no preference pairs to train the gate on")
    if mean_chosen.shape != mean_rejected.shape or mean_chosen.shape[0] != n:
        raise ValueError("prompt features and attribute means disagree on the number of pairs")
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(gate.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    diff = (mean_chosen - mean_rejected).float()
    feats = prompt_features.float()
    with torch.no_grad():
        mean, scale = standardizer(feats)
        gate.input_mean.copy_(mean)
        gate.input_scale.copy_(scale)
    log: list[dict] = []
    bar = tqdm(total=total, desc="gate", disable=not cfg.progress, leave=False)
    gate.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        tot_loss, tot_correct = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            if idx.numel() < 2 and n >= 2:  # BatchNorm needs two rows; fold a lone row in
                idx = perm[-2:]
            w = gate(feats[idx])
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
