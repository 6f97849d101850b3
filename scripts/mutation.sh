#!/usr/bin/env bash
# Mutation testing (mutmut) on the modules whose bugs lose data or give wrong verdicts,
# each against its fast unit test files. Not part of CI (minutes per module); run it
# after changing one of these modules and record the score in TESTING.md.
#
#   ./scripts/mutation.sh                 every target below
#   ./scripts/mutation.sh geometry queue  only those
#   MUTATION_JOBS=2 MUTATION_DIR=/tmp/m ./scripts/mutation.sh classifier
#   MUTATION_REPORT_ONLY=1 ./scripts/mutation.sh geometry   the last run's figures again
#
# Each target runs in its own copy of the tree ($MUTATION_DIR/<target>, kept so that
# `cd $MUTATION_DIR/<target> && ../../.venv/bin/mutmut show <mutant>` works), with a
# [tool.mutmut] section appended to that copy's pyproject.toml. The repository is not
# touched. Prints one line per target (killed, survived, timeouts, no tests, score)
# and writes the surviving mutants' names to $MUTATION_DIR/<target>/survivors.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MUTMUT=$ROOT/.venv/bin/mutmut
[ -x "$MUTMUT" ] || { echo "mutmut missing: .venv/bin/pip install -e '.[dev]'" >&2; exit 2; }
OUT=${MUTATION_DIR:-${TMPDIR:-/tmp}/restrav-mutation}
JOBS=${MUTATION_JOBS:-1}

# target: files to mutate ; test files that judge them
declare -A MUTATE TESTS
MUTATE[geometry]="monitor/geometry.py"
TESTS[geometry]="tests/test_geometry.py tests/test_window_ring.py"
MUTATE[sampler]="monitor/sampler.py"
TESTS[sampler]="tests/test_sampling.py tests/test_live_sampler.py"
MUTATE[classifier]="monitor/classifier.py"
TESTS[classifier]="tests/test_classifier.py tests/test_classifier_kinds.py"
MUTATE[queue]="monitor/queue/answers.py monitor/queue/leases.py"
TESTS[queue]="tests/test_queue.py tests/test_queue_fencing.py tests/test_queue_duplicates.py"
MUTATE[leases]="monitor/leases.py monitor/sinks/fenced.py"
TESTS[leases]="tests/test_leases.py"
MUTATE[desired]="monitor/desired.py"
TESTS[desired]="tests/test_cluster.py"
ALL="geometry sampler classifier queue leases desired"

toml_list() { printf '"%s", ' "$@" | sed 's/, $//'; }

run_target() {  # a fresh copy of the tree with this target's [tool.mutmut], then mutmut run
  local target=$1 dir=$2
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$ROOT" && git ls-files -co --exclude-standard -z monitor workers tests examples pyproject.toml \
     | xargs -0 cp --parents -t "$dir")
  # shellcheck disable=SC2086
  cat >> "$dir/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["monitor"]
only_mutate = [$(toml_list ${MUTATE[$target]})]
also_copy = ["workers", "examples"]
pytest_add_cli_args_test_selection = [$(toml_list ${TESTS[$target]})]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]
TOML
  echo "== $target: ${MUTATE[$target]} against ${TESTS[$target]}" >&2
  (cd "$dir" && "$MUTMUT" run --max-children "$JOBS" > run.log 2>&1) || {
    echo "$target: mutmut failed, see $dir/run.log" >&2; tail -20 "$dir/run.log" >&2; return 1; }
}

report_target() {  # the score line and survivors.txt of the last run in $dir
  local target=$1 dir=$2
  (cd "$dir" && { "$MUTMUT" export-cicd-stats >/dev/null 2>&1 || true; }
   "$MUTMUT" results > survivors.txt 2>&1 || true)
  "$ROOT/.venv/bin/python" - "$dir" "$target" <<'PY'
import json, sys
from pathlib import Path
d, target = Path(sys.argv[1]), sys.argv[2]
s = json.loads((d / "mutants" / "mutmut-cicd-stats.json").read_text())
# mutmut's own score: killed and timed out over all but the skipped (a mutant that no
# test reaches counts as surviving)
judged = s["total"] - s.get("skipped", 0)
killed = s["killed"] + s.get("timeout", 0)
score = 100.0 * killed / judged if judged else float("nan")
print(f"{target}: {s['total']} mutants, {s['killed']} killed, {s.get('timeout', 0)} timeouts, "
      f"{s['survived']} survived, {s.get('no_tests', 0)} without tests, "
      f"{s.get('skipped', 0)} skipped: score {score:.1f} % (killed + timeouts of all not skipped)")
PY
}

for target in ${@:-$ALL}; do
  [ -n "${MUTATE[$target]:-}" ] || { echo "unknown target $target (one of: $ALL)" >&2; exit 2; }
  dir=$OUT/$target
  if [ -z "${MUTATION_REPORT_ONLY:-}" ]; then
    run_target "$target" "$dir" || continue
  fi
  report_target "$target" "$dir"
done
