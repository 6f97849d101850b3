"""`restrav extract | train | eval | robustness`: build, check and stress your own classifier.

These commands turn a folder of labelled clips into a classifier artifact, a
model card and an evaluation report that says how far to trust it, and evaluate
any artifact (the bundled published classifier by default) on your own clips.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from monitor.core.classifier import KINDS
from monitor.errors import ConfigError
from monitor.learn.robustness import (
    DEFAULT_TRANSFORMS,
    TRANSFORMS,
    robustness_markdown,
    robustness_report,
    run_robustness,
)

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

log = logging.getLogger("restrav.train")

EXTRACT_DESCRIPTION = """\
Compute the 21 ReStraV features of every clip into a feature table (Parquet).

SOURCE is a folder laid out as
    real/...                 real footage (any depth; a first sub-folder, e.g.
                             real/camera-3/, is the clip's group)
    ai/<generator>/...       AI-generated clips, one folder per generator
or a CSV manifest with a header: path,label[,generator][,group]
(label: real/0 or ai/1; relative paths are read from the CSV's folder).

Writes OUT/part-*.parquet (one row per window, with per-clip metadata: fps,
duration, resolution, codec, repeated frames), OUT/table.json and
OUT/errors.jsonl (clips that could not be read, with their error; they do not
stop the run). Re-running with the same OUT resumes: finished clips are
skipped. Exit status 1 if any clip failed.
"""

TRAIN_DESCRIPTION = """\
Train a classifier on a feature table and write an artifact directory:
classifier.json + classifier.safetensors (load with `restrav score -c OUT`),
split.json (the held-out clips, read by `restrav eval`), training.json and
model_card.md. The scaler and model see the training clips only.

Kinds: mlp (the paper's), logreg, gaussian_nb, random_forest, gradient_boosting,
svm_rbf; training-free: mean_curvature (feature 17, the paper's rule; needs only
real clips to set its threshold) and one_class (learns known-real footage only).
Splits: stratified (by generator), group (no group on both sides), logo (leave
one generator out: one fold per generator, the artifact is fitted on all clips).
"""

EVAL_DESCRIPTION = """\
Evaluate an artifact on a feature table: accuracy, balanced accuracy, F1,
AUROC, average precision, TPR at 1 % and 0.1 % FPR, calibration error, each with
a bootstrap 95 % interval over clips; a per-generator table; shortcut baselines
trained on metadata alone (fps only, duration only, all metadata) and the
real-vs-real floor. Uses the held-out clips of the artifact's split.json.
Writes OUT/report.json, OUT/report.md and roc.png, pr.png, features.png,
timeline.png. If a shortcut baseline comes close to the model, the data lets
metadata alone separate the classes: the model's numbers are not to be trusted.

Without --classifier the bundled published classifier is evaluated; its features
use 90 degrees at zero-length steps, so extract the table with
`restrav extract --zero-step-angle 90` (a table in another convention is refused).
--recalibrate DIR also writes a copy of the classifier whose threshold gives
--target-fpr on the table's real clips (centre windows): the published threshold
was chosen on the publisher's data, not yours.
"""

ROBUSTNESS_DESCRIPTION = """\
Re-encode each clip (H.264 CRF 18/23/28/35, lossless control), downscale it by
half, convert its frame rate (15 and 10 fps), blend frames (temporal smoothing),
score every variant and report how far the features and P(AI) move.
Needs the ffmpeg command. Writes OUT/robustness.json and OUT/robustness.md.
"""


def _progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )


def register(sub: Any) -> None:
    """Add the `extract`, `train`, `eval` and `robustness` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "extract",
        help="labelled clips -> feature table (Parquet), resumable",
        description=EXTRACT_DESCRIPTION,
        formatter_class=fmt,
    )
    p.add_argument("source", type=Path, metavar="SOURCE", help="folder (real/, ai/<gen>/) or CSV")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="DIR", help="table folder")
    p.add_argument(
        "--all-windows",
        action="store_true",
        help="also every window along each clip (default: the paper's centred window only)",
    )
    p.add_argument("--hop", type=positive_int, default=1, metavar="K", help="with --all-windows: "
                   "one window every K samples (default 1)")
    p.add_argument("--chunk", type=int, default=16, metavar="N",
                   help="clips per Parquet part (work lost on interruption; default 16)")
    p.add_argument(
        "--zero-step-angle", type=float, choices=(0.0, 90.0), default=0.0, metavar="DEG",
        help="feature convention: the angle at a zero-length step (repeated frame), 0 per "
        "SPEC (default; classifiers trained here) or 90 as the upstream code (to evaluate "
        "the bundled published classifier, or to train one that matches it)",
    )
    _progress_flag(p)
    add_settings_args(p)
    p.set_defaults(func=run_extract)

    p = sub.add_parser(
        "train",
        help="feature table -> classifier artifact + model card",
        description=TRAIN_DESCRIPTION,
        formatter_class=fmt,
    )
    p.add_argument("table", type=Path, metavar="TABLE", help="feature table from restrav extract")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="DIR", help="artifact folder")
    p.add_argument("--kind", choices=KINDS, default="mlp", help="classifier (default mlp)")
    p.add_argument("--split", choices=["stratified", "group", "logo"], default="stratified",
                   help="how clips are held out (default stratified)")
    p.add_argument("--windows", choices=["centre", "all"], default="centre",
                   help="train on centred windows (paper) or every extracted window")
    p.add_argument("--threshold", choices=["fpr", "f1"], default="fpr",
                   help="fpr: target false-positive rate on real clips (default); "
                   "f1: maximise F1 (paper)")
    p.add_argument("--target-fpr", type=float, default=0.01, metavar="R",
                   help="with --threshold fpr (default 0.01)")
    p.add_argument("--test-fraction", type=float, default=0.25, metavar="F",
                   help="share of clips held out (default 0.25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10, help="mlp epochs (default 10, paper)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples for the intervals (default 1000)")
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "eval",
        help="metrics with intervals, shortcut baselines, Markdown report and plots",
        description=EVAL_DESCRIPTION,
        formatter_class=fmt,
    )
    p.add_argument("table", type=Path, metavar="TABLE", help="feature table from restrav extract")
    p.add_argument("--classifier", "-c", type=Path, default=None, metavar="C",
                   help="artifact folder from restrav train or import-classifier "
                   "(default: the bundled published classifier; extract the table "
                   "with its convention, --zero-step-angle 90)")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="DIR", help="report folder")
    p.add_argument("--windows", choices=["centre", "all"], default=None,
                   help="rows to evaluate (default: as trained)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--floor-repeats", type=int, default=3, metavar="N",
                   help="real-vs-real floor repeats (0 to skip)")
    p.add_argument("--timeline", nargs="+", metavar="CLIP_ID",
                   help="clips to plot window by window (default: up to 2 per class)")
    p.add_argument("--recalibrate", type=Path, metavar="DIR",
                   help="write a copy of the classifier with its threshold set for "
                   "--target-fpr on this table's real clips")
    p.add_argument("--target-fpr", type=float, default=0.01, metavar="F",
                   help="false-positive rate on real clips for --recalibrate (default 0.01)")
    p.set_defaults(func=run_eval)

    p = sub.add_parser(
        "robustness",
        help="re-encode / downscale / retime / smooth clips and measure the drift",
        description=ROBUSTNESS_DESCRIPTION,
        formatter_class=fmt,
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="video files")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="DIR", help="report folder")
    p.add_argument("--transforms", nargs="+", choices=list(TRANSFORMS),
                   default=list(DEFAULT_TRANSFORMS), metavar="T",
                   help=f"subset of: {', '.join(TRANSFORMS)}")
    _progress_flag(p)
    add_settings_args(p)
    p.set_defaults(func=run_robustness_cmd)


