"""The shared tracking server of docs/sweeps.md: `mlflow server --app-name basic-auth`, its runs in PostgreSQL, its
artifacts in a folder; a sweep logged through it, read back through the server and straight from the database."""

import secrets
from collections.abc import Iterator

import mlflow
import pytest
import sqlalchemy
from mlflow.server import get_app_client
from servers import ADMIN, ALICE, PASSWORD, USER, mlflow_server, signed_in
from sweeps import sweep_cli


@pytest.fixture
def database(postgres: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server, for one test: its URI. Dropped at the end."""
    name = f"aos_test_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield f"{postgres.rsplit('/', 1)[0]}/{name}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))  # FORCE: the server's pool may linger
    admin.dispose()


@pytest.mark.slow  # 48 to 58 s on a shared 2-core machine: the server's start (its migrations) and a 2-job sweep; .ci/run runs it
def test_a_sweep_through_a_locked_server_keeps_its_runs_in_postgresql(tmp_path, env, database):
    documented = {"MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key", "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[PASSWORD],
                  "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "40", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "40"}  # docs/sweeps.md's server
    with mlflow_server(tmp_path / "server", env | documented, "--app-name", "basic-auth", backend=database) as url:
        with signed_in(env["HOME"], ADMIN):
            get_app_client("basic-auth", tracking_uri=url).create_user(ALICE[USER], ALICE[PASSWORD])
        args = ["experiment=smoke", "imbalance.mu=0.3", "method=base,aos", "seed=0", f"tracking.uri={url}"]
        result = sweep_cli(tmp_path, env | ALICE, *args)
        assert result.returncode == 0, result.stderr
        with signed_in(env["HOME"], ALICE):
            client = mlflow.MlflowClient(url)
            runs = client.search_runs([client.get_experiment_by_name("aos_bench").experiment_id])
            parent = next(run for run in runs if "sweep_key" in run.data.tags)
            report = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "report")}  # through the server

    children = [run for run in runs if run is not parent]
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}
    assert all(child.data.tags["mlflow.parentRunId"] == parent.info.run_id for child in children)
    assert sorted(child.data.params["method.name"] for child in children) == ["aos", "base"]
    assert {"report/smoke.md", "report/smoke.csv", "report/smoke.png"} <= report
    assert not (tmp_path / "mlruns").exists(), "nothing may go to a local store"

    engine = sqlalchemy.create_engine(database)  # the server wrote them into PostgreSQL: read them there, without it
    with engine.connect() as connection:
        stored = dict(connection.execute(sqlalchemy.text("SELECT run_uuid, status FROM runs")).all())
        f1 = dict(connection.execute(sqlalchemy.text("SELECT run_uuid, value FROM latest_metrics WHERE key = 'test_f1_macro'")).all())
    engine.dispose()
    assert stored == {run.info.run_id: "FINISHED" for run in runs}
    assert f1 == pytest.approx({child.info.run_id: child.data.metrics["test_f1_macro"] for child in children})
    artifacts = tmp_path / "server" / "artifacts"  # --artifacts-destination: a folder, not the database
    assert len(list(artifacts.rglob("report/smoke.md"))) == 1 and len(list(artifacts.rglob("config.yaml"))) == 2
