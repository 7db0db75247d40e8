"""The locked tracking server: `mlflow server --app-name basic-auth`, credentials from the environment only, one line
on a refusal, and no password in anything the suite writes."""

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import mlflow
import pytest
from mlflow.server import get_app_client
from servers import ADMIN, ALICE, PASSWORD, USER, free_port, mlflow_server, run_files, signed_in
from sweeps import sweep_cli

from aos_bench import report
from aos_bench.store import server_problem
from aos_bench.tracking import require_server

# Characters a password may hold that a URI cuts at (/ # ? @), splits at (: =), escapes (%) or encodes (unicode)
HOSTILE = ["/", "#", "?", "@", ":", "%", "=", "é密"]
WRONG = {USER: "alice", PASSWORD: "wrong-Pw-5d2e8b60"}
REFUSED = "refused the credentials (HTTP 401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"  # after key=uri
IN_A_URI = "a URI with no user or password in it (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead)"


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[str]:
    """A basic-auth `mlflow server` for this module, with the user alice created by its admin; its URL."""
    folder = tmp_path_factory.mktemp("locked") / "server"
    secrets = {"MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key", "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[PASSWORD]}
    with mlflow_server(folder, env | secrets, "--app-name", "basic-auth") as url:  # the auth store: basic_auth.db in folder
        with signed_in(env["HOME"], ADMIN):
            get_app_client("basic-auth", tracking_uri=url).create_user(ALICE[USER], ALICE[PASSWORD])
        yield url


def stored(url: str, home: str) -> tuple[set[str], set[str]]:
    """Every experiment id and run id on the locked server, read by its admin."""
    with signed_in(home, ADMIN):
        client = mlflow.MlflowClient(url)
        experiments = [experiment.experiment_id for experiment in client.search_experiments()]
        return set(experiments), {run.info.run_id for run in client.search_runs(experiments)}


def test_the_probe_sends_the_credentials_that_mlflow_sends(locked, env, tmp_path, capsys):
    with signed_in(env["HOME"], {}):
        assert server_problem(locked) == REFUSED
    with signed_in(env["HOME"], WRONG):
        assert server_problem(locked) == REFUSED
    with signed_in(env["HOME"], ALICE):
        assert server_problem(locked) is None
    (tmp_path / ".mlflow").mkdir()  # MLflow's other source: ~/.mlflow/credentials, below the environment variables
    file = tmp_path / ".mlflow" / "credentials"
    for written in (ALICE[PASSWORD], ALICE[PASSWORD].replace("%", "%%")):  # MLflow's configparser reads %% as %
        file.write_text(f"[mlflow]\nmlflow_tracking_username = alice\nmlflow_tracking_password = {written}\n")
        if written == ALICE[PASSWORD]:  # a bare % is refused in one line that does not quote the password
            with signed_in(str(tmp_path), {}), pytest.raises(SystemExit) as stop:
                server_problem(locked)
            assert stop.value.code == 2 and capsys.readouterr().err.endswith("; write each % of a value as %%\n")
            continue
        with signed_in(str(tmp_path), {}):
            assert server_problem(locked) is None
            assert mlflow.MlflowClient(locked).search_experiments() is not None  # MLflow's own client reads it the same way


@pytest.mark.parametrize(
    ("mode", "credentials"),
    [(["-m", "experiment=smoke"], {}), (["dataset=synthetic", "train=smoke"], WRONG)],
    ids=["sweep-without-credentials", "run-with-wrong-credentials"],
)
def test_missing_or_wrong_credentials_stop_with_one_line_and_no_run(tmp_path, env, locked, mode, credentials):
    before = stored(locked, env["HOME"])
    command = [sys.executable, "-m", "aos_bench", *mode, f"tracking.uri={locked}", f"hydra.sweep.dir={tmp_path}/multirun"]
    result = subprocess.run(command, cwd=tmp_path, env=env | credentials, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"aos_bench: tracking.uri={locked} {REFUSED}"]
    assert stored(locked, env["HOME"]) == before, "no experiment and no run may be created"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "multirun").exists()
    assert WRONG[PASSWORD] not in result.stdout + result.stderr


