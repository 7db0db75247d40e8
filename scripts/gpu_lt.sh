#!/usr/bin/env bash
# CIFAR-10-LT (experiment=cifar10_lt) on a GPU node in one command, from the repository root, with the images a
# `python -m aos_bench.pack` pack holds (the node has no CIFAR-10; docs/gpu.md says how the pack and the wheels fit
# the node's 64 MiB a call):
#   scripts/gpu_lt.sh OUTDIR --pack cifar10_pack.npz --wheels DIR [--jobs K] [--minutes M] [--store mlruns.tar.gz] [-- overrides]
#   scripts/gpu_lt.sh --dry-run OUTDIR --pack PACK [...]   # on the CPU with train=smoke, installing nothing
# Steps: 1 versions; 2 offline install (nothing the node has is replaced); 3 the sweep, K jobs at a time through
# hydra/launcher=joblib on the GPU, within M minutes (a sweep cut short resumes in the next call: give it this call's
# mlruns.tar.gz as --store); 4 into OUTDIR: the report (cifar10_lt.md, .csv, .png, _runs.csv; the jobs without a
# FINISHED run listed in it), mlruns.tar.gz (the store, to resume or to import here: docs/gpu.md) and gpu_lt.log,
# whose last lines give the wall time, the jobs FINISHED and the optimizer steps a second over all jobs.
# Python: $PYTHON (default python3), the interpreter that holds PyTorch.
set -uo pipefail

JOBS=8      # jobs at a time on the one GPU (hydra.launcher.n_jobs); not yet measured: docs/gpu.md
MINUTES=8   # minutes for step 3: within one 10-minute call with the install and the copies

usage() { echo "usage: scripts/gpu_lt.sh [--dry-run] OUTDIR --pack PACK [--wheels DIR] [--jobs K] [--minutes M] [--store TAR] [-- overrides]" >&2; exit 2; }
fail() { echo "aos_bench: $1" >&2; exit 2; }
say() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

dry_run=0 out="" pack="" wheels="" jobs=$JOBS minutes=$MINUTES store="" overrides=()
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --pack) (($# >= 2)) || usage; pack=$2; shift 2 ;;
    --wheels) (($# >= 2)) || usage; wheels=$2; shift 2 ;;
    --jobs) (($# >= 2)) || usage; jobs=$2; shift 2 ;;
    --minutes) (($# >= 2)) || usage; minutes=$2; shift 2 ;;
    --store) (($# >= 2)) || usage; store=$2; shift 2 ;;
    --) shift; overrides=("$@"); break ;;
    -*) usage ;;
    *) [[ -z $out ]] || usage; out=$1; shift ;;
  esac
done
[[ -n $out ]] || usage
[[ -f $pack && $(basename "$pack") == *_pack.npz ]] || fail "--pack=$pack: allowed: a <dataset>_pack.npz file that python -m aos_bench.pack wrote"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || fail "--jobs=$jobs: allowed: a whole number >= 1"
[[ $minutes =~ ^[1-9][0-9]*$ ]] || fail "--minutes=$minutes: allowed: a whole number >= 1"
[[ -z $store || -f $store ]] || fail "--store=$store: allowed: an mlruns.tar.gz that an earlier call left in its OUTDIR"
if [[ -n $wheels ]]; then
  compgen -G "$wheels/*.whl" >/dev/null || fail "--wheels=$wheels: allowed: a folder of .whl files (scripts/gpu_wheels.sh makes one)"
  wheels=$(cd "$wheels" && pwd)
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
py=$(command -v "${PYTHON:-python3}") && py=$(realpath -s "$py") || fail "PYTHON=${PYTHON:-python3}: allowed: a Python interpreter (a name on PATH or a path)"
mkdir -p "$out" && out=$(cd "$out" && pwd)
work=/tmp/aos_bench_gpu_lt  # fixed: the store's artifact paths stay valid where its tar is unpacked again (--store, docs/gpu.md)
rm -rf "$work" && mkdir -p "$work/data" && cp "$pack" "$work/data/"  # data_dir: the pack alone, read as its dataset
[[ -z $store ]] || tar -xzf "$store" -C "$work" || fail "--store=$store: allowed: a gzipped tar of mlruns/ (and multirun/)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" AOS_CACHE_DIR=$work/cache PYTHONUNBUFFERED=1
unset MLFLOW_TRACKING_URI  # the sweep logs into this call's own store, never a server the node's environment names
exec > >(tee "$out/gpu_lt.log") 2>&1
cd "$repo" || exit 2
. "$repo/scripts/gpu_common.sh"  # versions, install

say "1/4 versions"
versions
device=cuda threads=$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))
sweep=(experiment=cifar10_lt "${overrides[@]}")
if ((dry_run)); then
  device=cpu
  sweep+=(train=smoke seed=0 method=base,ldam_drw)
else
  "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' || fail "torch.cuda.is_available()=False: allowed: a node with a CUDA GPU (or --dry-run)"
fi

say "2/4 install the project without network$( ((dry_run)) && echo ' (pip --dry-run)')"
if [[ -z $wheels ]] && ((!dry_run)) && "$py" -c 'import hydra, omegaconf, mlflow, sqlalchemy, alembic' 2>/dev/null; then
  echo "installed already (an earlier call on this machine): no --wheels needed"  # a warm node keeps what a call installed
  "$py" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . || fail "the project's own install failed"
else
  install || fail "the install failed (a node without internet needs --wheels DIR: scripts/gpu_wheels.sh)"
fi

say "3/4 python -m aos_bench -m ${sweep[*]}: $jobs jobs at a time on $device, at most $minutes minutes"
start=$(date +%s.%N)
timeout -k 20 "$((minutes * 60))" "$py" -m aos_bench -m "${sweep[@]}" "train.device=$device" "train.threads=$threads" \
  hydra/launcher=joblib "hydra.launcher.n_jobs=$jobs" "tracking.uri=sqlite:///$work/mlruns/mlflow.db" "data_dir=$work/data" \
  "hydra.sweep.dir=$work/multirun/cifar10_lt"
status=$?
seconds=$(awk "BEGIN { print $(date +%s.%N) - $start }")
((status == 124)) && echo "the sweep reached its $minutes minutes: the next call resumes it (--store $out/mlruns.tar.gz)"

say "4/4 results into $out"
"$py" -m aos_bench.report --tracking-uri "sqlite:///$work/mlruns/mlflow.db" --out "$out" || echo "no report: no job FINISHED"
tar -czf "$out/mlruns.tar.gz" -C "$work" mlruns multirun
"$py" - "$work/mlruns/mlflow.db" "$seconds" "$start" <<'EOF'
import sqlite3, sys
db, seconds, start = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
with sqlite3.connect(db) as store:  # job runs (they carry a `sweep` tag) by status; steps of the runs this call ended
    status = dict(store.execute("SELECT r.status, COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'sweep' GROUP BY r.status"))
    steps = store.execute(
        "SELECT COALESCE(SUM(m.value), 0) FROM runs r JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = 'train_steps' "
        "WHERE r.status = 'FINISHED' AND r.end_time >= ?", (int(start * 1000),)).fetchone()[0]
print(f"wall time {seconds:.1f} s; job runs by status: {status}; {steps:.0f} optimizer steps in this call's FINISHED runs, "
      f"{steps / seconds:.1f} a second over all jobs")
EOF
rm -rf "$work"
((status == 0)) && echo "the sweep FINISHED" || exit 1
