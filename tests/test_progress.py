"""Without a progress bar (multiruns, no terminal), a run logs one line per epoch named by its run: loss, steps per
second, ETA; a sweep's launching process logs one line per job that ends, counted against the grid."""

import logging
import re

import mlflow
from conftest import make_config

from aos_bench import job
from aos_bench.progress import duration, job_line
from aos_bench.tracking import run_name
from aos_bench.train import epoch_line


def test_epoch_line_gives_loss_rate_and_eta():
    assert epoch_line(2, 40, 0.41234, 30, 400, 10.0) == "epoch 3/40 loss 0.412 3.0 steps/s ETA 2m03s"
    assert [duration(s) for s in (0, 59.6, 123, 3599, 3600, 7530)] == ["0m00s", "1m00s", "2m03s", "59m59s", "1h00m", "2h05m"]


def test_job_line_gives_the_count_the_run_its_f1_its_time_and_the_sweeps_eta():
    run = mlflow.entities.Run(
        mlflow.entities.RunInfo("r1", "0", "u", "FINISHED", 1_000, 125_000, "active", run_name="aos intel step mu=0.4 rho=20 seed=2"),
        mlflow.entities.RunData(metrics=[mlflow.entities.Metric("test_f1_macro", 61.204, 0, 0)]),
    )
    assert job_line(3, 90, run, 5520.0) == "[3/90] aos intel step mu=0.4 rho=20 seed=2: F1 61.20 (2m04s); ETA 1h32m"
    failed = mlflow.entities.Run(mlflow.entities.RunInfo("r2", "0", "u", "FAILED", 1_000, 61_000, "active", run_name="base"), None)
    assert job_line(90, 90, failed, None) == "[90/90] base: FAILED (1m00s)"


def test_a_run_without_the_bar_logs_one_line_per_epoch(tmp_path, caplog):
    cfg = make_config("dataset=synthetic", "train=smoke", "train.max_steps=null", "train.epochs=2", "method=base",  # 7 steps an epoch
                      "dataset.train_per_class=20", "imbalance.rho=10",
                      "train.progress=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    with caplog.at_level(logging.INFO, logger="aos_bench.train"):
        job.run(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "aos_bench.train"]
    name = run_name(cfg)  # parallel jobs share the sweep's log: each line says whose it is
    assert name == "base synthetic step mu=0.3 rho=10 seed=0"
    assert [line.split(" loss")[0] for line in lines] == [f"{name}: epoch 1/2", f"{name}: epoch 2/2"]
    assert all(re.fullmatch(rf"{name}: epoch \d/2 loss \d+\.\d{{3}} \d+\.\d steps/s ETA \d+m\d\ds", line) for line in lines)
