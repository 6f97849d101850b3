"""`restrav score`: one JSON object per file on stdout."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from tqdm import tqdm

from monitor.core.pipeline import error_json, score_file
from monitor.core.published import resolve_classifier_ref
from monitor.errors import RestravError

from .common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_settings_args,
    build_classifier,
    build_embedder,
    decode_limits,
    positive_int,
    progress_enabled,
    settings_from_args,
)

log = logging.getLogger("restrav.score")

HELP = "score video files: features of the paper's centred window and P(AI)"
DESCRIPTION = """\
Score video files with ReStraV. For each PATH, prints one JSON object on stdout:
the paper's centred 2 s window (24 samples at 11.5 Hz) with its 21 features, its
repeated-frame count (sources slower than 11.5 fps repeat frames; such windows
are flagged) and P(AI-generated) from the bundled published classifier
(restrav-vidprom-mlp) or --classifier DIR; `--classifier none` gives features
only (score null). "classifier" names the artifact used. With --windows, also
every window along the clip, one per --hop samples.

A file that cannot be scored gets {"ok": false, "error": {"code", "message"}}
and the others are still scored; the exit status is 1 if any failed.
"""


def register(sub: Any) -> None:
    """Add the `score` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "score",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="video files (any container FFmpeg reads)"
    )
    p.add_argument("--windows", action="store_true", help="also score every window along the clip")
    p.add_argument(
        "--hop",
        type=positive_int,
        default=1,
        metavar="K",
        help="with --windows: one window every K samples (default 1 = every sample)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )
    add_settings_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score every path; exit 1 if any failed."""
    settings = settings_from_args(args)
    embedder = build_embedder(settings)
    classifier = build_classifier(settings, embedder.embedding_dim)
    limits = decode_limits(settings)
    clf_dir = resolve_classifier_ref(settings.classifier.path)
    clf_name = clf_dir.name if clf_dir is not None else None
    failed = 0
    shown = progress_enabled(args.progress)
    bar = tqdm(args.paths, unit="file", disable=not shown, file=sys.stderr)
    # frames embedded, over all files: a long clip moves this bar, not the files bar
    frames = tqdm(unit="frame", disable=not shown, file=sys.stderr, position=1, leave=False)

    def count_frames(n: int) -> None:
        frames.update(n)

    for path in bar:
        bar.set_postfix_str(str(path)[-40:])
        try:
            result = score_file(
                path, embedder, classifier, limits, all_windows=args.windows, hop=args.hop,
                on_frames=count_frames,
            ).to_json()
            result["classifier"] = clf_name
        except RestravError as exc:
            failed += 1
            result = error_json(path, exc.code, exc.message)
        except Exception as exc:  # boundary: one file's bug must not lose the others' results
            log.exception("internal error scoring %s", path)
            failed += 1
            result = error_json(
                path, "internal", f"{type(exc).__name__}: {exc} (a bug; please report)"
            )
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    frames.close()
    return EXIT_SOME_FAILED if failed else EXIT_OK
