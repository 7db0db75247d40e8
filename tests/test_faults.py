"""Faults lose nothing: a signal ends the run KILLED, a NaN loss FAILED with its step, a bad image is named or skipped,
and a killed cache write leaves no half file."""

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import ROOT, make_config
from omegaconf import OmegaConf
from test_data import intel_cfg, write_image_folder

from aos_bench import data, job
from aos_bench.errors import Diverged, UsageError

LONG = ["dataset=synthetic", "train=smoke", "train.max_steps=null", "train.epochs=100000"]  # trains until stopped


def store_runs(uri: str) -> list:
    """The runs of the aos_bench experiment at uri (none when the store is not there yet)."""
    if not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    client = mlflow.MlflowClient(uri)
    try:
        experiment = client.get_experiment_by_name("aos_bench")
        return [] if experiment is None else client.search_runs([experiment.experiment_id])
    except mlflow.exceptions.MlflowException:  # no experiment yet
        return []


def job_in(db: Path, status: str) -> bool:
    """Whether a job run (one with a config_hash) has `status` in the SQLite store db, read without MLflow's migrations."""
    query = f"SELECT 1 FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid WHERE tags.key = 'config_hash' AND runs.status = '{status}'"
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
            return bool(connection.execute(query).fetchall())
    except sqlite3.Error:  # not created yet, or its tables not yet
        return False


def start_and_stop(tmp_path: Path, signum: int, *args: str) -> tuple[subprocess.CompletedProcess, float, list]:
    """Start `python -m aos_bench ARGS`, send signum once a job run is RUNNING; the result, the seconds until the run
    is KILLED in the store and the process has exited, and the runs."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "aos_bench", *args, f"tracking.uri={uri}", f"hydra.run.dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multi"]
    # SIG_DFL for SIGINT in the child, so that Python turns Ctrl-C into KeyboardInterrupt even under a shell that ignores it
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 120
    while not job_in(tmp_path / "mlruns" / "mlflow.db", "RUNNING"):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.5)
    time.sleep(1)  # into the training loop
    process.send_signal(signum)
    start = time.monotonic()
    while not job_in(tmp_path / "mlruns" / "mlflow.db", "KILLED") and time.monotonic() < start + 60:
        time.sleep(0.1)
    out, err = process.communicate(timeout=60)
    seconds = time.monotonic() - start
    return subprocess.CompletedProcess(command, process.returncode, out, err), seconds, store_runs(uri)


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_ends_the_run_killed_and_the_process_within_5_s(tmp_path, signum):
    result, seconds, runs = start_and_stop(tmp_path, signum, *LONG)
    assert result.returncode == 128 + signum and seconds < 5, result.stderr
    assert [r.info.status for r in runs] == ["KILLED"]
    assert f"stopped by {signal.Signals(signum).name}" in runs[0].data.tags["error"] or signum == signal.SIGINT
    assert result.stderr.strip().splitlines()[-1].endswith("a run it had started is marked KILLED")


@pytest.mark.slow  # a subprocess sweep: about 30 s on 2 busy cores
def test_sigterm_during_a_sweep_marks_its_job_and_parent_killed_and_stops_it(tmp_path):
    result, seconds, runs = start_and_stop(tmp_path, signal.SIGTERM, "-m", *LONG, "seed=0,1", "hydra.callbacks.sweep.report=false")
    assert result.returncode == 143 and seconds < 5, result.stderr
    statuses = {("job" if "config_hash" in r.data.tags else "parent"): r.info.status for r in runs}
    assert statuses == {"job": "KILLED", "parent": "KILLED"} and len(runs) == 2  # the second job never started


def test_a_nan_loss_ends_the_run_failed_with_its_step_and_a_hint(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(Diverged, match=r"the training loss is nan at step \d+; lower train.lr \(now 1e\+06\)"):
        job.run(make_config("dataset=synthetic", "train=smoke", "train.lr=1e6", f"tracking.uri={uri}"))
    (run,) = store_runs(uri)
    assert run.info.status == "FAILED" and "lower train.lr" in run.data.tags["error"]
    assert "test_f1_macro" not in run.data.metrics


@pytest.fixture
def broken_intel(tmp_path: Path) -> Path:
    """A tiny Intel-style ImageFolder whose train split holds one truncated PNG and one file that is no image."""
    for split in ("seg_train", "seg_test"):
        write_image_folder(tmp_path / "data" / "intel" / split, ["a", "b", "c"], 3, 8, 8)
    train = tmp_path / "data" / "intel" / "seg_train"
    (train / "b" / "001.png").write_bytes((train / "b" / "001.png").read_bytes()[:40])  # a download cut short
    (train / "c" / "002.png").write_bytes(b"not an image")
    return tmp_path / "data"


def test_an_unreadable_image_is_named(broken_intel, tmp_path):
    with pytest.raises(UsageError, match=r"cannot decode image .*seg_train/b/001\.png: .*dataset.skip_bad=true"):
        data.load_data(intel_cfg(), broken_intel, tmp_path / "cache")


def test_skip_bad_leaves_unreadable_images_out_and_counts_them(broken_intel, tmp_path):
    cfg = OmegaConf.merge(intel_cfg(), {"skip_bad": True})
    with pytest.warns(UserWarning, match="left out 2 unreadable images"):
        loaded = data.load_data(cfg, broken_intel, tmp_path / "cache")
    assert loaded.skipped == ("b/001.png", "c/002.png")
    assert torch.bincount(loaded.train_y).tolist() == [3, 2, 2] and len(loaded.train_x) == 7
    again = data.load_data(cfg, broken_intel, tmp_path / "cache")  # from the cache, which remembers what it left out
    assert again.skipped == loaded.skipped and torch.equal(again.train_x, loaded.train_x)
    with pytest.raises(UsageError, match="seg_train/b/001.png"):  # a cache built with skip_bad does not hide them later
        data.load_data(intel_cfg(), broken_intel, tmp_path / "cache")


def test_a_killed_cache_write_leaves_no_file_a_later_run_reads(toy_intel, tmp_path, monkeypatch):
    def killed(content, file):  # half the bytes written, then Ctrl-C or SIGTERM
        file.write(b"\x80\x02half a pickle")
        raise KeyboardInterrupt

    monkeypatch.setattr(data.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        data.load_data(intel_cfg(), toy_intel, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    loaded = data.load_data(intel_cfg(), toy_intel, tmp_path / "cache")
    assert len(loaded.train_x) == 12 and len(list((tmp_path / "cache").glob("*.pt"))) == 2  # train and test split


@pytest.fixture
def toy_intel(tmp_path: Path) -> Path:
    """A data_dir holding a tiny, readable Intel-style ImageFolder."""
    for split, per_class in (("seg_train", 4), ("seg_test", 2)):
        write_image_folder(tmp_path / "data" / "intel" / split, ["a", "b", "c"], per_class, 8, 8)
    return tmp_path / "data"