@pytest.mark.parametrize("credentials", [{}, WRONG], ids=["without-credentials", "with-wrong-credentials"])
def test_report_refuses_missing_or_wrong_credentials_with_one_line(tmp_path, env, locked, credentials, capsys):
    with signed_in(env["HOME"], credentials), pytest.raises(SystemExit) as stop:
        report.main(["--tracking-uri", locked, "--out", str(tmp_path / "results")])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"aos_bench: --tracking-uri={locked} {REFUSED}\n"
    assert not (tmp_path / "results").exists()


def secret_forms(user: str, secret: str) -> list[bytes]:
    """The ways a file or a log could hold a password: as typed, percent-encoded, JSON-escaped, in a basic-auth header."""
    return [form.encode() for form in (secret, quote(secret, safe=""), json.dumps(secret)[1:-1], base64.b64encode(f"{user}:{secret}".encode()).decode())]


def holds_secret(haystack: bytes, user: str, secret: str) -> bool:
    """Whether haystack holds the password in any of its secret_forms."""
    return any(form in haystack for form in secret_forms(user, secret))


def every_file(*folders: Path) -> bytes:
    """The bytes of every file under the folders, joined."""
    return b"\n".join(path.read_bytes() for folder in folders for path in sorted(folder.rglob("*")) if path.is_file())


@pytest.mark.parametrize("mode", [["-m", "experiment=smoke"], ["dataset=synthetic", "train=smoke"]], ids=["sweep", "run"])
def test_a_uri_with_credentials_is_refused_without_echoing_them(tmp_path, env, mode):
    uri = f"http://alice:{ALICE[PASSWORD]}@127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "aos_bench", *mode, f"tracking.uri='{uri}'", f"hydra.sweep.dir={tmp_path}/multirun"]  # quoted: # and =
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()  # a sweep's line ends with the job that holds the value, its password masked too
    shown = f"tracking.uri={uri.replace(ALICE[PASSWORD], '***')}"
    assert line.startswith(f"aos_bench: {shown}: {IN_A_URI}")
    assert not holds_secret((result.stdout + result.stderr).encode(), "alice", ALICE[PASSWORD])
    assert list(tmp_path.iterdir()) == [], "nothing written: no outputs/ or multirun/ (Hydra's copies of the config), no store"


