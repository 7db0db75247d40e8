"""Without a progress bar (multiruns, no terminal), a run logs one line per epoch: loss, steps per second, ETA."""

import logging
import re

from conftest import make_config

from aos_bench import job
from aos_bench.train import epoch_line


def test_epoch_line_gives_loss_rate_and_eta():
    assert epoch_line(2, 40, 0.41234, 30, 400, 10.0) == "epoch 3/40 loss 0.412 3.0 steps/s ETA 2m03s"


def test_a_run_without_the_bar_logs_one_line_per_epoch(tmp_path, caplog):
    cfg = make_config("dataset=synthetic", "train=smoke", "train.max_steps=null", "train.epochs=2", "method=base",  # 7 steps an epoch
                      "dataset.train_per_class=20", "imbalance.rho=10",
                      "train.progress=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")  # fmt: skip
    with caplog.at_level(logging.INFO, logger="aos_bench.train"):
        job.run(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "aos_bench.train"]
    assert [line.split(" loss")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all(re.fullmatch(r"epoch \d/2 loss \d+\.\d{3} \d+\.\d steps/s ETA \d+m\d\ds", line) for line in lines)
