"""The ``distrm`` command line: one module per command group, each exposing
``register(subparsers)`` that adds its parser(s) and sets ``func`` (called with the
parsed args, returns an exit code). Adding a command = adding its module name below."""

from __future__ import annotations

import argparse
import importlib
import sys

import distrm

# command modules under distrm.cli, in the order they appear in --help
COMMAND_MODULES = [
    "data",
    "train",
    "rl",
    "bon",
    "simulate",
    "eval",
    "report",
    "serve",
    "extract",
    "finetune",
    "convert",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distrm",
        description="Distributional and uncertainty-aware reward models for RLHF.",
    )
    parser.add_argument("--version", action="version", version=f"distrm {distrm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"distrm.cli.{name}")
        except ImportError as e:
            if (e.name or "").startswith("distrm"):
                raise
            _register_missing(sub, name, e)
            continue
        module.register(sub)
    return parser


def _register_missing(sub: argparse._SubParsersAction, name: str, err: ImportError) -> None:
    """A command whose optional dependency is not installed still shows up, and says
    which extra to install instead of failing the whole CLI."""
    p = sub.add_parser(name, help=f"(unavailable: {err.name} is not installed)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def explain(args: argparse.Namespace) -> int:
        print(f"distrm {name}: needs the package {err.name!r}: pip install 'distrm[all]'", file=sys.stderr)
        return 2

    p.set_defaults(func=explain)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _log_to_stderr()
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:  # user errors: one clear line
        print(f"distrm {args.command}: error: {e}", file=sys.stderr)
        return 2


def _log_to_stderr() -> None:
    """Library modules log through ``logging``; the CLI shows their INFO messages on stderr,
    plainly (unless the caller configured logging already)."""
    import logging

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    logging.getLogger("distrm").setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
