"""Sweeps on a real SLURM controller through hydra/launcher=submitit_slurm: nesting, the report, a cancelled job, resume;
and through hydra/launcher=slurm_detached: a launch that returns, its status, the job that closes it.

Run with `python -m pytest -m slurm` as root; the slurm_cluster fixture starts a one-node cluster
(scripts/local_slurm.sh) and skips, with the reason, where it cannot.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import ROOT
from images import write_image_folder

pytestmark = [
    pytest.mark.slurm,
    # torchvision 0.29 deprecates write_png (used here to make PNGs) on every call
    pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning"),
]

SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=2"]
DETACHED = ["hydra/launcher=slurm_detached", *SLURM[1:]]
# a job that trains long enough to be cancelled mid-run: 80 epochs of 63 steps, about 7 s on a quiet CPU core
LONG = ["dataset=synthetic", "train=smoke", "method=base", "train.max_steps=null", "train.epochs=80"]


@pytest.fixture
def env(slurm_cluster: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A bare environment for the launching process, which sbatch passes on to the jobs: this checkout's package,
    the cluster's SLURM_CONF, one torch thread per job; no AOS_DATA_DIR or MLFLOW_TRACKING_URI."""
    home = tmp_path / "home"
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "MPLCONFIGDIR": str(home / "matplotlib"),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **slurm_cluster}


def command(tmp_path: Path, *args: str, launcher: list[str] = SLURM) -> list[str]:
    """`python -m aos_bench -m ARGS` on SLURM, with the store given by tracking.uri and the sweep dir under tmp_path."""
    store = f"tracking.uri=sqlite:///{tmp_path}/store/mlflow.db"
    return [sys.executable, "-m", "aos_bench", "-m", *args, *launcher, store, f"hydra.sweep.dir={tmp_path}/multirun"]


def sweep(tmp_path: Path, env: dict[str, str], *args: str, launcher: list[str] = SLURM) -> subprocess.CompletedProcess:
    """Run the sweep's command to its end from tmp_path (a detached one returns once submitted)."""
    run = command(tmp_path, *args, launcher=launcher)
    return subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)


def stored() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(parent runs, child runs) of the store the test's sweeps write (set by store_uri)."""
    table = mlflow.search_runs(experiment_names=["aos_bench"])
    is_parent = table["tags.sweep_key"].notna()
    return table[is_parent], table[~is_parent]


@pytest.fixture(autouse=True)
def store_uri(tmp_path: Path) -> None:
    """Point this process's MLflow at the store the sweep writes."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/store/mlflow.db")


def test_four_job_sweep_nests_every_run_under_one_parent_and_writes_the_report(tmp_path, env):
    args = ["experiment=smoke", "imbalance.mu=0.3", "method=base,aos", "seed=0,1"]
    result = sweep(tmp_path, env, *args)
    assert result.returncode == 0, result.stderr
    parents, children = stored()
    assert parents["status"].tolist() == ["FINISHED"]
    assert len(children) == 4 and (children["status"] == "FINISHED").all()
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    assert sorted(zip(children["params.method.name"], children["params.seed"], strict=True)) == [
        ("aos", "0"), ("aos", "1"), ("base", "0"), ("base", "1")]
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*_[0-3]/*_result.pkl"))) == 4  # four SLURM array tasks
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents["run_id"].iloc[0], "report")}
    assert artifacts == {"report/smoke.md", "report/smoke.csv", "report/smoke.png", "report/smoke_runs.csv"}
    assert "| synthetic | 0.3 | 20 |" in (tmp_path / "multirun" / "smoke.md").read_text()


def wait_for_epoch(launcher: subprocess.Popen | None, seed: str, timeout_s: float) -> None:
    """Wait until the run of this seed is RUNNING and has logged its first epoch's train_loss (while the launcher, if
    the sweep has one still running, runs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        assert launcher is None or launcher.poll() is None, "the sweep ended before its job ran: see launcher.log"
        if mlflow.get_experiment_by_name("aos_bench") is None:  # the launcher creates it
            continue
        running = f"params.seed = '{seed}' and attributes.status = 'RUNNING'"
        runs = mlflow.search_runs(experiment_names=["aos_bench"], filter_string=running)
        if "metrics.train_loss" in runs and runs["metrics.train_loss"].notna().any():
            return
    raise AssertionError(f"no RUNNING run of seed {seed} logged an epoch within {timeout_s} s")


def array_task(index: int, env: dict[str, str]) -> str:
    """The SLURM id (<array>_<index>) of the sweep's job number `index`."""
    ids = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, check=True).stdout
    return next(job for job in ids.split() if job.endswith(f"_{index}"))


