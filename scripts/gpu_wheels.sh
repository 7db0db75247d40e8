#!/usr/bin/env bash
# The wheel folder for scripts/gpu_check.sh --wheels DIR: scripts/gpu_requirements.txt and all their dependencies,
# plus scripts/gpu_requirements_nodeps.txt alone,
# as binary wheels for the GPU node's Python and platform (pip download; run it where PyPI can be reached).
#   scripts/gpu_wheels.sh /work/gpu-wheels                         # CPython 3.12 on manylinux x86_64
#   scripts/gpu_wheels.sh DIR --python-version 3.11 --arch aarch64
# mlflow-skinny is pinned to the one installed here (the full mlflow brings it), so this machine opens the store the node writes.
set -euo pipefail

usage() { echo "usage: scripts/gpu_wheels.sh DIR [--python-version X.Y] [--arch x86_64|aarch64]" >&2; exit 2; }
fail() { echo "aos_bench: $1" >&2; exit 2; }

dir="" version=3.12 arch=x86_64
while (($#)); do
  case "$1" in
    --python-version) (($# >= 2)) || usage; version=$2; shift 2 ;;
    --arch) (($# >= 2)) || usage; arch=$2; shift 2 ;;
    -*) usage ;;
    *) [[ -z $dir ]] || usage; dir=$1; shift ;;
  esac
done
[[ -n $dir ]] || usage
[[ $version =~ ^3\.[0-9]+$ ]] || fail "--python-version=$version: allowed: 3.N, e.g. 3.12"
[[ $arch == x86_64 || $arch == aarch64 ]] || fail "--arch=$arch: allowed: x86_64, aarch64"

python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
platforms=()
for glibc in 17 24 27 28 31 34 35 38 39; do  # pip matches manylinux tags exactly: name every glibc a wheel may target
  platforms+=(--platform "manylinux_2_${glibc}_${arch}")
done
platforms+=(--platform "manylinux2014_${arch}")
pins=()
if mlflow=$("$python" -m pip show mlflow-skinny 2>/dev/null | sed -n 's/^Version: //p') && [[ -n $mlflow ]]; then
  pins+=("mlflow-skinny==$mlflow")
fi

mkdir -p "$dir"
# omegaconf 2.3 needs antlr4-python3-runtime 4.9, published only as source: build its (pure-Python) wheel here first.
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$dir" "antlr4-python3-runtime==4.9.*"
"$python" -m pip download --quiet --only-binary=:all: --implementation cp --python-version "$version" "${platforms[@]}" \
  --find-links "$dir" --dest "$dir" -r "$here/gpu_requirements.txt" "${pins[@]}"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$version" \
  "${platforms[@]}" --dest "$dir" -r "$here/gpu_requirements_nodeps.txt"
echo "$(ls "$dir"/*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir"
