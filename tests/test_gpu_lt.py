"""scripts/gpu_lt.sh: its --dry-run runs CIFAR-10-LT's sweep from a pack on the CPU, and a second call resumes it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from aos_bench.pack import pack_for

SCRIPT = ROOT / "scripts" / "gpu_lt.sh"


def gpu_lt(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`scripts/gpu_lt.sh ARGS` with this interpreter and source tree."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # about 2 minutes; .ci/run runs it after the README's test command
def test_dry_run_trains_the_sweep_from_the_pack_and_the_next_call_resumes_it(tmp_path):
    pack = tmp_path / "synthetic_pack.npz"
    pack_for(pack, ["experiment=cifar10_lt", "dataset=synthetic"])
    first = gpu_lt(tmp_path, "--dry-run", str(tmp_path / "out"), "--pack", str(pack), "--jobs", "2", "--", "dataset=synthetic")
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-4000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"gpu_lt.log", "mlruns.tar.gz", *(f"cifar10_lt{s}" for s in (".md", ".csv", ".png", "_runs.csv"))}
    assert "job runs by status: {'FINISHED': 4}; 24 optimizer steps in this call's FINISHED runs" in log  # 2 methods x 2 rho x 6 steps
    assert "| LDAM-DRW |" in (out / "cifar10_lt.md").read_text()
    second = gpu_lt(tmp_path, "--dry-run", str(tmp_path / "again"), "--pack", str(pack), "--jobs", "2", "--store",
                    str(out / "mlruns.tar.gz"), "--", "dataset=synthetic")
    log = second.stdout + second.stderr
    assert second.returncode == 0 and "[4/4] done before this launch" in log and "0 optimizer steps in this call's" in log, log[-4000:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pack", "nowhere.npz"], "aos_bench: --pack=nowhere.npz: allowed: a <dataset>_pack.npz file"),
        (["--jobs", "0"], "aos_bench: --jobs=0: allowed: a whole number >= 1"),
    ],
)
def test_bad_options_stop_it_with_one_line(tmp_path, args, message):
    if args[0] == "--jobs":
        (tmp_path / "cifar10_pack.npz").write_bytes(b"")
        args = ["--pack", str(tmp_path / "cifar10_pack.npz"), *args]
    result = gpu_lt(tmp_path, "--dry-run", "out", *args)
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