def test_cancelled_job_ends_killed_and_the_same_command_reruns_only_it(tmp_path, env):
    mlflow.search_experiments()  # the store's tables, made now: this process polls it while the launcher writes it
    log = tmp_path / "launcher.log"
    with log.open("w") as out:
        launcher = subprocess.Popen(command(tmp_path, *LONG, "seed=0,1"), cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        wait_for_epoch(launcher, "1", timeout_s=120)
        subprocess.run(["scancel", array_task(1, env)], env=env, check=True)  # as a preemption or time limit would
        launcher.wait(timeout=180)
    finally:
        launcher.kill()
    assert launcher.returncode != 0, log.read_text()
    parents, children = stored()
    assert parents["status"].tolist() == ["FAILED"] and "resumes" in parents["tags.error"].iloc[0]
    status = children.set_index("params.seed")["status"]
    assert status["0"] == "FINISHED" and status["1"] == "KILLED"
    killed = children.set_index("params.seed").loc["1"]
    assert killed["metrics.train_loss"] > 0 and pd.isna(killed.get("metrics.test_f1_macro"))  # stopped mid-training

    result = sweep(tmp_path, env, *LONG, "seed=0,1")
    assert result.returncode == 0, result.stderr
    parents_after, children_after = stored()
    assert parents_after[["run_id", "status"]].values.tolist() == [[parents["run_id"].iloc[0], "FINISHED"]]
    new = children_after[~children_after["run_id"].isin(children["run_id"])]
    assert new[["params.seed", "status"]].values.tolist() == [["1", "FINISHED"]], "only the cancelled job ran again"
    assert set(children_after["run_id"]) - set(new["run_id"]) == set(children["run_id"])  # nothing lost


def test_jobs_find_the_data_through_data_dir_and_the_store_through_tracking_uri(tmp_path, env):
    classes = ["buildings", "forest", "sea"]
    write_image_folder(tmp_path / "images" / "intel" / "seg_train", classes, 8, 24, 24)
    write_image_folder(tmp_path / "images" / "intel" / "seg_test", classes, 4, 24, 24)
    args = ["dataset=intel", "dataset.image_size=16", "imbalance=none", "method=base", "train=smoke", "seed=0",
            "data_dir=images", f"cache_dir={tmp_path}/cache"]
    result = sweep(tmp_path, env, *args)  # data_dir relative to where the command starts, as on a login node
    assert result.returncode == 0, result.stderr
    parents, children = stored()
    assert children[["status", "params.data_dir"]].values.tolist() == [["FINISHED", "images"]]
    counts = json.loads(mlflow.artifacts.load_text(f"runs:/{children['run_id'].iloc[0]}/class_counts.json"))
    assert counts["classes"] == classes and counts["imbalanced"] == [8, 8, 8]
    assert not (tmp_path / "mlruns").exists(), "the store is the one tracking.uri names"


def wait_closed(env: dict[str, str], timeout_s: float) -> pd.Series:
    """Wait until the store's one parent run has left RUNNING and its closing job has left the queue (it marks the
    parent, then writes the report); return the parent."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parent = stored()[0].iloc[0]
        closer = subprocess.run(["squeue", "-h", "-j", parent["tags.slurm_closer"]], env=env, capture_output=True, text=True, check=False)
        if parent["status"] != "RUNNING" and not closer.stdout.strip():
            return stored()[0].iloc[0]
        time.sleep(1)
    raise AssertionError(f"the parent run is still RUNNING after {timeout_s} s: its closing job did not close it")


def status(tmp_path: Path, env: dict[str, str]) -> tuple[str, dict[str, int]]:
    """`python -m aos_bench.status` of the test's store: its output and its counts by name (queued, running, FINISHED,
    FAILED, gone) with the total as `jobs`."""
    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    result = subprocess.run([sys.executable, "-m", "aos_bench.status", "--tracking-uri", store], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if " jobs: " in line)
    total, counts = line.split(" jobs: ")
    found = {"jobs": int(total), "gone": 0} | {name: int(n) for n, name in re.findall(r"(\d+) (queued|running|FINISHED|FAILED)", counts)}
    if gone := re.search(r"(\d+) gone from the queue", counts):
        found["gone"] = int(gone[1])
    return result.stdout, found


def store_counts(children: pd.DataFrame) -> dict[str, int]:
    """The job runs of the store by status, as status counts them: FAILED includes KILLED."""
    by = children["status"].value_counts()
    return {"running": by.get("RUNNING", 0), "FINISHED": by.get("FINISHED", 0), "FAILED": by.get("FAILED", 0) + by.get("KILLED", 0)}


def test_detached_launch_of_100_jobs_returns_within_10_s_and_its_status_matches_the_queue_and_the_store(tmp_path, env):
    mlflow.search_experiments()  # the store's tables, made before the timing (a first launch into a new store makes them)
    # the tasks wait a minute before they start, as on a cluster, where they would not share the login node's 2 cores
    args = ["dataset=synthetic", "train=smoke", "method=base", "seed=range(100)", "+hydra.launcher.additional_parameters.begin=now+60"]
    start = time.monotonic()
    result = sweep(tmp_path, env, *args, launcher=DETACHED)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    parents, _ = stored()
    assert parents["status"].tolist() == ["RUNNING"]  # the launch has returned; the sweep goes on
    array = parents["tags.slurm_array"].iloc[0]
    tasks = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%T"], env=env, capture_output=True, text=True, check=True)
    assert tasks.stdout.split() == ["PENDING"] * 100  # one array of 100 tasks
    assert elapsed < 10, f"the launch of 100 jobs took {elapsed:.1f} s"
    output, counts = status(tmp_path, env)
    assert counts == {"jobs": 100, "queued": 100, "running": 0, "FINISHED": 0, "FAILED": 0, "gone": 0}, output
    again = sweep(tmp_path, env, *args, launcher=DETACHED)  # the same command while its array is queued: both would run the jobs
    refused = (f"aos_bench: sweep {parents['run_id'].iloc[0]} still has jobs in SLURM's queue (array {array}): `python -m aos_bench.status "
               f"--sweep {parents['run_id'].iloc[0]}` says how far it is; wait for its end, or `scancel {array}`, then run this command again to resume it")
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [refused]
    assert stored()[0][["tags.slurm_array", "status"]].values.tolist() == [[array, "RUNNING"]]  # the sweep goes on as it was

    subprocess.run(["scancel", array], env=env, check=True)  # the whole array: its closing job still runs (afterany)
    parent = wait_closed(env, timeout_s=240)
    assert parent["status"] == "FAILED" and "100 of 100 jobs did not finish; 100 without a run (cancelled" in parent["tags.error"]
    output, counts = status(tmp_path, env)
    assert counts == {"jobs": 100, "queued": 0, "running": 0, "FINISHED": 0, "FAILED": 0, "gone": 100}, output
    assert stored()[1].empty  # no job ran


def test_detached_sweep_is_closed_by_its_last_job_and_the_same_command_reruns_only_the_cancelled_one(tmp_path, env):
    mlflow.search_experiments()  # the store's tables, made now: this process polls it while the jobs write it
    result = sweep(tmp_path, env, *LONG, "seed=0,1", launcher=DETACHED)
    assert result.returncode == 0, result.stderr
    assert stored()[0]["status"].tolist() == ["RUNNING"]
    wait_for_epoch(None, "1", timeout_s=180)
    subprocess.run(["scancel", array_task(1, env)], env=env, check=True)
    parent = wait_closed(env, timeout_s=240)
    parents, children = stored()
    assert parent["status"] == "FAILED" and "1 of 2 jobs did not finish" in parent["tags.error"], parent["tags.error"]
    assert "seed=1 (KILLED)" in parent["tags.error"]
    output, counts = status(tmp_path, env)
    assert counts == {"jobs": 2, "queued": 0, "gone": 0} | store_counts(children) == {"jobs": 2, "queued": 0, "gone": 0, "running": 0,
                                                                                        "FINISHED": 1, "FAILED": 1}, output
    assert "KILLED: base synthetic" in output and "seed=1" in output

    result = sweep(tmp_path, env, *LONG, "seed=0,1", launcher=DETACHED)  # the same command: resumes the sweep
    assert result.returncode == 0, result.stderr
    parent = wait_closed(env, timeout_s=240)
    _, children_after = stored()
    assert parent["status"] == "FINISHED" and parent["run_id"] == parents["run_id"].iloc[0]
    new = children_after[~children_after["run_id"].isin(children["run_id"])]
    assert new[["params.seed", "status"]].values.tolist() == [["1", "FINISHED"]], "only the cancelled job ran again"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"], "report")}
    assert artifacts == {"report/sweep.md", "report/sweep.csv", "report/sweep.png", "report/sweep_runs.csv"}
    assert (tmp_path / "multirun" / "sweep.md").exists()
    output, counts = status(tmp_path, env)
    assert counts == {"jobs": 2, "queued": 0, "running": 0, "FINISHED": 2, "FAILED": 0, "gone": 0}, output
