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
    "workers.import_cmd",
    "workers.serve_cmd",
)
"""Modules that add subcommands, in --help order."""

COMMAND_MODULES = {
    "score": "workers.score_cmd",
    "doctor": "workers.doctor_cmd",
    "submit": "workers.queue_cmd",
    "worker": "workers.queue_cmd",
    "extract": "workers.train_cmd",
    "train": "workers.train_cmd",
    "eval": "workers.train_cmd",
    "robustness": "workers.train_cmd",
    "import-classifier": "workers.import_cmd",
    "serve": "workers.serve_cmd",
}
"""Subcommand -> its module. Only the named command's module is imported (torch,
aiortc... load only where needed: `restrav --version` and `worker --check` stay light)."""


TRAIN_EXTRA = frozenset({"sklearn", "pyarrow", "matplotlib"})
"""Top-level modules of the ``train`` extra (not in the serve/worker image)."""


def _modules_for(argv: Sequence[str]) -> tuple[str, ...]:
    """The subcommand modules to register for ``argv``: the named command's alone, none
    for a bare ``--version``, all of them otherwise (``--help``, mistakes)."""
    words = [a for a in argv if not a.startswith("-")]
    if words and words[0] in COMMAND_MODULES:
        return (COMMAND_MODULES[words[0]],)
    if not words and "--version" in argv and not {"-h", "--help"} & set(argv):
        return ()
    return SUBCOMMANDS


def build_parser(modules: Sequence[str] = SUBCOMMANDS) -> argparse.ArgumentParser:
    """The argument parser with the subcommands of ``modules`` (default all: --help, tests)."""
    parser = argparse.ArgumentParser(
        prog="restrav",
        description="restrav-monitor: is this video AI-generated? ReStraV (NeurIPS 2025) "
        "measures how straight a video's trajectory is in DINOv2's representation space.",
        epilog="Run `restrav COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"restrav {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_modules_for(argv))
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
    except ModuleNotFoundError as exc:
        if exc.name not in TRAIN_EXTRA:
            raise
        print(
            f"restrav {args.command}: needs {exc.name}, which comes with the train extra: "
            "pip install 'restrav-monitor[train]'",
            file=sys.stderr,
        )
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
