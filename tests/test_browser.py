"""In a real headless browser: the MLflow page that runs print lists the training runs by their readable names."""

import shutil
import subprocess

import mlflow
import pytest
from conftest import make_config

from aos_bench import job
from aos_bench.tracking import ui_address

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RENDER_MS = 20000  # virtual time the page's scripts get to fetch and draw the runs


@pytest.mark.slow  # a real `mlflow server` and a browser: about 25 s on 2 busy cores
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: `apt-get install chromium` (Debian) for this check")
def test_the_printed_address_lists_the_runs_by_name(tmp_path, server):
    cfg = make_config("dataset=synthetic", "train=smoke", "method=base", "train.max_steps=1", f"tracking.uri={server}")
    job.run(cfg)
    experiment_id = mlflow.MlflowClient(server).get_experiment_by_name("aos_bench").experiment_id
    address = ui_address(server, experiment_id)
    assert address.endswith(f"#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--virtual-time-budget={RENDER_MS}", "--dump-dom", address]
    page = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path).stdout
    assert "base synthetic step mu=0.3 rho=500 seed=0" in page, page[-2000:]
