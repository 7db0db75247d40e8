#!/usr/bin/env bash
# The suite's CUDA path checked and measured on a GPU node in one command, from the repository root:
#   scripts/gpu_check.sh OUTDIR --wheels DIR     # node without internet: missing packages from DIR (scripts/gpu_wheels.sh)
#   scripts/gpu_check.sh OUTDIR                  # node with internet: missing packages from the package index
#   scripts/gpu_check.sh --dry-run OUTDIR        # every step on the CPU with tiny settings, installing nothing
# Steps: 1 versions; 2 offline install (nothing the node has is replaced); 3 pytest -m gpu; 4 scripts/bench.py on
# MNIST -> results/bench_cuda.md; 5 the MNIST half of Table 2, jobs sharing the GPU, timed; 6 results into OUTDIR
# (at most 8 files). MNIST is read from $AOS_DATA_DIR/MNIST/raw (default ./data), plain or gzipped IDX files.
# Python: $PYTHON (default python3), the interpreter that holds PyTorch.
set -uo pipefail

JOBS=6              # Table 2 jobs at a time on one GPU (hydra.launcher.n_jobs); --jobs N
PYTEST_LIMIT=120    # seconds for step 3
BENCH_LIMIT=120     # seconds for step 4
GRID_LIMIT=210      # seconds for step 5 (its goal: 180); with the limits above the check ends within 8.5 minutes
GRID_GOAL=180       # seconds of wall time for the 30-job MNIST grid, so that all of Table 2 fits in 10 minutes

usage() { echo "usage: scripts/gpu_check.sh [--dry-run] OUTDIR [--wheels DIR] [--jobs N]" >&2; exit 2; }
fail() { echo "aos_bench: $1" >&2; exit 2; }
say() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

