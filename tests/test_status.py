"""`python -m aos_bench.status`: how far a sweep is, counted from its store (one run per config, only the latest launch's
failures), on a store written by hand; unknown sweeps get one line. A real local sweep's status, interrupted and
resumed: tests/test_sweep.py; detached SLURM sweeps: tests/test_slurm.py."""

import subprocess
import sys
import time

import mlflow
import pytest

from aos_bench.status import main
from aos_bench.tracking import ensure_experiment

MINUTE = 60_000  # ms, as MLflow's times


def status(uri: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`python -m aos_bench.status --tracking-uri URI ARGS`."""
    command = [sys.executable, "-m", "aos_bench.status", "--tracking-uri", uri, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_counts_one_run_per_config_and_only_the_latest_launchs_failures_with_an_eta_from_finished_jobs(tmp_path, env):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment_id = ensure_experiment(uri, "aos_bench")
    launched = int(time.time() * 1000) - 30 * MINUTE
    tags = {"sweep_key": "0123456789abcdef", "jobs": "6", "launched": str(launched)}
    parent = client.create_run(experiment_id, tags=tags, run_name="smoke sweep", start_time=launched - 60 * MINUTE).info.run_id

    def job(config: str, status: str, start: int, minutes: int) -> None:
        """A job run of the sweep, of config `config`, started at `start` (ms), ended after `minutes` unless RUNNING."""
        run = client.create_run(experiment_id, start_time=start, run_name=f"job {config}",
                                tags={"sweep": parent, "mlflow.parentRunId": parent, "config_hash": config}).info.run_id
        if status != "RUNNING":
            client.set_terminated(run, status, end_time=start + minutes * MINUTE)

    job("a", "FAILED", launched - 20 * MINUTE, 1)  # failed in the launch before, FINISHED in this one
    job("a", "FINISHED", launched + 1 * MINUTE, 2)
    job("b", "FINISHED", launched - 40 * MINUTE, 4)  # done before this launch: skipped, still FINISHED
    job("c", "KILLED", launched + 2 * MINUTE, 1)  # this launch's failure
    job("d", "RUNNING", launched + 3 * MINUTE, 0)
    job("e", "FAILED", launched - 20 * MINUTE, 1)  # failed in the launch before: runs again in this one, so queued
    # f: no run yet, queued

    result = status(uri, env)  # --sweep latest
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"sweep {parent} (smoke sweep): RUNNING"
    # ETA: the finished jobs' mean (2 and 4 minutes) x 3 jobs left (2 queued, 1 running) / 1 running
    assert lines[1] == "6 jobs: 2 queued, 1 running, 2 FINISHED, 1 FAILED; ETA 9m00s"
    assert lines[2:] == ["  KILLED: job c"]

    client.set_terminated(parent, "FAILED")  # a sweep that ended: its jobs without a run will not run
    assert status(uri, env, "--sweep", parent).stdout.splitlines()[1].startswith("6 jobs: 0 queued, 1 running, 2 FINISHED, 1 FAILED, 2 not run; ended ")


def test_an_unknown_sweep_or_a_job_run_is_refused_in_one_line(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = ensure_experiment(uri, "aos_bench")
    job = mlflow.MlflowClient(uri).create_run(experiment_id, tags={"sweep": "abc"}).info.run_id
    capsys.readouterr()  # MLflow's lines as it created the store
    for args, says in [(["--sweep", "nosuchrun"], "aos_bench: status: no run 'nosuchrun' in this store"),
                       (["--sweep", job], f"aos_bench: status: run {job} is not a sweep's parent run (a job's run: its sweep is abc)"),
                       (["--experiment", "other"], f"aos_bench: status: no experiment 'other' at {uri}"),
                       ([], "aos_bench: status: no sweep in this experiment yet")]:
        with pytest.raises(SystemExit) as stopped:
            main(["--tracking-uri", uri, *args])
        out, err = capsys.readouterr()
        assert stopped.value.code == 2 and out == "", err
        assert len(err.splitlines()) == 1 and err.startswith(says), err
