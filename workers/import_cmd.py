"""`restrav import-classifier`: convert a published upstream ReStraV classifier into an artifact."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import EXIT_OK, EXIT_USAGE

HELP = "convert a published ReStraV classifier (model.pt, mean/std/best_tau.npy) to an artifact"

DESCRIPTION = """\
Convert a classifier published in the upstream ReStraV layout (sampagon/ReStraV:
model.pt, mean.npy, std.npy, best_tau.npy, optionally SHA256SUMS and LICENSE)
into restrav-monitor's artifact (classifier.json + classifier.safetensors), which
`restrav score/serve/worker/eval -c OUT` load without executing code.

The files are loaded without executing code (torch.load weights_only, np.load
without pickle) and checked: layer names and sizes (21 -> 64 -> 32 -> 1), finite
weights, z-score shapes, the threshold, and SHA256SUMS when present. The upstream
output is P(real); the artifact gives P(AI-generated) = 1 - P(real) with the same
decisions, and records that its features use 90 degrees at zero-length steps (the
upstream convention), so every scoring path computes them that way.
The bundled default classifier is this command's output on the published files.

Exit status: 0 written; 2 usage (SRC missing, OUT not empty without --force);
3 the files do not fit (one line says which file and why). Nothing is written
unless every check passes.
"""


def register(sub: Any) -> None:
    """Add the `import-classifier` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "import-classifier",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", type=Path, metavar="SRC", help="upstream classifier directory")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="DIR",
                   help="artifact directory to write (must not exist or be empty)")
    p.add_argument("--source", metavar="TEXT",
                   help="where the files came from, recorded in the artifact "
                   "(default: the SRC path)")
    p.add_argument("--license", dest="license_name", metavar="SPDX",
                   help="licence of the files (default: read from SRC/LICENSE)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check and convert; write OUT (with LICENSE and NOTICE) atomically."""
    from monitor.core.published import import_upstream, notice_text

    src: Path = args.src
    out: Path = args.out
    if not src.is_dir():
        print(f"restrav import-classifier: {src}: no such directory", file=sys.stderr)
        return EXIT_USAGE
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        print(
            f"restrav import-classifier: {out} exists and is not empty; "
            "choose another --out or pass --force to replace it",
            file=sys.stderr,
        )
        return EXIT_USAGE
    clf = import_upstream(src, source=args.source, license_name=args.license_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        clf.save(tmp)
        if (src / "LICENSE").is_file():
            shutil.copyfile(src / "LICENSE", tmp / "LICENSE")
        (tmp / "NOTICE").write_text(notice_text(clf), encoding="utf-8")
        # mkdtemp makes the directory private; the artifact gets the usual modes
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(json.dumps({
        "artifact": str(out),
        "kind": clf.kind,
        "threshold": clf.threshold,
        "zero_step_angle_deg": clf.zero_step_angle_deg,
        "provenance": clf.provenance,
    }))
    return EXIT_OK
