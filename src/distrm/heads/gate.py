"""Step 2 of QRM: the gating network that mixes attribute distributions.

The gate sees only the prompt feature and outputs softmax weights g(x) over the M
attributes. It is trained (:mod:`distrm.training.gate`) with the Bradley-Terry loss on the *mean of the mixture*,
with the attribute heads frozen:

    mean_mix(x, y) = sum_m g_m(x) * mean(Q_m(. | x, y))
    loss = -log sigmoid(s * (mean_mix(x, y_c) - mean_mix(x, y_r)))

``s`` is a learned positive scale (the BT temperature): it makes the loss well posed on
rewards that live on the [0, 1] attribute scale and does not change any ranking.
Because the mixture's mean is linear in the attribute means, training only needs the
per-attribute means of chosen and rejected: heads are evaluated once, not per step.

Architecture as in QRM's released model: ``n_hidden`` x [Linear(no bias) -> ReLU ->
BatchNorm1d (or Dropout)] -> Linear -> softmax(logits / temperature). ArmoRM's released gate
is ``n_hidden`` x [Linear(with bias) -> ReLU] -> Linear: ``batch_norm=False, hidden_bias=True``
(used by models imported with :mod:`distrm.models.convert`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn



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
        hidden_bias: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_hidden):
            layers += [nn.Linear(d, hidden, bias=hidden_bias), nn.ReLU()]
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
