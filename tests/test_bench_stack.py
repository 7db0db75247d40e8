"""scripts/bench_stack.py: stacked against one job's throughput, measured and projected onto the paper's tables, on the CPU."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import DATA, ROOT

STEPS_PER_JOB = {  # recipe=paper's planned steps of one Table 2 job: epochs x ceil(balanced epoch / batch 128)
    "mnist": 4 * 424,  # 10 classes x 5421 images (the smallest class of MNIST's training split)
    "cifar10": 10 * 391,  # 10 classes x 5000 images
}


@pytest.mark.slow  # the gpu_check dry run (a step of .ci/run) runs bench_stack.py --quick and checks its table
def test_quick_json_measures_every_method_and_stack_size_against_one_job():
    env = {**os.environ, "AOS_DATA_DIR": str(DATA)}
    command = [sys.executable, str(ROOT / "scripts" / "bench_stack.py"), "--quick", "--json", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    name = "mnist" if (DATA / "MNIST").exists() else "cifar10"  # --quick: MNIST, else CIFAR-10's random pixels
    assert summary["device"] == "cpu" and summary["models"] == [1, 2] and list(summary["datasets"]) == [name]
    assert ("mnist" in summary["skipped"]) == (name == "cifar10")
    measured = summary["datasets"][name]
    assert set(measured["one_job"]) == set(measured["stacked"]) == {"base", "ros", "aos"}
    for method, by_m in measured["stacked"].items():
        assert list(by_m) == ["1", "2"]
        for m, figures in by_m.items():
            assert math.isfinite(figures["speedup"]) and figures["speedup"] > 0, (method, m)
            assert figures["images_per_s"] / measured["one_job"][method]["images_per_s"] == figures["speedup"]
    assert list(measured["aos_over_ros"]) == ["1", "2"] and all(r > 0 for r in measured["aos_over_ros"].values())
    table2 = summary["projection"]["table2"]  # half MNIST, half CIFAR-10: the measured half projected
    assert table2["datasets"] == [name] and table2["missing"] == [n for n in ("mnist", "cifar10") if n != name]
    assert table2["jobs"] == 30 and table2["steps"] == 30 * STEPS_PER_JOB[name] and table2["stacked_s"] > 0