def _emit(obj: Any) -> None:
    from monitor.learn.evaluation import json_ready

    sys.stdout.write(json.dumps(json_ready(obj)) + "\n")
    sys.stdout.flush()


def run_extract(args: argparse.Namespace) -> int:
    """Discover clips, extract their features; exit 1 if any clip failed."""
    from monitor.learn.dataset import extract_features  # pyarrow: the train extra
    from monitor.learn.discovery import discover  # pyarrow: the train extra

    settings = settings_from_args(args)
    clips = discover(args.source)
    embedder = build_embedder(settings)
    summary = extract_features(
        clips,
        embedder,
        args.out,
        decode_limits(settings),
        all_windows=args.all_windows,
        hop=args.hop,
        chunk_clips=args.chunk,
        backbone=settings.model.ref,
        progress=progress_enabled(args.progress),
        backbone_options={
            "image_size": settings.model.image_size,
            "normalize": settings.model.normalize,
            "dtype": settings.model.dtype,
        },
        zero_step_angle_deg=args.zero_step_angle,
    )
    for e in summary.errors:
        print(f"restrav extract: {e['clip_id']}: {e['code']}: {e['message']}", file=sys.stderr)
    _emit(
        {
            "table": str(args.out),
            "clips": summary.clips,
            "skipped_already_done": summary.skipped,
            "extracted": summary.extracted,
            "failed": summary.failed,
            "rows": summary.rows,
            "zero_step_angle_deg": args.zero_step_angle,
        }
    )
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def run_train(args: argparse.Namespace) -> int:
    """Train, write the artifact, print the held-out metrics."""
    from monitor.learn.dataset import load_table  # pyarrow: the train extra
    from monitor.learn.model_card import write_training_outputs
    from monitor.learn.training import train

    table = load_table(args.table)
    try:
        result = train(
            table,
            kind=args.kind,
            mode=args.split,
            windows=args.windows,
            threshold_mode=args.threshold,
            target_fpr=args.target_fpr,
            test_fraction=args.test_fraction,
            seed=args.seed,
            n_boot=args.bootstrap,
            epochs=args.epochs,
        )
    except ValueError as exc:  # data that cannot train this kind: say why, exit 3
        raise ConfigError(f"cannot train {args.kind} on {args.table}: {exc}") from exc
    write_training_outputs(result, args.out)
    _emit(
        {
            "artifact": str(args.out),
            "kind": args.kind,
            "threshold": result.classifier.threshold,
            "threshold_mode": result.classifier.threshold_mode,
            "test": {
                f.split.name: {
                    k: f.evaluation["metrics"][k]
                    for k in ("n", "accuracy", "balanced_accuracy", "f1", "auroc")
                }
                for f in result.folds
            },
        }
    )
    return EXIT_OK


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate and write the report."""
    from monitor.core.classifier import load_classifier
    from monitor.core.published import resolve_classifier_ref
    from monitor.learn.dataset import load_table  # pyarrow: the train extra
    from monitor.learn.report import evaluate_artifact, write_report
    from monitor.learn.training import read_split

    table = load_table(args.table)
    clf_dir = resolve_classifier_ref(args.classifier)
    if clf_dir is None:
        raise ConfigError("eval needs a classifier; 'none' names no classifier")
    clf = load_classifier(clf_dir)
    report = evaluate_artifact(
        table,
        clf,
        read_split(clf_dir),
        windows=args.windows,
        n_boot=args.bootstrap,
        seed=args.seed,
        floor_repeats=args.floor_repeats,
        timeline_clips=args.timeline,
    )
    paths = write_report(report, args.out)
    for w in report["warnings"]:
        print(f"restrav eval: warning: {w}", file=sys.stderr)
    out: dict[str, Any] = {"report": [str(p) for p in paths],
                           "model": report["model"]["metrics"], "warnings": report["warnings"]}
    if args.recalibrate is not None:
        out["recalibrated"] = _recalibrate(clf, clf_dir, table, args)
    _emit(out)
    return EXIT_OK


def _recalibrate(clf: Any, clf_dir: Path, table: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Write ``clf`` with the threshold for ``--target-fpr`` on the table's real centre rows."""
    import shutil

    from monitor.learn.dataset import CENTRE
    from monitor.learn.fitting import threshold_for_fpr

    if not 0.0 <= args.target_fpr < 1.0:
        raise ConfigError(f"--target-fpr must be in [0, 1), got {args.target_fpr}")
    rows = table.windows(CENTRE)
    real = rows.features[rows.labels == 0]
    if len(real) == 0:
        raise ConfigError(f"{args.table}: no real clips to set a false-positive rate on")
    old = clf.threshold
    clf.threshold = threshold_for_fpr(clf.predict_proba(real), args.target_fpr)
    clf.threshold_mode = f"fpr<={args.target_fpr} (recalibrated on {len(real)} real clips)"
    clf.save(args.recalibrate)
    for name in ("LICENSE", "NOTICE"):
        if (clf_dir / name).is_file():
            shutil.copyfile(clf_dir / name, args.recalibrate / name)
    return {"artifact": str(args.recalibrate), "threshold": clf.threshold,
            "previous_threshold": old, "real_clips": len(real)}


def run_robustness_cmd(args: argparse.Namespace) -> int:
    """Transform, score, report; exit 1 if any variant failed."""
    from monitor.core.pipeline import score_file
    from monitor.learn.evaluation import json_ready

    settings = settings_from_args(args)
    embedder = build_embedder(settings)
    clf = build_classifier(settings, embedder.embedding_dim)
    limits = decode_limits(settings)
    outcomes = run_robustness(
        args.paths,
        lambda p: score_file(p, embedder, clf, limits),
        args.transforms,
        progress=progress_enabled(args.progress),
    )
    report = robustness_report(outcomes, clf.threshold if clf is not None else None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robustness.json").write_text(
        json.dumps(json_ready(report), indent=2) + "\n", encoding="utf-8"
    )
    (args.out / "robustness.md").write_text(robustness_markdown(report), encoding="utf-8")
    _emit({"report": str(args.out), "transforms": report["transforms"]})
    failed = [o for o in outcomes if o.error]
    for o in failed:
        print(f"restrav robustness: {o.clip} [{o.transform}]: {o.error}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK
