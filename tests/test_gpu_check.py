"""scripts/gpu_check.sh: its --dry-run runs every step on the CPU, so the GPU check works when a GPU comes."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import DATA, ROOT, needs

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
GRIDS = {"table2": 2, "methods": 2, "aos_sensitivity": 1}  # the dry run's jobs of each of step 5's grids


def gpu_check(tmp_path: Path, *args: str, data: Path = DATA, tracking: str | None = None) -> subprocess.CompletedProcess:
    """`scripts/gpu_check.sh ARGS` with this interpreter and source tree, MNIST from `data`, and $MLFLOW_TRACKING_URI
    set to `tracking` (as on a site with a tracking server), or unset."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "AOS_DATA_DIR": str(data), "HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    if tracking:
        env["MLFLOW_TRACKING_URI"] = tracking
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def results_files() -> dict[str, bytes]:
    """Every file under results/, sub-folders (results/sweeps/) included, by its path there."""
    folder = ROOT / "results"
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@needs("MNIST")
@pytest.mark.slow  # about 2 minutes each; .ci/run runs both after the README's test command
@pytest.mark.parametrize("inherited", [True, False], ids=["MLFLOW_TRACKING_URI", "no_env_store"])
def test_dry_run_passes_every_step_into_its_own_store_and_brings_back_4_files(tmp_path, inherited):
    results = results_files()
    user_store = tmp_path / "server" / "mlflow.db"  # the inherited store: the check must never write there
    result = gpu_check(tmp_path, "--dry-run", str(tmp_path / "out"), tracking=f"sqlite:///{user_store}" if inherited else None)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert not user_store.exists(), "the check wrote into $MLFLOW_TRACKING_URI's store"
    assert {path.name for path in (tmp_path / "out").iterdir()} == {"gpu_check.log", "bench_dry_run.md", "reports.tar.gz", "mlruns.tar.gz"}
    assert "all steps passed" in log and "Would install aos_bench" in log and "imports: ok" in log
    assert "needs a CUDA device" in log  # pytest -m gpu ran: its tests skip on the CPU, saying why
    bench = (tmp_path / "out" / "bench_dry_run.md").read_text()
    assert "| suite/aos |" in bench and "| reference/aos |" in bench  # scripts/bench.py
    assert "| mnist (real pixels) | aos | 2 |" in bench and "- projection, table2 on mnist: 30 jobs" in bench  # bench_stack.py
    for preset, jobs in GRIDS.items():  # every grid ran through the stacked launcher, each job FINISHED
        row = next(line for line in bench.splitlines() if line.startswith(f"| {preset} | `python -m aos_bench -m experiment={preset}"))
        assert "hydra/launcher=stacked" in row and row.split(" | ")[2:5] == [str(jobs), str(jobs), "0"], row
    assert f"for {sum(GRIDS.values())} jobs, {sum(GRIDS.values())} FINISHED" in bench
    with tarfile.open(tmp_path / "out" / "reports.tar.gz") as archive:
        reports = {Path(name).name: archive.extractfile(name) for name in archive.getnames() if name != "."}
        assert set(reports) == {f"{p}{suffix}" for p in GRIDS for suffix in (".md", ".csv", ".png", "_runs.csv")}
        assert "| MNIST | 0.3 | 500 | 0.1 | AOS | " in reports["table2.md"].read().decode()
    with tarfile.open(tmp_path / "out" / "mlruns.tar.gz") as archive:
        names = archive.getnames()
    assert "mlruns/mlflow.db" in names and any(name.endswith("adversarial_examples.png") for name in names)
    assert (tmp_path / "out" / "gpu_check.log").read_text().strip().endswith("all steps passed")
    assert results_files() == results, "a dry run wrote results/"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-models", "0"], "aos_bench: --max-models=0: allowed: a whole number >= 1"),
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
