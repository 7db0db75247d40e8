#!/usr/bin/env bash
# The suite's CUDA path checked and measured on a GPU node in one command, from the repository root:
#   scripts/gpu_check.sh OUTDIR --wheels DIR     # node without internet: missing packages from DIR (scripts/gpu_wheels.sh)
#   scripts/gpu_check.sh OUTDIR                  # node with internet: missing packages from the package index
#   scripts/gpu_check.sh --dry-run OUTDIR        # every step on the CPU with tiny settings, installing nothing
# Steps: 1 versions; 2 offline install (nothing the node has is replaced); 3 pytest -m gpu; 4 scripts/bench.py on
# MNIST and scripts/bench_stack.py -> results/bench_cuda.md; 5 the MNIST grids (Table 2's MNIST half, the methods
# study's MNIST rows, the AOS sensitivity grid) through hydra/launcher=stacked, one after another, timed; their reports
# -> results/cuda/; 6 results into OUTDIR (4 files). MNIST is read from $AOS_DATA_DIR/MNIST/raw (default ./data),
# plain or gzipped IDX files. Python: $PYTHON (default python3), the interpreter that holds PyTorch.
# The grids log into the check's own store (tracking.uri), never into $MLFLOW_TRACKING_URI's.
set -uo pipefail

MAX_MODELS=64          # models per stack at most (hydra.launcher.max_models); --max-models N
PYTEST_LIMIT=75        # seconds for step 3 (26 s of tests on an H100)
BENCH_LIMIT=120        # seconds for scripts/bench.py in step 4
STACK_BENCH_LIMIT=120  # seconds for scripts/bench_stack.py in step 4
GRID_LIMIT=200         # seconds for step 5's grids together, each getting what those before it left (goal: 180);
                       # 75 + 120 + 120 + 200 = 515 s: with versions, install and copies the check ends within 9.5 minutes
GRID_GOAL=180          # seconds of wall time for all 230 jobs of step 5's grids
DRY_RUN_SLOWER=3       # --dry-run: each limit above times this (the CPU, often busy with other work, not the GPU node)
GRIDS=(  # step 5, one grid a line: preset|its jobs|overrides|--dry-run's jobs|--dry-run's added overrides (train=smoke)
  "table2|30|experiment=table2 dataset=mnist|2|train=smoke seed=0 imbalance.mu=0.3 method=ros,aos"
  "methods|100|experiment=methods +row=mnist_step_mu0.3,mnist_step_mu0.9|2|train=smoke seed=0 method=aos"
  "aos_sensitivity|100|experiment=aos_sensitivity|1|train=smoke seed=0 method.eps=0.1 method.p=0.5"
)

usage() { echo "usage: scripts/gpu_check.sh [--dry-run] OUTDIR [--wheels DIR] [--max-models N]" >&2; exit 2; }
fail() { echo "aos_bench: $1" >&2; exit 2; }
say() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

