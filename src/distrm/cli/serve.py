"""``distrm serve MODEL``: the HTTP reward server (see :mod:`distrm.serve`).

Options are :class:`distrm.serve.config.ServeCommandConfig`: a YAML file (``--config``),
flags and ``--set`` fill it, and it is checked whole (risk spec, limits, ranges) before
the model loads."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from distrm.config import add_config_arguments, config_from_args
from distrm.serve.config import ServeCommandConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a saved model over HTTP (/score, OpenRLHF /get_reward) with dynamic batching",
        description="Serve any saved distrm reward model (folder or Hub id) over HTTP. Binds 127.0.0.1 unless "
        "--host says otherwise; set --token (or DISTRM_SERVE_TOKEN) before exposing it beyond loopback. "
        "For OpenRLHF (no auth header) keep the loopback default and pass --no-token if DISTRM_SERVE_TOKEN is set. "
        "--replicas N runs N copies of the server on Ray Serve behind the same address.",
    )
    add_config_arguments(p, ServeCommandConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ServeCommandConfig, args)
    if args.print_config:
        return 0
    import uvicorn

    from distrm.serve.app import load_app, token_from_env
    from distrm.serve.protocol import uvicorn_config

    if cfg.server.token is None and not cfg.server.no_token:
        cfg.server.token = token_from_env()
    try:
        loopback = ipaddress.ip_address(cfg.host).is_loopback
    except ValueError:
        loopback = cfg.host == "localhost"
    if not loopback and cfg.server.token is None:
        print(f"distrm serve: warning: binding {cfg.host} without a token; anyone who can reach it can use it", file=sys.stderr)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if cfg.on_ray:  # N replicas of the same app on Ray Serve
        from distrm.serve.replicas import serve_replicas

        return serve_replicas(cfg)
    app = load_app(cfg.model, cfg.server, revision=cfg.revision)
    uvicorn.Server(uvicorn_config(app, cfg.host, cfg.port, cfg.server.limits, log_level=cfg.log_level)).run()
    return 0