dry_run=0 out="" wheels="" jobs=$JOBS
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --wheels) (($# >= 2)) || usage; wheels=$2; shift 2 ;;
    --jobs) (($# >= 2)) || usage; jobs=$2; shift 2 ;;
    -*) usage ;;
    *) [[ -z $out ]] || usage; out=$1; shift ;;
  esac
done
[[ -n $out ]] || usage
[[ $jobs =~ ^[1-9][0-9]*$ ]] || fail "--jobs=$jobs: allowed: a whole number >= 1"
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

say "1/6 versions"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
  echo "nvidia-smi: not found"
fi
"$py" -c 'import platform, torch, torchvision as tv; print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {tv.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else None}")' \
  || fail "PYTHON=$py: allowed: a Python that imports torch and torchvision"
if ((dry_run)); then
  device=cpu
else
  "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' || fail "torch.cuda.is_available()=False: allowed: a node with a CUDA GPU (or --dry-run)"
  device=cuda
fi

install() {
  # Every installed package pinned to its version: pip adds what is missing and never replaces what is there (torch).
  "$py" -m pip list --format=freeze 2>/dev/null | grep -v '^-e ' >"$work/installed.txt"
  local source=(--no-index)
  [[ -n $wheels ]] && source+=(--find-links "$wheels")
  ((dry_run)) || [[ -n $wheels ]] || source=()  # a real run without --wheels installs from the package index
  local dry=()
  ((dry_run)) && dry=(--dry-run)
  # Should a wheel need a newer version of a small package the node has (certifi, say), pin only the GPU stack.
  grep -iE '^(torch|triton|numpy|nvidia|cuda)' "$work/installed.txt" >"$work/gpu_stack.txt"
  local pins
  for pins in installed gpu_stack; do
    "$py" -m pip install "${dry[@]}" "${source[@]}" -c "$work/$pins.txt" -r scripts/gpu_requirements.txt \
      | { grep -v '^Requirement already satisfied' || true; } && break
    [[ $pins == gpu_stack ]] && return 1
    echo "pip cannot add the missing packages without replacing one: again, with only torch*, triton, numpy, nvidia*, cuda* pinned"
  done
  # Packages whose needs are the node's stack, without those needs (gpu_requirements_nodeps.txt).
  "$py" -m pip install "${dry[@]}" "${source[@]}" --no-deps -r scripts/gpu_requirements_nodeps.txt \
    | { grep -v '^Requirement already satisfied' || true; } || return
  # The project itself without its dependencies: the node logs with mlflow-skinny, not mlflow (gpu_requirements.txt).
  "$py" -m pip install "${dry[@]}" --no-index --no-deps --no-build-isolation -e . || return
  if ((dry_run)) && [[ -n $wheels ]]; then
    # What a node with none of these packages would install: all of it from the folder, for CPython 3.12, no torch.
    local tags=()
    for glibc in 17 24 27 28 31 34 35; do tags+=(--platform "manylinux_2_${glibc}_x86_64"); done
    "$py" -m pip install --dry-run --ignore-installed --no-index --find-links "$wheels" --only-binary=:all: \
      --implementation cp --python-version 3.12 "${tags[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      --report "$work/fresh.json" -r scripts/gpu_requirements.txt | tail -1 || return
    if grep -q '"name": "torch"' "$work/fresh.json"; then echo "a fresh install would pull torch"; return 1; fi
    "$py" -m pip install --dry-run --ignore-installed --no-index --find-links "$wheels" --only-binary=:all: --no-deps \
      --implementation cp --python-version 3.12 -r scripts/gpu_requirements_nodeps.txt | tail -1 || return
  fi
  "$py" -c 'import hydra, omegaconf, mlflow, sqlalchemy, alembic, hydra_plugins.hydra_joblib_launcher, imblearn; print("imports: ok")'
}
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
say "4/6 scripts/bench.py on MNIST, $device"
if ((dry_run)); then
  bench_file=$out/bench_dry_run.md
  step timeout -k 10 "$BENCH_LIMIT" "$py" scripts/bench.py --device cpu --steps 2 --warmup 1 --data-dir "$(unpacked_mnist)" >"$bench_file"
else
  bench_file=$repo/results/bench_cuda.md
  step timeout -k 10 "$BENCH_LIMIT" "$py" scripts/bench.py --device cuda --repeats 3 --write --data-dir "$(unpacked_mnist)"
fi

grid=(-m aos_bench -m experiment=table2 dataset=mnist hydra/launcher=joblib "hydra.launcher.n_jobs=$jobs")
((dry_run)) && grid+=(train=smoke seed=0 imbalance.mu=0.3 method=aos)  # 1 job of 6 steps instead of 30 full ones
grid_section() {
  # The grid's wall time and finished jobs, as a section of the bench file (replaced on a rerun).
  local card="the CPU (dry run: 1 job of train=smoke)"
  ((dry_run)) || card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  "$py" - "$bench_file" "$1" "$work/mlruns/mlflow.db" "$card" "$dry_run" "$jobs" "$GRID_GOAL" "python ${grid[*]}" <<'EOF'
import sqlite3, sys
from pathlib import Path
path, seconds, db, card, dry_run, jobs, goal, command = sys.argv[1:]
with sqlite3.connect(db) as store:  # job runs carry a config_hash tag; the sweep's parent run does not
    status = dict(store.execute("SELECT r.status, COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'config_hash' GROUP BY r.status"))
met = float(seconds) <= float(goal) and status.get("FINISHED") == 30
verdict = "" if dry_run == "1" else f"; goal <= {goal} s for 30 jobs: {'met' if met else 'NOT met'}"
begin, end = "<!-- gpu_check.sh table2 mnist grid begin -->", "<!-- gpu_check.sh table2 mnist grid end -->"
text = "\n".join([
    begin, f"## Table 2, MNIST half, on {card}: {sum(status.values())} jobs, {jobs} at a time", "", f"`{command}`", "",
    f"- wall time {float(seconds):.1f} s for {sum(status.values())} jobs "
    f"({', '.join(f'{n} {s}' for s, n in sorted(status.items()))}){verdict}", end, "",
])
old = Path(path).read_text() if Path(path).exists() else ""
if begin in old and end in old:
    old = old[: old.index(begin)] + old[old.index(end) + len(end) + 1 :]
Path(path).write_text(old + ("" if old.endswith("\n\n") or not old else "\n") + text)
print(text)
EOF
}
say "5/6 the MNIST half of Table 2, $jobs jobs at a time"
start=$(date +%s.%N)
(cd "$work" && timeout -k 10 "$GRID_LIMIT" "$py" "${grid[@]}" "hydra.sweep.dir=$work/multirun") || { echo "step failed (exit $?): grid"; failed+=(grid); }
seconds=$(awk "BEGIN { print $(date +%s.%N) - $start }")
echo "grid wall time: $seconds s"
step grid_section "$seconds"

say "6/6 results into $out"
[[ $bench_file == "$out"/* ]] || cp "$bench_file" "$out/"
cp "$work"/multirun/table2.{md,csv,png} "$out/" 2>/dev/null || echo "no report: the grid did not finish"
tar -czf "$out/mlruns.tar.gz" -C "$work" mlruns multirun 2>/dev/null || echo "no MLflow store to pack"
ls -l "$out"
rm -rf "$work"
if ((${#failed[@]})); then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