dry_run=0 out="" wheels="" max_models=$MAX_MODELS
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --wheels) (($# >= 2)) || usage; wheels=$2; shift 2 ;;
    --max-models) (($# >= 2)) || usage; max_models=$2; shift 2 ;;
    -*) usage ;;
    *) [[ -z $out ]] || usage; out=$1; shift ;;
  esac
done
[[ -n $out ]] || usage
[[ $max_models =~ ^[1-9][0-9]*$ ]] || fail "--max-models=$max_models: allowed: a whole number >= 1"
if [[ -n $wheels ]]; then
  compgen -G "$wheels/*.whl" >/dev/null || fail "--wheels=$wheels: allowed: a folder of .whl files (scripts/gpu_wheels.sh makes one)"
  wheels=$(cd "$wheels" && pwd)
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
data=$(cd "${AOS_DATA_DIR:-data}" 2>/dev/null && pwd) || fail "AOS_DATA_DIR=${AOS_DATA_DIR:-data}: allowed: a folder holding MNIST/raw"
raw=$data/MNIST/raw
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [[ -f $raw/$name || -f $raw/$name.gz ]] || fail "AOS_DATA_DIR=$data: allowed: a folder whose MNIST/raw holds $name or $name.gz"
done
py=$(command -v "${PYTHON:-python3}") && py=$(realpath -s "$py") || fail "PYTHON=${PYTHON:-python3}: allowed: a Python interpreter (a name on PATH or a path)"  # absolute: step 5 runs in another folder
mkdir -p "$out" && out=$(cd "$out" && pwd)
work=$(mktemp -d)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" AOS_DATA_DIR=$data AOS_CACHE_DIR=$work/cache PYTHONUNBUFFERED=1
exec > >(tee "$out/gpu_check.log") 2>&1
cd "$repo" || exit 2
failed=()
step() { "$@" || { echo "step failed (exit $?): $*"; failed+=("$1"); }; }
. "$repo/scripts/gpu_common.sh"  # versions, install

say "1/6 versions"
versions
if ((dry_run)); then
  device=cpu
  ((PYTEST_LIMIT *= DRY_RUN_SLOWER, BENCH_LIMIT *= DRY_RUN_SLOWER, STACK_BENCH_LIMIT *= DRY_RUN_SLOWER, GRID_LIMIT *= DRY_RUN_SLOWER))
else
  "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' || fail "torch.cuda.is_available()=False: allowed: a node with a CUDA GPU (or --dry-run)"
  device=cuda
fi

say "2/6 install the project without network$( ((dry_run)) && echo ' (pip --dry-run)')"
step install

say "3/6 pytest -m gpu"
step timeout -k 10 "$PYTEST_LIMIT" "$py" -m pytest -q -m gpu -rs -p no:cacheprovider

unpacked_mnist() {
  # torchvision's MNIST, the bench's reference pipeline, reads only unpacked IDX files.
  if [[ -f $raw/train-images-idx3-ubyte ]]; then echo "$data"; return; fi
  mkdir -p "$work/data/MNIST/raw"
  for file in "$raw"/*-ubyte.gz; do gunzip -c "$file" >"$work/data/MNIST/raw/$(basename "$file" .gz)"; done
  echo "$work/data"
}
say "4/6 scripts/bench.py on MNIST and scripts/bench_stack.py, $device"
if ((dry_run)); then
  bench_file=$out/bench_dry_run.md
  step timeout -k 10 "$BENCH_LIMIT" "$py" scripts/bench.py --device cpu --steps 2 --warmup 1 --data-dir "$(unpacked_mnist)" >"$bench_file"
  step timeout -k 10 "$STACK_BENCH_LIMIT" "$py" scripts/bench_stack.py --device cpu --quick --data-dir "$data" >>"$bench_file"
else
  bench_file=$repo/results/bench_cuda.md
  step timeout -k 10 "$BENCH_LIMIT" "$py" scripts/bench.py --device cuda --repeats 3 --write --data-dir "$(unpacked_mnist)"
  step timeout -k 10 "$STACK_BENCH_LIMIT" "$py" scripts/bench_stack.py --device cuda --write --data-dir "$data"
fi

grid_section() {
  # Each grid's wall time and its job runs by status (read from the check's store), as a section of the bench file.
  local card="the CPU (dry run: a job or two of train=smoke per grid)"
  ((dry_run)) || card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  "$py" - "$bench_file" "$work/grids.tsv" "$work/mlruns/mlflow.db" "$card" "$dry_run" "$GRID_GOAL" <<'EOF'
import sqlite3, sys
from pathlib import Path
path, tsv, db, card, dry_run, goal = sys.argv[1:]
QUERY = (  # a job run carries its parent's id in the tag `sweep`; the parent (one per grid), the grid's `preset`
    "SELECT r.status, COUNT(*) FROM runs r JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'sweep' "
    "JOIN tags p ON p.run_uuid = s.value AND p.key = 'preset' WHERE p.value = ? GROUP BY r.status"
)
grids = [line.split("\t") for line in Path(tsv).read_text().splitlines()]  # preset, jobs, seconds, command
status = {preset: {} for preset, *_ in grids}
if Path(db).exists():  # no store: no grid got as far as its first run
    with sqlite3.connect(db) as store:
        status = {preset: dict(store.execute(QUERY, (preset,))) for preset in status}
jobs, seconds = sum(int(g[1]) for g in grids), sum(float(g[2]) for g in grids)
finished = sum(s.get("FINISHED", 0) for s in status.values())
met = seconds <= float(goal) and finished == jobs
verdict = "" if dry_run == "1" else f"; goal <= {goal} s with all {jobs} FINISHED: {'met' if met else 'NOT met'}"
rows = [f"| {p} | `{c}` | {j} | {status[p].get('FINISHED', 0)} | {status[p].get('FAILED', 0)} | {float(t):.1f} |" for p, j, t, c in grids]
begin, end = "<!-- gpu_check.sh mnist grids begin -->", "<!-- gpu_check.sh mnist grids end -->"
text = "\n".join([
    begin, f"## The MNIST grids through hydra/launcher=stacked, on {card}: {jobs} jobs, one grid after another", "",
    "| grid | command | jobs | FINISHED | FAILED | wall time (s) |", "|---|---|---:|---:|---:|---:|", *rows, "",
    f"- wall time {seconds:.1f} s for {jobs} jobs, {finished} FINISHED{verdict}", end, "",
])
old = Path(path).read_text() if Path(path).exists() else ""
if begin in old and end in old:
    old = old[: old.index(begin)] + old[old.index(end) + len(end) + 1 :]
Path(path).write_text(old + ("" if old.endswith("\n\n") or not old else "\n") + text)
print(text)
EOF
}
say "5/6 the MNIST grids through hydra/launcher=stacked, one after another"
deadline=$(($(date +%s) + GRID_LIMIT))
: >"$work/grids.tsv"
for spec in "${GRIDS[@]}"; do
  IFS='|' read -r preset jobs overrides dry_jobs dry_overrides <<<"$spec"
  read -ra grid <<<"$overrides"
  grid=(-m aos_bench -m "${grid[@]}" hydra/launcher=stacked "hydra.launcher.max_models=$max_models")
  if ((dry_run)); then read -ra shrink <<<"$dry_overrides"; grid+=("${shrink[@]}"); jobs=$dry_jobs; fi
  left=$((deadline - $(date +%s)))
  start=$(date +%s.%N)
  if ((left > 0)); then
    (cd "$work" && timeout -k 10 "$left" "$py" "${grid[@]}" "tracking.uri=sqlite:///$work/mlruns/mlflow.db" "hydra.sweep.dir=$work/multirun/$preset") \
      || { echo "step failed (exit $?): grid $preset"; failed+=("grid:$preset"); }
  else
    echo "step failed: grid $preset: GRID_LIMIT=$GRID_LIMIT s spent by the grids before it"; failed+=("grid:$preset")
  fi
  seconds=$(awk "BEGIN { print $(date +%s.%N) - $start }")
  echo "grid $preset wall time: $seconds s"
  printf '%s\t%s\t%s\t%s\n' "$preset" "$jobs" "$seconds" "python ${grid[*]}" >>"$work/grids.tsv"
done
step grid_section

say "6/6 results into $out"
[[ $bench_file == "$out"/* ]] || cp "$bench_file" "$out/"
mkdir -p "$work/reports"  # each grid's report (md, csv, png, _runs.csv), flat
for spec in "${GRIDS[@]}"; do
  preset=${spec%%|*}
  cp "$work/multirun/$preset/$preset".{md,csv,png} "$work/multirun/$preset/${preset}_runs.csv" "$work/reports/" 2>/dev/null \
    || echo "no report of grid $preset: it did not finish"
done
if compgen -G "$work/reports/*" >/dev/null; then
  tar -czf "$out/reports.tar.gz" -C "$work/reports" .
  if ((!dry_run)); then  # a real run: the tables beside the CPU ones of results/
    mkdir -p "$repo/results/cuda" && cp "$work"/reports/*.{md,csv} "$repo/results/cuda/" && echo "reports (md, csv) -> $repo/results/cuda/"
  fi
fi
tar -czf "$out/mlruns.tar.gz" -C "$work" mlruns multirun 2>/dev/null || echo "no MLflow store to pack"
ls -l "$out"
rm -rf "$work"
if ((${#failed[@]})); then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
