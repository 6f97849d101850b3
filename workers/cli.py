"""The `restrav` console script: one entry point, one subcommand per module.

Each subcommand module exposes ``register(subparsers)`` and sets ``func`` on
its parser; ``main`` parses, sets up logging and maps errors to exit codes:
0 ok, 1 some inputs failed, 2 usage, 3 configuration or model error (Redis
unreachable included).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module

from redis.exceptions import RedisError

from monitor import __version__
from monitor.errors import ArtifactError, ConfigError, ModelError

from .common import EXIT_CONFIG, EXIT_USAGE, setup_logging

SUBCOMMANDS = (
    "workers.score_cmd",
    "workers.doctor_cmd",
    "workers.queue_cmd",
    "workers.train_cmd",
    "workers.serve_cmd",
)
"""Modules that add subcommands, in --help order."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by --help and the tests)."""
    parser = argparse.ArgumentParser(
        prog="restrav",
        description="restrav-monitor: is this video AI-generated? ReStraV (NeurIPS 2025) "
        "measures how straight a video's trajectory is in DINOv2's representation space.",
        epilog="Run `restrav COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"restrav {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    setup_logging(args.verbose)
    try:
        status: int = args.func(args)
    except (ConfigError, ModelError, ArtifactError) as exc:
        logging.getLogger("restrav").debug("fatal", exc_info=True)
        print(f"restrav {args.command}: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except RedisError as exc:
        # Redis down or refusing: one line that says what to do, not a traceback
        logging.getLogger("restrav").debug("redis", exc_info=True)
        print(
            f"restrav {args.command}: Redis unavailable ({type(exc).__name__}: {exc}); "
            "check that it runs and that --redis-url points at it",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return status


if __name__ == "__main__":
    sys.exit(main())
