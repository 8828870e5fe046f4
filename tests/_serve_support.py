"""Shared by the server tests: a real saved model on the real MiniLM backbone and a real
uvicorn server on a loopback port, run in a background thread.

The model's heads and gate are fixed random weights (seeded) on the backbone's real feature
dimension: the tests check that the server reproduces ``model.score`` exactly, which does
not need trained heads, and building it costs no training time."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import uvicorn

from distrm.distribution import default_levels
from distrm.heads.gate import GatingNetwork
from distrm.models.qrm import DistributionalRewardModel, ModelConfig
from distrm.models.auto import AutoRewardModel
from distrm.serve.app import ServeConfig, create_app
from distrm.serve.protocol import uvicorn_config

ATTRIBUTES = ["helpfulness", "correctness", "verbosity"]


def build_model_dir(path: Path) -> Path:
    """Save a quantile model (3 attributes x 19 levels, learned gate, length debiasing)
    on the MiniLM backbone with seeded random weights."""
    from distrm.features.backbones import Backbone
    from distrm.features import extract

    backbone = Backbone.from_pretrained("minilm")
    # the feature dim from a real extraction, not a constant
    d = int(torch.as_tensor(extract(backbone, ["p"], ["r"], batch_size=1, progress=False).reward).shape[-1])
    g = torch.Generator().manual_seed(0)
    M, K = len(ATTRIBUTES), 19
    cfg = ModelConfig(
        backbone="minilm",
        feature_dim=d,
        attributes=ATTRIBUTES,
        levels=default_levels(K, torch.float64).tolist(),
        gate_hidden=64,
        gate_n_hidden=2,
        backbone_identity=getattr(backbone, "identity", None),
    )
    torch.manual_seed(0)
    gate = GatingNetwork(d, M, 64, 2)
    gate.train()
    gate(torch.randn(128, d, generator=g))  # non-trivial BatchNorm statistics
    gate.eval()
    model = DistributionalRewardModel(cfg, torch.randn(M, K, d, generator=g) * 0.2, torch.randn(M, K, generator=g), gate, torch.tensor([0.1, 0.0, 0.3]))
    model.save_pretrained(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_dir: Path, config: ServeConfig, app_out: list | None = None, **uvicorn_kwargs) -> Iterator[str]:
    """Serve ``model_dir`` on 127.0.0.1 in a thread; yields the base URL. The uvicorn
    configuration (idle timeout, request-head deadline, protocol) is ``distrm serve``'s; ``uvicorn_kwargs``
    override uvicorn settings; ``app_out`` (a list) receives the app (its service counters)."""
    app = create_app(AutoRewardModel.from_pretrained(model_dir), config)
    if app_out is not None:
        app_out.append(app)
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, config.limits, log_level="warning", **uvicorn_kwargs))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    t0 = time.monotonic()
    while not server.started:
        if not th.is_alive() or time.monotonic() - t0 > 120:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(30)
