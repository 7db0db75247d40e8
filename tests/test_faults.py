"""Faults lose nothing: a signal ends the run KILLED, a NaN loss FAILED with its step, a bad image is named or skipped,
and a killed cache write leaves no half file."""

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import ROOT, make_config
from images import intel_cfg, write_image_folder
from omegaconf import OmegaConf
from sweeps import copy_store

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
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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
    tag = runs[0].data.tags["error"]  # exactly what docs/configuration.md promises for Ctrl-C
    assert tag == "stopped by SIGINT" if signum == signal.SIGINT else tag.startswith("stopped by SIGTERM (scancel"), tag
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


def test_a_diverged_run_is_one_line_on_the_terminal_and_exit_code_1(tmp_path):
    result = aos_bench(tmp_path, "dataset=synthetic", "train=smoke", "train.lr=1e6", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if not line.startswith(("[", "  "))]  # the log lines: [time], table
    assert re.fullmatch(r"aos_bench: the training loss is nan at step \d+; lower train.lr \(now 1e\+06\); its run is marked FAILED", line)


@pytest.mark.slow  # a subprocess sweep of 3 jobs: about 25 s on 2 busy cores
def test_a_sweep_runs_past_a_diverged_job_reports_the_others_and_names_it(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = aos_bench(tmp_path, "-m", "dataset=synthetic", "train=smoke", "train.lr=0.05,1e6", "seed=0,1", f"tracking.uri={uri}")
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr
    escaped = uri.replace(":", "\\:")  # as Hydra writes a job's override values
    failed = [f"`dataset=synthetic train=smoke train.lr=1000000.0 seed={seed} tracking.uri={escaped}` (Diverged: the training loss is nan" for seed in (0, 1)]
    assert re.fullmatch(rf"aos_bench: 2 of the sweep's jobs failed: {re.escape(failed[0])}.*, {re.escape(failed[1])}.*; the same command reruns them",
                        result.stderr.splitlines()[-1])
    runs = store_runs(uri)
    parent = next(run for run in runs if "sweep_key" in run.data.tags)
    assert parent.info.status == "FAILED" and parent.data.tags["error"] == result.stderr.splitlines()[-1].removeprefix("aos_bench: ")
    assert sorted(run.info.status for run in runs if run is not parent) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    report = (tmp_path / "out" / "multirun" / "sweep.md").read_text()  # the jobs that finished, and the ones that did not
    assert "| synthetic | 0.3 | 500 | 0.1 | AOS |" in report and "2 FINISHED runs read back" in report
    assert report.count(": FAILED, Diverged: the training loss is nan") == 2


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


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 24 MB at tmp_path/disk, to fill or to remount read-only (mount needs root: skips, saying so, without)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Fill the disk that holds folder to its last byte; the file that fills it."""
    filler = folder / "filler"
    with open(filler, "wb") as file, contextlib.suppress(OSError):  # ENOSPC, at a write or at the close's flush
        while True:
            file.write(bytes(2**20))
            file.flush()
    return filler


def aos_bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m aos_bench ARGS` started in tmp_path, its Hydra output dirs under tmp_path/out."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "aos_bench", *args, f"hydra.run.dir={tmp_path}/out/run", f"hydra.sweep.dir={tmp_path}/out/multirun"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("fault", ["read-only folder", "read-only store", "full disk", "locked store"])
def test_a_store_that_cannot_be_written_stops_a_run_and_a_sweep_in_one_line_before_anything(tmp_path, disk, empty_store, fault):
    uri = copy_store(empty_store, disk / "mlruns") if fault != "read-only folder" else f"sqlite:///{disk}/new/mlflow.db"
    with contextlib.ExitStack() as mended:
        if fault.startswith("read-only"):
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            mended.callback(subprocess.run, ["mount", "-o", "remount,rw", str(disk)], check=True)
        elif fault == "full disk":
            mended.callback(fill(disk).unlink)
        else:  # another process (a long write, a stuck sqlite3 shell) holds the store's exclusive lock
            locker = sqlite3.connect(uri.removeprefix("sqlite:///"), isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            mended.callback(locker.close)
        results = [aos_bench(tmp_path, *mode, "dataset=synthetic", "train=smoke", f"tracking.uri={uri}") for mode in ([], ["-m", "seed=0,1"])]
    writable = "make it writable or set tracking.uri to a place that is"
    hint = {"read-only folder": f"{disk}/new cannot be written (read-only); {writable}",
            "read-only store": f"{disk}/mlruns cannot be written (read-only); {writable}",
            "full disk": f"the disk that holds {disk}/mlruns is full; free space there",
            "locked store": f"another process holds the write lock of {disk}/mlruns/mlflow.db (`fuser` names it); let it finish or stop it"}[fault]
    for result in results:
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"aos_bench: tracking.uri={uri}: {hint}, then rerun the same command"]
    assert not (tmp_path / "out").exists(), "Hydra's output dirs are not written: the check runs before"
    assert store_runs(uri) == []


@pytest.mark.slow  # two subprocess sweeps: about 60 s on 2 busy cores
def test_a_disk_that_fills_during_a_sweep_ends_it_in_one_line_and_the_resume_finishes_it_clean(tmp_path, disk, empty_store):
    uri = copy_store(empty_store, disk / "mlruns")
    db = disk / "mlruns" / "mlflow.db"
    args = ["-m", "dataset=synthetic", "train=smoke", "train.max_steps=6,3000", f"tracking.uri={uri}", "hydra.callbacks.sweep.report=false"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "aos_bench", *args, f"hydra.sweep.dir={tmp_path}/multirun"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (job_in(db, "FINISHED") and job_in(db, "RUNNING")):  # the short job done, the long one training
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    filler = fill(disk)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2 and "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.startswith("aos_bench:")]
    assert lines == [f"aos_bench: tracking.uri={uri}: could not log this job's run: the disk that holds {disk}/mlruns is full; "
                     "free space there, then rerun the same command"], err

    filler.unlink()  # mended: the same command resumes, trains the long job again and ends the parent clean
    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    runs = store_runs(uri)
    parent = next(run for run in runs if "sweep_key" in run.data.tags)
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags
    finished = {run.data.params["train.max_steps"] for run in runs if run.info.status == "FINISHED" and "config_hash" in run.data.tags}
    assert finished == {"6", "3000"} and len(runs) == 4  # the parent, the short job once, the long one stopped and rerun


@pytest.mark.slow  # a subprocess run: about 20 s on 2 busy cores
def test_an_artifact_disk_that_fills_after_training_ends_the_run_in_one_line(tmp_path, disk):
    db = tmp_path / "mlruns" / "mlflow.db"  # the store's rows on a disk with room, its artifacts on the small one
    (tmp_path / "mlruns").mkdir()
    os.symlink(disk, tmp_path / "mlruns" / "artifacts")
    filler = fill(disk)
    with open(filler, "r+b") as file:  # room for the config and the small files, none for the figures
        file.truncate(filler.stat().st_size - 16 * 1024)
    result = aos_bench(tmp_path, "dataset=synthetic", "train=smoke", f"tracking.uri=sqlite:///{db}")
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == (f"aos_bench: tracking.uri=sqlite:///{db}: could not log this job's results: the disk that holds "
                                              f"{tmp_path}/mlruns is full; free space there, then rerun the same command")
    [run] = store_runs(f"sqlite:///{db}")
    assert run.info.status == "FAILED" and "test_f1_macro" in run.data.metrics  # trained and scored; its figures lost
