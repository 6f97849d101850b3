#!/usr/bin/env bash
# Mutation testing (mutmut) on the modules whose bugs lose data or give wrong verdicts,
# each against its fast unit test files. Not part of CI (minutes per module); run it
# after changing one of these modules and record the score in TESTING.md.
#
#   ./scripts/mutation.sh                 every target below
#   ./scripts/mutation.sh geometry queue  only those
#   MUTATION_JOBS=2 MUTATION_DIR=/tmp/m ./scripts/mutation.sh classifier
#   MUTATION_REPORT_ONLY=1 ./scripts/mutation.sh geometry   the last run's figures again
#   MUTATION_SAMPLE=37 ./scripts/mutation.sh queue   a systematic sample: only the mutants
#     whose number (mutmut numbers each function's mutants 1, 2, ...) ends in 3 or 7,
#     about a fifth of each function's, for a target too slow to run whole; the score
#     line then says "sample" and is an estimate
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
# one thread per test process: the machine is shared, and a torch thread pool in a forked
# process can hang
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# target: files to mutate ; test files that judge them
declare -A MUTATE TESTS
MUTATE[geometry]="monitor/core/geometry.py"
TESTS[geometry]="tests/test_geometry.py tests/test_window_ring.py"
MUTATE[sampler]="monitor/media/sampler.py"
TESTS[sampler]="tests/test_sampling.py tests/test_live_sampler.py"
MUTATE[classifier]="monitor/core/classifier.py monitor/learn/fitting.py"
TESTS[classifier]="tests/test_classifier.py tests/test_classifier_kinds.py"
MUTATE[queue]="monitor/queue/answers.py monitor/queue/leases.py"
TESTS[queue]="tests/test_queue.py tests/test_queue_fencing.py tests/test_queue_duplicates.py"
MUTATE[leases]="monitor/cluster/leases.py monitor/live/sinks/fenced.py"
TESTS[leases]="tests/test_leases.py"
MUTATE[desired]="monitor/live/desired.py"
TESTS[desired]="tests/test_desired.py"
ALL="geometry sampler classifier queue leases desired"
# mutmut's per-mutant limit is (estimated test time + constant) x multiplier (x 2 in CPU
# seconds). The estimate is each test's own time in the clean run, without the set-up a
# fresh worker pays again (a Redis server, the tiny model, imports): where that set-up
# dominates, a small constant stops sound mutants with SIGXCPU and records them as
# timeouts (counted as killed); a large multiplier makes a looping mutant slow to stop.
# MUTATION_TIMEOUT_CONSTANT and MUTATION_TIMEOUT_MULTIPLIER override these.
declare -A TCONST TMULT
TCONST[queue]=30; TMULT[queue]=5
TCONST[desired]=10; TMULT[desired]=5
# where a file holds more than the subject, only these functions (mutmut's fnmatch names;
# MUTATION_ALL=1 mutates every function of the files)
declare -A FOCUS
FOCUS[classifier]="monitor.learn.fitting.x_threshold_* monitor.core.classifier.xǁClassifierǁ*
  monitor.core.classifier.x_load_classifier* monitor.core.classifier.xǁScalerǁ*"
FOCUS[queue]="monitor.queue.answers.xǁAnswersǁpublish* monitor.queue.answers.xǁAnswersǁ_write*
  monitor.queue.answers.xǁAnswersǁduplicate* monitor.queue.answers.xǁAnswersǁreject*
  monitor.queue.answers.xǁAnswersǁfinish* monitor.queue.leases.xǁLeasesǁtake*
  monitor.queue.leases.xǁLeasesǁgive_back* monitor.queue.leases.xǁLeasesǁrelease*"

focus_of() {  # the mutant name patterns of a target (empty: all), narrowed to the sample
  local target=$1 pats="" p d out=""
  local -; set -f  # the patterns are not file names
  [ -n "${MUTATION_ALL:-}" ] || pats=${FOCUS[$target]:-}
  [ -n "${MUTATION_SAMPLE:-}" ] || { echo "$pats"; return; }
  for p in ${pats:-"*"}; do
    for d in $(echo "$MUTATION_SAMPLE" | grep -o .); do out="$out ${p}__mutmut_*$d"; done
  done
  echo "$out"
}

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
pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q", "--hypothesis-profile=mutation"]
# torch is not fork-safe: forked straight from the process that ran the suite, workers
# hung in torch's thread pool and equivalent mutants were recorded as timeouts
process_isolation = "forkserver"
timeout_constant = ${MUTATION_TIMEOUT_CONSTANT:-${TCONST[$target]:-1.0}}
timeout_multiplier = ${MUTATION_TIMEOUT_MULTIPLIER:-${TMULT[$target]:-15.0}}
TOML
  echo "== $target: ${MUTATE[$target]} against ${TESTS[$target]}" >&2
  local focus
  focus=$(focus_of "$target")
  if [ -n "${MUTATION_SAMPLE:-}" ]; then
    # mutmut picks a mutant's tests by its function's name, which a pattern on mutant
    # numbers does not match: name the sampled mutants one by one. A first run that
    # matches no mutant generates them and records which tests reach which function.
    (cd "$dir" && "$MUTMUT" run --max-children "$JOBS" none__mutmut_0 > gen.log 2>&1) || true
    # shellcheck disable=SC2086
    focus=$("$ROOT/.venv/bin/python" - "$dir" $focus <<'PY'
import fnmatch, json, sys
from pathlib import Path
pats = sys.argv[2:]
for meta in sorted((Path(sys.argv[1]) / "mutants").rglob("*.meta")):
    for name in json.loads(meta.read_text())["exit_code_by_key"]:
        if any(fnmatch.fnmatchcase(name, p) for p in pats):
            print(name)
PY
)
    [ -n "$focus" ] || { echo "$target: no mutants sampled, see $dir/gen.log" >&2; return 1; }
  fi
  # shellcheck disable=SC2086
  (cd "$dir" && "$MUTMUT" run --max-children "$JOBS" $focus > run.log 2>&1) || {
    echo "$target: mutmut failed, see $dir/run.log" >&2; tail -20 "$dir/run.log" >&2; return 1; }
}

report_target() {  # the score line and survivors.txt of the last run in $dir
  local target=$1 dir=$2 focus
  focus=$(focus_of "$target")
  (cd "$dir" && "$MUTMUT" results --all true > all.txt 2>&1) || true
  "$ROOT/.venv/bin/python" - "$dir" "$target" "$focus" <<'PY'
import collections, fnmatch, sys
from pathlib import Path
d, target, focus = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split()
status = {}
for line in (d / "all.txt").read_text().splitlines():
    name, _, state = line.strip().rpartition(": ")
    if name and (not focus or any(fnmatch.fnmatchcase(name, f) for f in focus)):
        status[name] = state
n = collections.Counter(status.values())
(d / "survivors.txt").write_text("".join(f"{k}\n" for k, v in status.items() if v == "survived"))
# mutmut's score: killed and timed out over all checked but the skipped; a mutant that
# no test reaches ("no tests") counts as surviving
checked = len(status) - n["not checked"] - n["skipped"]
killed = n["killed"] + n["timeout"]
score = 100.0 * killed / checked if checked else float("nan")
kind = "sample of " if any("__mutmut_" in f for f in focus) else ""
print(f"{target}: {kind}{len(status)} mutants, {n['killed']} killed, {n['timeout']} timeouts, "
      f"{n['survived']} survived, {n['no tests']} without tests, {n['not checked']} not "
      f"checked: score {score:.1f} % (killed + timeouts of those checked)")
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
