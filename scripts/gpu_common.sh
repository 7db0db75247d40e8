#!/usr/bin/env bash
# What scripts/gpu_check.sh and scripts/gpu_lt.sh share, sourced by both: the node's versions, and the offline install
# of what it lacks. Both set py (the interpreter with torch), work (a scratch folder), wheels (a folder of .whl files,
# or empty: the package index), dry_run (1: pip --dry-run only) and fail (one line, exit 2) before sourcing it.

versions() {
  # The GPU, driver, Python, torch, torchvision, CUDA and cuDNN; stops in one line without a torch.
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  else
    echo "nvidia-smi: not found"
  fi
  "$py" -c 'import platform, torch, torchvision as tv; print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {tv.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else None}")' \
    || fail "PYTHON=$py: allowed: a Python that imports torch and torchvision"
}

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
