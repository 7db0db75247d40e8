"""scripts/gpu_check.sh: its --dry-run runs every step on the CPU, so the GPU check works when a GPU comes."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import DATA, ROOT, needs

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def gpu_check(tmp_path: Path, *args: str, data: Path = DATA) -> subprocess.CompletedProcess:
    """`scripts/gpu_check.sh ARGS` with this interpreter and source tree, MNIST from `data`."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "AOS_DATA_DIR": str(data), "HOME": str(tmp_path)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)


@needs("MNIST")
def test_dry_run_passes_every_step_and_brings_back_at_most_8_files(tmp_path):
    results = {path.name: path.read_bytes() for path in (ROOT / "results").iterdir()}
    result = gpu_check(tmp_path, "--dry-run", str(tmp_path / "out"))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    files = {path.name for path in (tmp_path / "out").iterdir()}
    assert files == {"gpu_check.log", "bench_dry_run.md", "table2.md", "table2.csv", "table2.png", "mlruns.tar.gz"}
    assert "all steps passed" in log and "Would install aos_bench" in log and "imports: ok" in log
    assert "needs a CUDA device" in log  # pytest -m gpu ran: its tests skip on the CPU, saying why
    bench = (tmp_path / "out" / "bench_dry_run.md").read_text()
    assert "| suite/aos |" in bench and "| reference/aos |" in bench
    assert "- wall time" in bench and "for 1 jobs (1 FINISHED)" in bench
    assert "| MNIST | 0.3 | 500 | 0.1 | AOS | " in (tmp_path / "out" / "table2.md").read_text()
    with tarfile.open(tmp_path / "out" / "mlruns.tar.gz") as archive:
        names = archive.getnames()
    assert "mlruns/mlflow.db" in names and any(name.endswith("adversarial_examples.png") for name in names)
    assert (tmp_path / "out" / "gpu_check.log").read_text().strip().endswith("all steps passed")
    assert {path.name: path.read_bytes() for path in (ROOT / "results").iterdir()} == results, "a dry run wrote results/"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jobs", "0"], "aos_bench: --jobs=0: allowed: a whole number >= 1"),
        (["--wheels", "nowhere"], "aos_bench: --wheels=nowhere: allowed: a folder of .whl files"),
    ],
)
def test_bad_options_stop_it_with_one_line(tmp_path, args, message):
    result = gpu_check(tmp_path, "--dry-run", "out", *args)
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_data_without_mnist_stops_it_with_one_line_naming_the_files(tmp_path):
    result = gpu_check(tmp_path, "--dry-run", "out", data=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"aos_bench: AOS_DATA_DIR={tmp_path}: allowed: a folder whose MNIST/raw holds")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "arm"], "aos_bench: --arch=arm: allowed: x86_64, aarch64"),
        (["--python-version", "12"], "aos_bench: --python-version=12: allowed: 3.N, e.g. 3.12"),
    ],
)
def test_wheel_helper_rejects_a_bad_target_with_one_line(tmp_path, args, message):
    command = ["bash", str(ROOT / "scripts" / "gpu_wheels.sh"), str(tmp_path / "wheels"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr == message + "\n"
    assert not (tmp_path / "wheels").exists()
