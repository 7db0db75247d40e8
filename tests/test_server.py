"""Many machines: a sweep against a real `mlflow server` (REST API and artifact proxy), and a fast stop when it is down."""

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from servers import free_port, run_files
from sweeps import sweep_cli

from aos_bench import report
from aos_bench.store import DOWN, REFUSED, server_problem

JOB_FILES = {"config.yaml", "class_counts.json", "per_class.csv", "confusion_matrix.png"}  # every job's artifacts


def stored_files(artifacts: Path, run: mlflow.entities.Run) -> dict[str, bytes]:
    """A run's artifacts as the server keeps them under --artifacts-destination: {relative path: content}."""
    root = artifacts / run.info.artifact_uri.removeprefix("mlflow-artifacts:/")
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


@pytest.mark.slow  # about 52 s; .ci/run runs it on every submission, outside the README's 10-minute command
def test_parallel_sweep_against_a_tracking_server_loses_nothing_and_resumes(tmp_path, env, server):
    args = ["experiment=smoke", "imbalance.mu=0.3", "method=base,aos", "seed=0,1", f"tracking.uri={server}"]
    result = sweep_cli(tmp_path, env, *args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "mlruns").exists(), "nothing may go to a local store"

    client = mlflow.MlflowClient(server)
    experiment = client.get_experiment_by_name("aos_bench")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "sweep_key" in run.data.tags]
    children = [run for run in runs if "sweep_key" not in run.data.tags]
    assert [run.info.status for run in parents] == ["FINISHED"], "one parent run, closed by the launching process"
    parent = parents[0]
    assert len(children) == 4 and {run.info.status for run in children} == {"FINISHED"}
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert sorted((run.data.params["method.name"], run.data.params["seed"]) for run in children) == [
        ("aos", "0"), ("aos", "1"), ("base", "0"), ("base", "1")]
    assert all(set(run.data.metrics) >= {"test_f1_macro", "train_steps", "train_loss"} for run in children)

    # every artifact went through the server's proxy and comes back whole through the client
    artifacts = tmp_path / "server" / "artifacts"
    for run in [*children, parent]:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        files = run_files(client, run.info.run_id, tmp_path / "downloads" / run.info.run_id)
        assert files == stored_files(artifacts, run) and all(files.values())
        if run is parent:  # the report the launching process wrote into the sweep dir, file for file
            assert files == {f"report/{path.name}": path.read_bytes() for path in (tmp_path / "multirun").glob("smoke*")}
            assert {"report/smoke.md", "report/smoke.csv", "report/smoke.png"} <= set(files)
        else:
            aos = run.data.params["method.name"] == "aos"
            assert set(files) == JOB_FILES | ({"adversarial_examples.png"} if aos else set())

    report.main(["--tracking-uri", server, "--out", str(tmp_path / "results")])  # reads per_class.csv through the proxy
    table = (tmp_path / "results" / "smoke.md").read_text()
    f1 = {run.data.params["method.name"]: [] for run in children}
    for run in children:
        f1[run.data.params["method.name"]].append(run.data.metrics["test_f1_macro"])
    assert all(f"{sum(values) / 2:.2f}" in table for values in f1.values())
    assert (tmp_path / "results" / "smoke.png").stat().st_size > 10_000

    result = sweep_cli(tmp_path, env, *args)  # the same sweep again: every job is done
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skipped: this sweep already has a FINISHED run") == 4
    again = client.search_runs([experiment.experiment_id])
    assert sorted((run.info.run_id, run.info.status) for run in again) == sorted(
        (run.info.run_id, "FINISHED") for run in runs)


@pytest.mark.parametrize("mode", [["-m", "experiment=smoke"], ["dataset=synthetic", "train=smoke"]], ids=["sweep", "run"])
def test_unreachable_server_stops_before_any_job_with_one_line(tmp_path, env, mode):
    uri = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "aos_bench", *mode, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/multirun"]
    start = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    line = f"aos_bench: tracking.uri={uri} does not answer (connection refused); start the server or fix the address"
    assert result.stderr.splitlines() == [line] and "Traceback" not in result.stdout
    assert not (tmp_path / "mlruns").exists()
    # checked before torch and MLflow are imported (5-10 s here): 0.4 s on a quiet 2-core machine; MLflow's retries take minutes
    assert seconds < 10, f"{seconds:.1f} s"


@pytest.mark.parametrize("mode", [["-m", "experiment=smoke"], pytest.param(["dataset=synthetic", "train=smoke"], marks=pytest.mark.slow)],
                         ids=["sweep", "run"])  # a single run meets the same check: require_server
def test_a_scheme_mlflow_cannot_store_runs_at_stops_before_any_job_with_one_line(tmp_path, env, mode):
    command = [sys.executable, "-m", "aos_bench", *mode, "tracking.uri=ftp://host/runs", f"hydra.sweep.dir={tmp_path}/multirun"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("aos_bench: tracking.uri=ftp://host/runs names a scheme (ftp) MLflow has no tracking store for; "
                           "allowed: a path, or one of ")
    assert {"sqlite://", "http://", "https://", "file://"} <= set(line.split("one of ")[1].split(", "))  # MLflow's own list
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "multirun").exists()


def test_report_stops_at_an_unreachable_server(capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as stop:
        report.main(["--tracking-uri", uri])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"aos_bench: --tracking-uri={uri} does not answer (connection refused)")


class Replies(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status and body that the request path names: /<status>/<body>/..."""

    def do_GET(self) -> None:
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


def test_server_problem_says_why_in_a_few_words(replies):
    assert server_problem(f"http://127.0.0.1:{free_port()}") == DOWN.format("connection refused")
    assert server_problem("http://no-such-host.invalid:5000") == DOWN.format("unknown host")
    assert server_problem(f"{replies}/503/busy") == DOWN.format("HTTP 503 Service Unavailable")  # MLflow's client retries these
    assert server_problem(f"{replies}/404/x") == DOWN.format("HTTP 404: no MLflow API at this address")
    assert server_problem(f"{replies}/403/Invalid_Host_header") == DOWN.format("HTTP 403: the server's --allowed-hosts does not list this host name")
    assert server_problem(f"{replies}/200/{{}}") is None
    assert server_problem(f"{replies}/401/login") == REFUSED.format(401)  # basic auth: no credentials, or wrong ones
    assert server_problem(f"{replies}/403/no") == REFUSED.format(403)
    assert server_problem("sqlite:////nowhere/mlflow.db") is None and server_problem("file:///nowhere") is None

    with socket.socket() as silent:  # accepts connections (the kernel does) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        start = time.monotonic()
        assert server_problem(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) == DOWN.format("no answer within 0.5 s")
        assert time.monotonic() - start < 5
