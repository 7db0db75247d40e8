"""In a real headless browser: the MLflow page that runs print lands on results: the job runs by their readable names,
best F1 first, with their F1 rounded."""

import re
import shutil
import subprocess

import mlflow
import pytest
from conftest import make_config

from aos_bench import job
from aos_bench.tracking import RUN_NAME_PX, run_name, ui_address

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RENDER_MS = 20000  # virtual time the page's scripts get to fetch and draw the runs


@pytest.mark.slow  # a real `mlflow server` and a browser: about 30 s on 2 busy cores
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: `apt-get install chromium` (Debian) for this check")
def test_the_printed_address_lands_on_the_runs_best_f1_first_rounded(tmp_path, server):
    f1 = {}
    for method in ("base", "aos"):
        cfg = make_config("dataset=synthetic", "train=smoke", f"method={method}", f"tracking.uri={server}")
        f1[run_name(cfg)] = job.run(cfg)["test_f1_macro"]
    assert len({round(value, 2) for value in f1.values()}) == 2, f1  # two runs the order can tell apart
    experiment_id = mlflow.MlflowClient(server).get_experiment_by_name("aos_bench").experiment_id
    address = ui_address(server, experiment_id)
    assert address.endswith(f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=results")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--virtual-time-budget={RENDER_MS}", "--dump-dom", address]
    page = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path).stdout
    best, other = sorted(f1, key=f1.get, reverse=True)
    assert best in page and other in page and page.index(best) < page.index(other), page[-2000:]  # best F1 first
    assert ">F1<" in page and ">F1 minority<" in page  # the columns, by their headers
    header = re.search(r'role="columnheader"[^>]*col-id="attributes.`Run Name`"[^>]*width: (\d+)px', page)
    assert header and int(header[1]) == RUN_NAME_PX  # whole names, where the UI's own width cuts them at 170 px
    for value in f1.values():
        assert f">{round(value, 2):g}<" in page, (value, page[-2000:])  # rounded as logged
