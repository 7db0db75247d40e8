"""Real `mlflow server`s for the tests: started on 127.0.0.1 at a free port and stopped again, their files read back,
and the basic-auth credentials MLflow's client sends."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

SERVER_START = 120  # seconds `mlflow server` gets to answer (7 s on a quiet 2-core machine)
USER, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"  # where MLflow's client reads basic auth
ADMIN = {USER: "admin", PASSWORD: "admin-Pw-3c81f0d2"}  # MLflow 3.17 takes passwords of 12 characters or more
# the secret that nothing the suite writes may hold; ASCII: MLflow's server refuses other passwords on its artifact routes
ALICE = {USER: "alice", PASSWORD: "alice-Pw/#?@:%=-9e4b7a15"}

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # scripts/ is not a package
from load_test import free_port, healthy  # noqa: E402  (the load test's own: one port pick and one /health probe)


@contextlib.contextmanager
def mlflow_server(folder: Path, env: dict[str, str], *options: str, backend: str | None = None) -> Iterator[str]:
    """`mlflow server [options]` on 127.0.0.1 at a free port, its artifacts under folder and its runs in `backend` (a
    database URI), else in an SQLite file there; its URL."""
    port = free_port()
    folder.mkdir()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend or f"sqlite:///{folder}/mlflow.db",
               "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", *options]
    with open(folder / "server.log", "w") as log:
        # its own process group: the server runs uvicorn in a child process, and both must stop; no GenAI job runner
        process = subprocess.Popen(command, cwd=folder, env=env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START
        while not healthy(url):
            assert process.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def run_files(client: mlflow.MlflowClient, run_id: str, folder: Path) -> dict[str, bytes]:
    """Every artifact of a run, downloaded through the client into folder: {relative path: content}."""
    root = Path(client.download_artifacts(run_id, "", str(folder)))
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}



@contextlib.contextmanager
def signed_in(home: str, credentials: dict[str, str]) -> Iterator[None]:
    """In this process, MLflow's client and the suite's probe send these credentials and no others (HOME: where
    ~/.mlflow/credentials would be)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", home)
        for name in (USER, PASSWORD):
            patch.delenv(name, raising=False)
        for name, value in credentials.items():
            patch.setenv(name, value)
        yield
