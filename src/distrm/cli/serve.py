"""``distrm serve MODEL_DIR``: the HTTP reward server (see :mod:`distrm.serve`)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a saved model over HTTP (/score, OpenRLHF /get_reward) with dynamic batching",
        description="Serve a saved DistributionalRewardModel over HTTP. Binds 127.0.0.1 unless --host says "
        "otherwise; set --token (or DISTRM_SERVE_TOKEN) before exposing it beyond loopback.",
    )
    p.add_argument("model_dir", help="directory written by save_pretrained / distrm train")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="bearer token required on all endpoints but /health (default: $DISTRM_SERVE_TOKEN)")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch", type=int, default=64, help="most items per backbone call; 1 turns batching off")
    g.add_argument("--max-wait-ms", type=float, default=5.0, help="longest an item waits for batch-mates")
    g.add_argument("--threads", type=int, default=None, help="torch threads for the model (default: torch's)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    lim.add_argument("--max-items", type=int, default=256, help="pairs per request")
    lim.add_argument("--max-text-chars", type=int, default=32_768, help="characters per prompt / response")
    lim.add_argument("--on-too-long", choices=["truncate", "reject"], default="truncate",
                     help="over-long texts: score a truncated copy (marked 'truncated') or reject with 413")
    lim.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait for the model before 503")
    lim.add_argument("--max-queue-items", type=int, default=4096, help="queued items before new requests get 503")
    o = p.add_argument_group("OpenRLHF /get_reward")
    o.add_argument("--reward-risk", default="mean", help="risk measure returned as the reward, e.g. 'cvar:alpha=0.1'")
    o.add_argument("--error-reward", type=float, default=None,
                   help="reward for items that fail in non-strict mode (default null; OpenRLHF needs a number)")
    o.add_argument("--strip", action="append", default=[],
                   help="token stripped from the ends of responses, e.g. '<|endoftext|>' (repeatable)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from distrm.serve.app import ServeConfig, load_app, token_from_env
    from distrm.serve.limits import Limits

    token = args.token or token_from_env()
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    from distrm.risk import parse_risk

    parse_risk(args.reward_risk)  # the risk vocabulary: fail before loading the model
    if not loopback and token is None:
        print(f"distrm serve: warning: binding {args.host} without a token; anyone who can reach it can use it", file=sys.stderr)
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_items=args.max_items,
        max_text_chars=args.max_text_chars,
        on_too_long=args.on_too_long,
        request_timeout_s=args.timeout,
        max_queue_items=args.max_queue_items,
    )
    config = ServeConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        limits=limits,
        token=token,
        reward_risk=args.reward_risk,
        error_reward=args.error_reward,
        strip=tuple(args.strip),
        threads=args.threads,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = load_app(args.model_dir, config)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.log_level == "debug")
    return 0
