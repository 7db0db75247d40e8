"""End to end: the real entry point, configs and MLflow store, on the synthetic dataset (and MNIST where present)."""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import DATA, ROOT, make_config, needs

from aos_bench import job
from aos_bench.tracking import Terminated, config_hash

REAL_PREDICT = job.predict
ARTIFACTS = {"config.yaml", "class_counts.json", "per_class.csv", "confusion_matrix.png"}
METRICS = ["test_f1_macro", "test_f1_weighted", "test_accuracy", "test_balanced_accuracy", "test_gmean"]


def aos_bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m aos_bench ARGS` in tmp_path, tracking into tmp_path/mlruns."""
    env = {"PATH": "/usr/bin:/bin", "AOS_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "aos_bench", *args, f"hydra.run.dir={tmp_path}/outputs", f"hydra.sweep.dir={tmp_path}/multirun"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def runs(tmp_path: Path, experiment: str = "aos_bench"):
    """All job runs of the store that `aos_bench` wrote in tmp_path (a multirun's parent run has no config_hash)."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment], filter_string="tags.config_hash LIKE '%'")


def test_multirun_logs_three_finished_runs_with_metrics_and_artifacts(tmp_path):
    result = aos_bench(tmp_path, "-m", "method=base,ros,aos", "dataset=synthetic", "train=smoke")
    assert result.returncode == 0, result.stderr
    table = runs(tmp_path)
    assert sorted(table["tags.method"]) == ["aos", "base", "ros"]
    assert (table["status"] == "FINISHED").all()
    assert table[[f"metrics.{m}" for m in METRICS]].notna().all().all()
    assert (table["metrics.train_steps"] == 6).all()  # train=smoke: the same 6 steps for every method
    assert set(table["params.imbalance.mu"]) == {"0.3"}
    for _, row in table.iterrows():
        names = {a.path for a in mlflow.MlflowClient().list_artifacts(row.run_id)}
        expected = ARTIFACTS | ({"adversarial_examples.png"} if row["tags.method"] == "aos" else set())
        assert expected <= names
    aos = table[table["tags.method"] == "aos"].iloc[0]
    assert aos["metrics.adv_images"] > 0
    assert sorted(table["tags.mlflow.runName"]) == [f"{m} synthetic step mu=0.3 rho=500 seed=0" for m in ("aos", "base", "ros")]
    assert set(table["tags.mlflow.note.content"]) == {f"python -m aos_bench method={m} dataset=synthetic train=smoke" for m in ("base", "ros", "aos")}
    assert table["tags.subset_sha256"].nunique() == 1  # one data seed: every method trained on the same images
    parent = mlflow.search_runs(experiment_names=["aos_bench"], filter_string="tags.sweep_key LIKE '%'").iloc[0]
    assert parent["tags.mlflow.runName"].startswith("sweep 20") and parent["tags.mlflow.note.content"].startswith("python -m aos_bench -m ")
    experiment = mlflow.get_experiment_by_name("aos_bench")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in result.stdout + result.stderr


def test_equal_steps_for_every_method_by_default(tmp_path):
    args = ["dataset=synthetic", "train.epochs=1", "train.batch_size=64", "imbalance.rho=10"]
    steps = {}
    for method in ("base", "ros"):
        cfg = make_config(f"method={method}", *args, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
        job.run(cfg)
        steps[method] = runs_at(tmp_path, method)
    # balanced epoch: N x n_max = 10 x 200 images, in batches of 64
    assert steps == {"base": 32, "ros": 32}


def runs_at(tmp_path: Path, method: str) -> int:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    table = mlflow.search_runs(experiment_names=["aos_bench"], filter_string=f"tags.method = '{method}'")
    return int(table["metrics.train_steps"].iloc[0])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("imbalance.mu=0.01", "imbalance.mu=0.01 gives k=0"),
        ("method.p=2", "method.p=2: a number in [0, 1]"),
        ("train.epoch_size=half", "train.epoch_size=half: one of: balanced, method"),
    ],
)
def test_bad_input_is_one_line_before_any_run(tmp_path, override, message):
    result = aos_bench(tmp_path, "dataset=synthetic", "train=smoke", override)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "mlruns").exists(), "a run was created for bad input"


def test_bad_value_in_a_sweep_stops_it_before_any_job_trains(tmp_path):
    result = aos_bench(tmp_path, "-m", "dataset=synthetic", "train=smoke", "method=base,aos", "imbalance.mu=0.3,0.01")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "imbalance.mu=0.01 gives k=0" in result.stderr and "no job of this sweep has run" in result.stderr
    assert not (tmp_path / "mlruns").exists(), "a job ran or a run was created before the bad job was found"


def test_missing_data_names_the_directory(tmp_path):
    result = aos_bench(tmp_path, "data_dir=nowhere", "dataset.download=false")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nowhere/MNIST/raw" in result.stderr and result.stderr.strip().count("\n") == 0


def test_a_run_that_raises_ends_failed_with_the_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(job, "predict", broken)
    cfg = make_config("dataset=synthetic", "train=smoke", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(RuntimeError):
        job.run(cfg)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    table = mlflow.search_runs(experiment_names=["aos_bench"])
    assert table["status"].tolist() == ["FAILED"]
    assert table["tags.error"].iloc[0] == "RuntimeError: evaluation broke"


def test_a_stopped_job_resumes_from_its_checkpoint_in_a_new_run_that_logs_only_the_epochs_it_trains(tmp_path, monkeypatch):
    args = ["dataset=synthetic", "method=aos", "train.epochs=3", "train.batch_size=128", f"tracking.checkpoint_dir={tmp_path}/checkpoints"]
    twin = job.run(make_config(*args, f"tracking.uri=sqlite:///{tmp_path}/twin.db"))  # never stopped
    cfg = make_config(*args, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    log_metrics = mlflow.log_metrics

    def ctrl_c_after_second_epoch(values: dict, step: int | None = None, **kwargs) -> None:
        log_metrics(values, step=step, **kwargs)
        if step == 1:
            raise KeyboardInterrupt  # after its values are logged, before its state is saved

    monkeypatch.setattr(mlflow, "log_metrics", ctrl_c_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        job.run(cfg)
    monkeypatch.undo()
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == [f"{config_hash(cfg)}.pt"]
    assert job.run(cfg) == twin  # the same command: the same test metrics as the run that never stopped
    assert list((tmp_path / "checkpoints").iterdir()) == []
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    stopped, resumed = sorted(client.search_runs(client.get_experiment_by_name("aos_bench").experiment_id, ""), key=lambda r: r.info.start_time)
    assert (stopped.info.status, resumed.info.status) == ("KILLED", "FINISHED")
    assert resumed.data.tags["resumed_epochs"] == "1" and "resumed_epochs" not in stopped.data.tags
    history = {run: {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train_loss")} for run in (stopped, resumed)}
    assert sorted(history[stopped]) == [0, 1] and sorted(history[resumed]) == [1, 2]  # epoch 1 was logged, not saved
    twin_client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/twin.db")
    (twin_run,) = twin_client.search_runs(twin_client.get_experiment_by_name("aos_bench").experiment_id, "")
    assert {m.step: m.value for m in twin_client.get_metric_history(twin_run.info.run_id, "train_loss")} == history[stopped] | history[resumed]


class SignalledStream:
    """A log stream that receives SIGTERM while a line is written: inside logging's `except Exception`."""

    def write(self, text: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def flush(self) -> None:
        pass


def cancelled_while_logging(*args, **kwargs):  # then predicts as usual, if the signal was swallowed
    logger = logging.getLogger("aos_bench.tests.signalled")
    logger.propagate = False
    handler = logging.StreamHandler(SignalledStream())
    logger.addHandler(handler)
    try:
        logger.warning("a line being written")
    finally:
        logger.removeHandler(handler)  # no later line sends a signal
    return REAL_PREDICT(*args, **kwargs)


def cancelled(*args, **kwargs):  # scancel, a preemption or a time limit, in the middle of the job
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("predict", [cancelled, cancelled_while_logging], ids=["computing", "logging"])
def test_a_run_sent_sigterm_ends_killed_and_the_handler_is_restored(tmp_path, monkeypatch, predict):
    monkeypatch.setattr(job, "predict", predict)
    before = signal.getsignal(signal.SIGTERM)
    cfg = make_config("dataset=synthetic", "train=smoke", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(Terminated):
        job.run(cfg)
    assert signal.getsignal(signal.SIGTERM) is before
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    table = mlflow.search_runs(experiment_names=["aos_bench"])
    assert table["status"].tolist() == ["KILLED"]
    assert "stopped by SIGTERM" in table["tags.error"].iloc[0]


@needs("MNIST")
def test_short_real_run_on_mnist(tmp_path):
    cfg = make_config(f"data_dir={DATA}", "train=smoke", "train.max_steps=30", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    metrics = job.run(cfg)
    assert 0 <= metrics["test_f1_macro"] <= 100
    assert metrics["test_accuracy"] > 20  # 30 steps on real digits already beat chance (10%)
    counts = mlflow.artifacts.load_dict(f"{mlflow.last_active_run().info.artifact_uri}/class_counts.json")
    assert sorted(counts["imbalanced"]) == [11] * 3 + [5421] * 7
    assert counts["resampled"] == [5421] * 10


def test_config_found_from_the_source_tree():
    assert (ROOT / "conf" / "config.yaml").exists()
    cfg = make_config()
    assert (cfg.dataset.name, cfg.imbalance.kind, cfg.imbalance.mu, cfg.imbalance.rho, cfg.method.eps) == ("mnist", "step", 0.3, 500, 0.1)