@pytest.mark.parametrize("char", HOSTILE)
def test_a_password_with_any_character_in_a_uri_is_refused_masked_and_written_nowhere(tmp_path, env, char, capsys):
    secret = f"Pw-{char}-5d2e8b60"
    uri = f"http://alice:{secret}@127.0.0.1:{free_port()}"
    shown = f"http://alice:***@127.0.0.1:{uri.rpartition(':')[2]}"
    for key, environment, override in [("tracking.uri", {}, [f"tracking.uri={uri}"]), ("MLFLOW_TRACKING_URI", {"MLFLOW_TRACKING_URI": uri}, [])]:
        command = [sys.executable, "-m", "aos_bench", "dataset=synthetic", "train=smoke", *override]
        result = subprocess.run(command, cwd=tmp_path, env=env | environment, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()  # `#`, `=` and unicode: not a valid override, refused as such, masked too
        assert line.startswith(f"aos_bench: {key}={shown}") and not holds_secret((result.stdout + line).encode(), "alice", secret)
    with pytest.raises(SystemExit) as stop:
        report.main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    assert stop.value.code == 2 and capsys.readouterr().err == f"aos_bench: --tracking-uri={shown}: {IN_A_URI}\n"
    assert list(tmp_path.iterdir()) == [], "nothing written: no outputs/ (Hydra's copies of the config), no store, no report"


def test_a_password_outside_ascii_is_refused_before_any_request(env, locked, capsys):
    with signed_in(env["HOME"], {USER: "alice", PASSWORD: "alice-Pw-é密-9e4b7a15"}), pytest.raises(SystemExit) as stop:
        server_problem(locked)
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("aos_bench: MLFLOW_TRACKING_PASSWORD: the password holds characters outside ASCII, which the MLflow "
                                       "server refuses on its artifact routes (HTTP 401); allowed: a password of ASCII characters\n")


def test_a_uri_with_credentials_from_the_environment_or_the_report_is_refused(tmp_path, capsys):
    uri = f"https://alice:{ALICE[PASSWORD]}@mlflow.example.org"
    for key, stop_here in [("MLFLOW_TRACKING_URI", lambda: require_server(uri, "MLFLOW_TRACKING_URI")),
                           ("--tracking-uri", lambda: report.main(["--tracking-uri", uri, "--out", str(tmp_path)]))]:
        with pytest.raises(SystemExit) as stop:
            stop_here()
        assert stop.value.code == 2
        shown = "https://alice:***@mlflow.example.org"
        assert capsys.readouterr().err == f"aos_bench: {key}={shown}: {IN_A_URI}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # 168 s on a 2-core machine shared with other trainings (a sweep and a run): python -m pytest -m slow tests/test_auth.py
def test_sweep_and_run_with_credentials_finish_and_write_no_password(tmp_path, tmp_path_factory, env, locked, capsys):
    args = ["experiment=smoke", "imbalance.mu=0.3", "method=base,aos", "seed=0", f"tracking.uri={locked}", "tracking.experiment=locked"]
    result = sweep_cli(tmp_path, env | ALICE, *args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert result.returncode == 0, result.stderr
    command = [sys.executable, "-m", "aos_bench", "dataset=synthetic", "train=smoke", "tracking.experiment=single", f"hydra.run.dir={tmp_path}/run"]
    single = subprocess.run(command, cwd=tmp_path, env=env | ALICE | {"MLFLOW_TRACKING_URI": locked}, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr

    with signed_in(env["HOME"], ALICE):
        client = mlflow.MlflowClient(locked)
        runs = client.search_runs([client.get_experiment_by_name("locked").experiment_id])
        [single_run] = client.search_runs([client.get_experiment_by_name("single").experiment_id])
        files = {run.info.run_id: run_files(client, run.info.run_id, tmp_path / "downloads" / run.info.run_id) for run in runs}
        report.main(["--tracking-uri", locked, "--experiment", "locked", "--out", str(tmp_path / "results")])
    assert sorted((run.info.status, "sweep_key" in run.data.tags) for run in runs) == [
        ("FINISHED", False), ("FINISHED", False), ("FINISHED", True)]
    parent = next(run for run in runs if "sweep_key" in run.data.tags)
    assert {"report/smoke.md", "report/smoke.csv", "report/smoke.png"} <= set(files[parent.info.run_id])
    assert f"tracking.uri={locked}" in (tmp_path / "results" / "smoke.md").read_text()  # its header: the sweep's command

    # every param, tag (descriptions and sweep_command among them), artifact, file and printed line
    assert single_run.info.status == "FINISHED"
    logged = [f"{name}={value}" for run in [*runs, single_run] for name, value in {**run.data.params, **run.data.tags}.items()]
    printed = capsys.readouterr()
    hydra_files = {tmp_path / name for name in ("multirun/multirun.yaml", "multirun/0/.hydra/config.yaml", "multirun/1/__main__.log",
                                                "run/.hydra/hydra.yaml", "run/.hydra/overrides.yaml", "run/__main__.log")}
    assert all(path.is_file() for path in hydra_files) and all(files.values())  # the job logs and configs, the artifacts downloaded
    printed_lines = [result.stdout, result.stderr, single.stdout, single.stderr, printed.out, printed.err]
    store = [*tmp_path_factory.getbasetemp().glob("locked*/server")]  # the server's runs, artifacts, auth store and log
    haystack = "\n".join([*logged, *printed_lines]).encode() + every_file(tmp_path, Path(env["HOME"]), *store)
    assert f"tracking.uri={locked}".encode() in haystack and store  # the search sees the config and the store
    assert not holds_secret(haystack, "alice", ALICE[PASSWORD])
