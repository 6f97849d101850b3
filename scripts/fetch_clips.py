"""Fetch the 16 real-world test clips into ../shared/clips (or the folder given).

Each clip of tests/clips.json (a copy of the folder's manifest.json) is downloaded
byte for byte from its source repository at the pinned commit and checked against
its sha256; the manifest is written beside them. The tests find the folder at
../shared/clips beside the checkout, or wherever RESTRAV_SHARED_CLIPS points.

    .venv/bin/python scripts/fetch_clips.py [DEST]
"""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "clips.json"
URLS = (
    "https://raw.githubusercontent.com/{repo}/{commit}/{path}",
    # a file kept in Git LFS: raw gives its pointer, this gives the content
    "https://media.githubusercontent.com/media/{repo}/{commit}/{path}",
)


def fetch(entry: dict[str, str], dest: Path) -> None:
    """Download one clip, trying each URL until one gives the manifest's sha256."""
    out = dest / entry["file"]
    if out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == entry["sha256"]:
        return
    for url in URLS:
        full = url.format(repo=entry["source_repo"], commit=entry["source_commit"],
                          path=entry["source_path"])
        with urllib.request.urlopen(full, timeout=60) as resp:
            body = resp.read()
        if hashlib.sha256(body).hexdigest() == entry["sha256"]:
            out.write_bytes(body)
            print(f"{entry['file']}: {len(body)} bytes from {full}")
            return
    raise SystemExit(f"{entry['file']}: no URL gave sha256 {entry['sha256']}")


def main(argv: list[str]) -> int:
    dest = Path(argv[0]) if argv else ROOT.parent / "shared" / "clips"
    dest.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(MANIFEST.read_text())
    for entry in manifest:
        fetch(entry, dest)
    (dest / "manifest.json").write_text(MANIFEST.read_text())
    print(f"{len(manifest)} clips in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
