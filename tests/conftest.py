"""Shared test helpers: where the real datasets are, and the project's real config, composed and shrunk."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from servers import mlflow_server

ROOT = Path(__file__).resolve().parents[1]
# A relative AOS_DATA_DIR is taken from the project root, like the default ../shared/data.
DATA = (ROOT / os.environ.get("AOS_DATA_DIR", "../shared/data")).resolve()
LOCAL_SLURM = ROOT / "scripts" / "local_slurm.sh"
LOCAL_POSTGRES = ROOT / "scripts" / "local_postgres.sh"


def needs(folder: str) -> pytest.MarkDecorator:
    """Skip unless the real dataset folder is present under DATA."""
    return pytest.mark.skipif(
        not (DATA / folder).exists(), reason=f"real datasets not found at {DATA / folder}: set AOS_DATA_DIR"
    )


def make_config(*overrides: str) -> DictConfig:
    """The project's config composed from conf/ with command-line style overrides."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def fit_config(model: torch.nn.Module, cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, minority: list[int], seed: int,
               method=None, **options):
    """aos_bench.train.fit of `model` on (x, y) as a job of `cfg` trains it: the config's method (or `method`), its
    recipe, `seed`; `options` are fit()'s keywords. Returns its RunStats."""
    from aos_bench.methods import get_method
    from aos_bench.train import fit, recipe_of, training_set

    method = method or get_method(cfg.method.name)
    return fit(model, training_set(x, y, method, cfg.method, minority, seed, cfg.train.epoch_size), recipe_of(cfg), **options)


@pytest.fixture(autouse=True)
def restore_tracking_uri() -> Iterator[None]:
    """mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI: undo that after each test, so that a store of an
    in-process test never becomes the store of a later test's subprocesses."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked gpu skip, with the reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def local_slurm(command: str) -> subprocess.CompletedProcess:
    """`scripts/local_slurm.sh COMMAND`, its output captured."""
    return subprocess.run([str(LOCAL_SLURM), command], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """A running one-node SLURM cluster (scripts/local_slurm.sh): yields the environment its clients need.

    Reuses a cluster the script already started; otherwise starts one and stops it after the tests. Skips where it
    cannot start one: without root, or without the slurm-wlm and munge packages (`scripts/local_slurm.sh install`).
    """
    conf = Path(os.environ.get("AOS_SLURM_DIR", "/var/tmp/aos_slurm")) / "slurm.conf"
    started = local_slurm("status").returncode != 0
    if started:
        if os.geteuid() != 0:
            pytest.skip("starting slurmctld and slurmd needs root (or start scripts/local_slurm.sh as root first)")
        missing = [name for name in ("slurmctld", "slurmd", "munged") if not shutil.which(name, path="/usr/sbin:/usr/bin")]
        if missing:
            pytest.skip(f"{', '.join(missing)} not installed: run `scripts/local_slurm.sh install` as root")
        result = local_slurm("start")
        assert result.returncode == 0, f"scripts/local_slurm.sh start failed:\n{result.stdout}{result.stderr}"
    yield {"SLURM_CONF": str(conf)}
    subprocess.run(["scancel", "--full", f"--user={os.geteuid()}"], env={**os.environ, "SLURM_CONF": str(conf)})
    if started:
        local_slurm("stop")


def local_postgres(command: str) -> subprocess.CompletedProcess:
    """`scripts/local_postgres.sh COMMAND`, its output captured."""
    return subprocess.run([str(LOCAL_POSTGRES), command], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A running PostgreSQL server on 127.0.0.1 (scripts/local_postgres.sh): yields the URI of its database `mlflow`.

    Reuses a server the script already started; otherwise starts one and stops it after the tests. Skips where it cannot:
    without root, without the postgresql package (`scripts/local_postgres.sh install`), or without the psycopg driver
    that SQLAlchemy 2.1 uses for postgresql:// URIs (`pip install -e '.[test]'`).
    """
    pytest.importorskip("psycopg", reason="SQLAlchemy's postgresql:// driver: pip install 'psycopg[binary]' (in the test extra)")
    started = local_postgres("status").returncode != 0
    if started:
        if os.geteuid() != 0:
            pytest.skip("starting PostgreSQL as the user postgres needs root (or start scripts/local_postgres.sh as root first)")
        if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
            pytest.skip("PostgreSQL not installed: run `scripts/local_postgres.sh install` as root")
        result = local_postgres("start")
        assert result.returncode == 0, f"scripts/local_postgres.sh start failed:\n{result.stdout}{result.stderr}"
    yield local_postgres("uri").stdout.strip()
    if started:
        local_postgres("stop")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A bare environment for the subprocesses, importing aos_bench from this checkout (as an editable install does):
    one shared matplotlib font cache (not one built per test), and one torch thread per process, as these tiny models
    gain nothing from more and parallel jobs would oversubscribe."""
    home = tmp_path_factory.mktemp("home")
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "MPLCONFIGDIR": str(home / "matplotlib"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file with MLflow's tables and no experiment: creating them takes seconds, so tests copy this one."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def server(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    """An open `mlflow server` (no authentication) for one test, its files under tmp_path/server; its URL."""
    with mlflow_server(tmp_path / "server", env) as url:
        yield url
