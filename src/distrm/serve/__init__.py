"""HTTP reward server: ``distrm serve MODEL``.

* :mod:`distrm.serve.app` -- FastAPI app (``/score``, OpenRLHF ``/get_reward``, ``/health``,
  ``/metadata``);
* :mod:`distrm.serve.config` -- :class:`ServeConfig` (light: no FastAPI, no torch);
* :mod:`distrm.serve.batching` -- the dynamic batcher (one model thread);
* :mod:`distrm.serve.limits` -- request limits and the body-size guard;
* :mod:`distrm.serve.replicas` -- ``--replicas N``: the same app as N Ray Serve replicas.

The client side is :class:`distrm.serve.client.RewardClient` (also a TRL reward function).
Needs the ``serve`` extra: ``pip install distrm[serve]``. Names are imported lazily so
that building a config does not import FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"ServeConfig": "distrm.serve.config", "Limits": "distrm.serve.limits",
         "create_app": "distrm.serve.app", "load_app": "distrm.serve.app"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distrm.serve' has no attribute {name!r}")
