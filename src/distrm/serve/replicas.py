"""``distrm serve --replicas N``: the same reward server as N replicas on Ray Serve.

Why Ray Serve: it is the engine OpenRLHF and verl already run their clusters on, so a
reward server that has to keep up with a multi-GPU rollout scales by a flag onto the nodes
and GPUs that cluster already has, with no second orchestrator. Why a wrapper and not a
second server: every replica runs :func:`distrm.serve.app.load_app` -- the same FastAPI app,
dynamic batcher, limits and auth as the single-process server -- so the HTTP API cannot
drift between the two. Ray's HTTP proxy only routes requests to the replicas (to the one
with the shortest queue of two it picks), and each replica's batcher batches what reaches
it.

What changes with Ray in front:

* HTTP is parsed by Ray's proxy (its own uvicorn), not by :mod:`distrm.serve.protocol`:
  the keep-alive idle timeout is passed on (``keep_alive_timeout_s``), the request-head
  deadline (``header_timeout_s``) is not enforced by the proxy. Body size, body timeout,
  request timeout, queue bound and auth are enforced inside each replica as before.
* ``/health`` answers for the replica the request reached (its queue and counters).
* Each replica loads the model itself (from the folder path or Hub id, so every node needs
  the folder or Hub access) and, on CPU, uses ``int(replica_cpus)`` torch threads unless
  ``--threads`` says otherwise: replicas sharing a machine must not each take every core.

The single-process uvicorn server (:mod:`distrm.cli.serve`) stays the default; this module
is imported only when Ray is asked for, so Ray is an optional dependency.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import sys
import threading
from typing import Any

from distrm.serve.config import ServeCommandConfig, ServeConfig

log = logging.getLogger("distrm.serve")

APP_NAME = "distrm"
# requests a replica accepts at once: far above Ray's default of 5, because the replica's
# dynamic batcher can only batch the requests it has; the replica's own queue bound
# (max_queue_items, 503 beyond it) is what limits the work in flight
MAX_ONGOING_REQUESTS = 1024


def replica_server_config(cfg: ServeCommandConfig) -> ServeConfig:
    """The app config every replica runs with: the command's, plus a torch thread count
    that fits the replica's CPU share when none was given (CPU replicas only)."""
    if cfg.server.threads is None and not cfg.replica_gpus:
        return dataclasses.replace(cfg.server, threads=max(1, int(cfg.replica_cpus)))
    return cfg.server


def build_deployment(cfg: ServeCommandConfig) -> Any:
    """The Ray Serve deployment (not started): ``cfg.replicas`` replicas, each building the
    app with :func:`~distrm.serve.app.load_app` inside its own process."""
    from ray import serve

    model, revision, server = cfg.model, cfg.revision, replica_server_config(cfg)

    def build_app() -> Any:  # runs in each replica; Ray pickles it with model, revision and server
        from distrm.serve.app import load_app

        return load_app(model, server, revision=revision)

    options: dict[str, Any] = {"num_cpus": cfg.replica_cpus}
    if cfg.replica_gpus:
        options["num_gpus"] = cfg.replica_gpus
    return serve.deployment(
        serve.ingress(build_app)(),
        name="RewardServer",
        num_replicas=cfg.replicas,
        ray_actor_options=options,
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        max_constructor_retry_count=1,  # a model that fails to load fails the start, not 20 retries later
        graceful_shutdown_timeout_s=cfg.server.limits.request_timeout_s,
    )


def _not_ignored_http_config(record: logging.LogRecord) -> bool:
    """Drop Ray's claim that the HTTP options are ignored: ``serve.run`` compares the options
    ``serve.start`` applied (host, port, keep-alive) with defaults of its own and warns,
    though the applied ones stay in force."""
    msg = record.getMessage()
    return "HTTP config" not in msg and "New http options will not be applied" not in msg


def _failure_detail(serve: Any) -> str:
    """Why the replicas failed to start, as Ray Serve's status records it (the exception a
    replica raised while loading the model, with its traceback)."""
    try:
        app = serve.status().applications.get(APP_NAME)
        msgs = [app.message] + [d.message for d in app.deployments.values()] if app else []
    except Exception as e:  # noqa: BLE001 -- the status is a hint; the original error is raised anyway
        return f"(Ray Serve status unavailable: {e})"
    return "\n".join(m for m in msgs if m) or "(no detail in Ray Serve's status; see the logs under /tmp/ray/session_latest/logs/serve)"


def serve_replicas(cfg: ServeCommandConfig) -> int:
    """Start Ray (a private local instance unless ``cfg.ray_address`` names a cluster), run
    the deployment behind Ray's HTTP proxy on ``cfg.host:cfg.port`` and block until SIGINT /
    SIGTERM; then stop the replicas and, if this process started Ray, Ray itself."""
    import ray
    from ray import serve

    private = cfg.ray_address is None
    init: dict[str, Any] = {"address": "local" if private else cfg.ray_address, "include_dashboard": False,
                            "logging_level": cfg.log_level.upper(), "log_to_driver": cfg.log_level == "debug"}
    if private and cfg.ray_object_store_mb:
        init["object_store_memory"] = cfg.ray_object_store_mb * 1024 * 1024
    ray.init(**init)
    stop = threading.Event()
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which sets handlers of its own
            signal.signal(sig, lambda *_: stop.set())
        serve.start(http_options={"host": cfg.host, "port": cfg.port,
                                  "keep_alive_timeout_s": max(1, math.ceil(cfg.server.limits.idle_timeout_s))})
        serve_log = logging.getLogger("ray.serve")
        serve_log.addFilter(_not_ignored_http_config)
        try:
            serve.run(build_deployment(cfg).bind(), name=APP_NAME, route_prefix="/")
        except RuntimeError as e:  # Ray's message names no cause: add the replicas' own error
            raise RuntimeError(f"{e}\n{_failure_detail(serve)}") from None
        finally:
            serve_log.removeFilter(_not_ignored_http_config)
        print(f"distrm serve: {cfg.replicas} replica(s) of {cfg.model} on Ray Serve at http://{cfg.host}:{cfg.port}",
              file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
        print("distrm serve: stopping the replicas", file=sys.stderr, flush=True)
    finally:
        try:
            if private:
                serve.shutdown()
            else:  # the cluster's Serve instance is not ours to stop: remove only this app
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    return 0
