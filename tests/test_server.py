"""Many machines: a fast stop when the tracking server is down."""

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import ROOT

from aos_bench import report
from aos_bench.tracking import server_down


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A bare environment for the subprocesses, importing aos_bench from this checkout (as an editable install does)."""
    home = tmp_path_factory.mktemp("home")
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "MPLCONFIGDIR": str(home / "matplotlib"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT)}  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens (the OS's pick, released again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("mode", [["-m", "experiment=smoke"], ["dataset=synthetic", "train=smoke"]], ids=["sweep", "run"])
def test_unreachable_server_stops_before_any_job_with_one_line(tmp_path, env, mode):
    uri = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "aos_bench", *mode, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/multirun"]
    start = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    line = f"aos_bench: tracking.uri={uri} does not answer (connection refused); start the server or fix the address"
    assert result.stderr.strip().splitlines()[-1] == line, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "mlruns").exists()
    assert seconds < 60, f"{seconds:.0f} s: imports take 5-12 s here; MLflow's own retries would take minutes"


def test_report_stops_at_an_unreachable_server(capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as stop:
        report.main(["--tracking-uri", uri])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"aos_bench: --tracking-uri={uri} does not answer (connection refused)")


class Replies(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status and body that the request path names: /<status>/<body>/..."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _, status, body = self.path.split("/", 3)[:3]
        self.send_response(int(status))
        self.end_headers()
        self.wfile.write(body.replace("_", " ").encode())

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def replies() -> Iterator[str]:
    """The URL of a local HTTP server that answers with any status: Replies."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Replies)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_server_down_says_why_in_a_few_words(replies):
    assert server_down(f"http://127.0.0.1:{free_port()}") == "connection refused"
    assert server_down("http://no-such-host.invalid:5000") == "unknown host"
    assert server_down(f"{replies}/503/busy") == "HTTP 503 Service Unavailable"  # MLflow's client retries these
    assert server_down(f"{replies}/404/x") == "HTTP 404: no MLflow API at this address"
    assert server_down(f"{replies}/403/Invalid_Host_header") == "HTTP 403: the server's --allowed-hosts does not list this host name"
    assert server_down(f"{replies}/200/{{}}") is None
    assert server_down(f"{replies}/401/login") is None  # answers: credentials are MLflow's business
    assert server_down(f"{replies}/403/no") is None
    assert server_down("sqlite:////nowhere/mlflow.db") is None and server_down("file:///nowhere") is None

    with socket.socket() as silent:  # accepts connections (the kernel does) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        start = time.monotonic()
        assert server_down(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) == "no answer within 0.5 s"
        assert time.monotonic() - start < 5
