"""Carrying a sweep to another store: the runs arrive whole, the report reads them, and the sweep resumes there."""

import json
import shlex
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from conftest import ROOT, make_config
from sweeps import TINY, copy_store, stored, sweep_cli

from aos_bench import carry, report
from aos_bench.tracking import config_hash


def test_a_carried_sweep_reports_alike_and_resumes_without_training(tmp_path, env, empty_store):
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir(), target.mkdir()
    copy_store(empty_store, source / "mlruns")
    args = [*TINY, "method=base,aos", "seed=0"]
    assert (result := sweep_cli(source, env, *args)).returncode == 0, result.stderr
    parents, children = stored(source)
    client = mlflow.MlflowClient(f"sqlite:///{source}/mlruns/mlflow.db")
    killed = children[children["params.method.name"] == "aos"]["run_id"].iloc[0]  # one job stopped before it ended: not carried
    client.set_terminated(killed, "KILLED")
    sweep = parents["run_id"].iloc[0]

    exported = tmp_path / "sweep.jsonl"
    assert carry.export_sweep(f"sqlite:///{source}/mlruns/mlflow.db", sweep, exported) == 1
    uri = f"sqlite:///{target}/mlruns/mlflow.db"
    parent_id, added, skipped = carry.import_sweep(uri, exported)
    assert (added, skipped) == (1, 0)
    assert carry.import_sweep(uri, exported)[1:] == (0, 1)  # a second import adds nothing

    _, carried = stored(target)
    assert len(carried) == 1 and (carried["tags.mlflow.parentRunId"] == parent_id).all() and (carried["tags.sweep"] == parent_id).all()
    left = children[children["run_id"] != killed].dropna(axis="columns", how="all").set_index("tags.config_hash").sort_index()
    right = carried.set_index("tags.config_hash").sort_index()
    same = [c for c in left.columns if c.startswith(("params.", "metrics."))]
    pd.testing.assert_frame_equal(left[same], right[same])
    assert (right["tags.carried_from"].sort_index() == left["run_id"]).all()
    target_client = mlflow.MlflowClient(uri)
    for run_id, source_id in zip(right["run_id"], left["run_id"], strict=True):
        history = [(m.step, m.value) for m in target_client.get_metric_history(run_id, "train_loss")]
        assert history and history == [(m.step, m.value) for m in client.get_metric_history(source_id, "train_loss")]
        names = {a.path for a in target_client.list_artifacts(run_id)}
        assert {"config.yaml", "class_counts.json", "per_class.csv"} <= names and not any(n.endswith(".png") for n in names)

    for store, folder in ((f"sqlite:///{source}/mlruns/mlflow.db", "a"), (uri, "b")):
        report.main(["--tracking-uri", store, "--out", str(tmp_path / folder)])
    runs_a, runs_b = (pd.read_csv(tmp_path / f / "smoke_runs.csv") for f in "ab")
    pd.testing.assert_frame_equal(runs_a, runs_b)  # the same table, seed by seed, from either store
    assert f"(FINISHED, carried from sweep `{sweep}` of another store)" in (tmp_path / "b" / "smoke.md").read_text()

    assert (result := sweep_cli(target, env, *args)).returncode == 0, result.stderr  # the same command, in the target
    assert result.stdout.count("skipped: this sweep already has a FINISHED run") == 1
    parents_after, children_after = stored(target)
    assert parents_after["run_id"].tolist() == [parent_id] and parents_after["status"].iloc[0] == "FINISHED"
    assert len(children_after[children_after["status"] == "FINISHED"]) == 2  # only the KILLED job trained again


def test_carry_names_a_missing_sweep_or_file_in_one_line(tmp_path, empty_store):
    uri = copy_store(empty_store, tmp_path / "store")
    experiment = mlflow.MlflowClient(uri).create_experiment("aos_bench")
    job = mlflow.MlflowClient(uri).create_run(experiment).info.run_id  # a run with no sweep_key: not a sweep
    for args, says in (
        (["export", str(tmp_path / "x.jsonl"), "--sweep", job], f"--sweep={job} is a job run, not a sweep's parent run"),
        (["export", str(tmp_path / "x.jsonl"), "--sweep", "0" * 32], f"--sweep={'0' * 32}: no such run"),
        (["import", str(tmp_path / "none.jsonl")], "none.jsonl: no such file"),
        (["export", str(tmp_path / "x.jsonl")], "export needs --sweep"),
    ):
        result = subprocess.run([sys.executable, "-m", "aos_bench.carry", *args, "--tracking-uri", uri], capture_output=True, text=True)
        assert result.returncode == 1 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    """MLflow's artifact downloads print no progress bars into the tests' output."""
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.mark.parametrize("path", sorted((ROOT / "results" / "sweeps").glob("*.jsonl")), ids=lambda path: path.name)
def test_a_committed_sweep_holds_one_finished_run_per_job_and_resumes_under_the_configs_here(path):
    """A sweep carried in results/sweeps/ resumes only if the configs at HEAD give its jobs the config_hash they ran
    with: checked on the first run of each method and of each row (a change in conf/ shows in one of them)."""
    parent, *jobs = (json.loads(line) for line in path.read_text().splitlines())
    assert jobs and "sweep_key" in parent["tags"]
    assert {job["status"] for job in jobs} == {"FINISHED"} and {job["tags"]["sweep"] for job in jobs} == {parent["run_id"]}
    hashes = [job["tags"]["config_hash"] for job in jobs]
    assert len(set(hashes)) == len(hashes), "one run per job"
    firsts = {}
    for job in jobs:
        for axis in ("method.name", "dataset.name", "imbalance.kind", "imbalance.mu"):
            firsts.setdefault((axis, job["params"].get(axis)), job)
    for job in {id(job): job for job in firsts.values()}.values():
        overrides = shlex.split(job["tags"]["mlflow.note.content"])[3:]  # after `python -m aos_bench`
        assert config_hash(make_config(*overrides)) == job["tags"]["config_hash"], (
            f"{job['name']}: conf/ at HEAD gives this job another config_hash, so resuming {path.name} would rerun it"
        )
