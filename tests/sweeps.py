"""Sweeps run as a user runs them, `python -m aos_bench -m ...` in a subprocess, and their runs read back."""

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd

# the smoke preset shrunk to one row, one optimizer step per job and no report at its end
TINY = ["experiment=smoke", "imbalance.mu=0.3", "train.max_steps=1", "hydra.callbacks.sweep.report=false"]



def copy_store(empty_store: Path, folder: Path) -> str:
    """A copy of empty_store at folder/mlflow.db; returns its tracking URI."""
    folder.mkdir(exist_ok=True)
    shutil.copy(empty_store, folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


def sweep_cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`python -m aos_bench -m ARGS` started in tmp_path: store tmp_path/mlruns, sweep dir tmp_path/multirun."""
    command = [sys.executable, "-m", "aos_bench", "-m", *args, f"hydra.sweep.dir={tmp_path}/multirun"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def stored(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(parent runs, child runs) of the store under tmp_path."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    table = mlflow.search_runs(experiment_names=["aos_bench"])
    is_parent = table["tags.sweep_key"].notna()
    return table[is_parent], table[~is_parent]
