"""HTTP reward server: ``distrm serve MODEL_DIR``.

* :mod:`distrm.serve.app` -- FastAPI app (``/score``, OpenRLHF ``/get_reward``, ``/health``,
  ``/metadata``) and :class:`ServeConfig`;
* :mod:`distrm.serve.batching` -- the dynamic batcher (one model thread);
* :mod:`distrm.serve.limits` -- request limits and the body-size guard.

The client side is :class:`distrm.serve.client.RewardClient` (also a TRL reward function).
Needs the ``serve`` extra: ``pip install distrm[serve]``.
"""

from distrm.serve.app import ServeConfig, create_app, load_app  # noqa: F401
from distrm.serve.limits import Limits  # noqa: F401

__all__ = ["Limits", "ServeConfig", "create_app", "load_app"]
