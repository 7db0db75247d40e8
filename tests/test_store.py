"""The store: many sweeps created on one fresh SQLite file at once, a failing store stopping the command in one line, and
the server check made before MLflow, torch or pandas is imported."""

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf
from servers import free_port
from sweeps import TINY

from aos_bench import sweep
from aos_bench.store import creation_lock
from aos_bench.tracking import ensure_experiment, results_view

SWEEPS = 8  # sweeps started at once on one fresh store: each lost its parent run, or all failed, before the creation lock


def launch(folder: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    """`python -m aos_bench ARGS` started (not awaited) in folder, its output in folder/out and folder/err."""
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "aos_bench", *args]
    with open(folder / "out", "w") as out, open(folder / "err", "w") as err:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=err)


@pytest.mark.slow  # 96-121 s on a shared 2-core machine (eight processes import torch at once); .ci/run runs it
def test_sweeps_started_together_on_a_fresh_store_each_keep_their_parent_and_jobs(tmp_path, env):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"  # no file yet: every sweep finds it missing
    processes = [
        launch(tmp_path / f"sweep{seed}", env, "-m", *TINY, "method=base", f"seed={seed}", f"tracking.uri={uri}",
               f"hydra.sweep.dir={tmp_path}/sweep{seed}/multirun")
        for seed in range(SWEEPS)
    ]
    codes = [process.wait(timeout=600) for process in processes]
    outputs = {seed: (tmp_path / f"sweep{seed}" / "out").read_text() + (tmp_path / f"sweep{seed}" / "err").read_text() for seed in range(SWEEPS)}
    assert codes == [0] * SWEEPS, outputs
    for seed, output in outputs.items():
        assert "Traceback" not in output and "raised" not in output, f"sweep {seed}: {output}"  # `Callback ... raised`: a warning

    runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("aos_bench").experiment_id])
    parents = {run.info.run_id: run for run in runs if "sweep_key" in run.data.tags}
    children = [run for run in runs if "sweep_key" not in run.data.tags]
    assert len(parents) == SWEEPS and len(children) == SWEEPS, "one parent run and one job run per sweep"
    assert {run.info.status for run in runs} == {"FINISHED"}
    for child in children:
        parent = parents[child.data.tags["sweep"]]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert f"seed={child.data.params['seed']}" in parent.data.tags["sweep_command"].split(), "each job under its own sweep"
    assert sorted(child.data.params["seed"] for child in children) == [str(seed) for seed in range(SWEEPS)]


def test_the_creation_lock_keeps_out_a_second_process_and_its_wait_is_bounded(tmp_path, env):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    waits = f"from aos_bench.store import creation_lock\nwith creation_lock('{uri}', wait=1.0):\n    print('entered')"
    with creation_lock(uri):
        start = time.monotonic()
        held = subprocess.run([sys.executable, "-c", waits], env=env, capture_output=True, text=True, timeout=60)
        seconds = time.monotonic() - start
    assert held.returncode == 2 and held.stdout == "", held.stderr
    assert held.stderr.splitlines() == [f"aos_bench: tracking store {uri}: another process has been creating it for over 1 s "
                                        f"({tmp_path}/store/mlflow.db.lock); is one stuck?"]
    assert 1.0 <= seconds < 30
    free = subprocess.run([sys.executable, "-c", waits], env=env, capture_output=True, text=True, timeout=60)
    assert (free.returncode, free.stdout) == (0, "entered\n"), free.stderr


@pytest.mark.parametrize(
    "mode", [["-m", *TINY, "method=base", "seed=0"], ["dataset=synthetic", "train=smoke", "train.max_steps=1"]], ids=["sweep", "run"]
)
def test_a_store_that_fails_stops_the_command_in_one_line_and_keeps_the_file(tmp_path, env, mode):
    """The store's write check at the door (store.write_problem) finds it, before Hydra writes or MLflow opens anything."""
    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    store.write_bytes(hashlib.sha256(b"not an SQLite file").digest() * 128)  # 4 KiB that SQLite cannot read
    before = store.read_bytes()
    uri = f"sqlite:///{store}"
    command = [sys.executable, "-m", "aos_bench", *mode, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/multirun", f"hydra.run.dir={tmp_path}/run"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"aos_bench: tracking.uri={uri}: cannot be opened for writing (sqlite3: file is not a database)"]
    assert "Traceback" not in result.stdout and store.read_bytes() == before, "the store's file is left as it was"


def test_the_server_check_imports_neither_mlflow_nor_torch_nor_pandas(env):
    probe = ("import sys\nfrom aos_bench.store import server_problem\n"
             f"print(server_problem('http://127.0.0.1:{free_port()}'))\n"
             "print(sorted(name for name in ('mlflow', 'torch', 'torchvision', 'pandas') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == ["does not answer (connection refused); start the server or fix the address", "[]"], result.stderr


# One job's store calls (aos_bench.tracking.ensure_experiment, then a run) in a process of its own, made at one wall-clock
# time: every process has imported MLflow by then, so their first opens of the fresh store coincide.
ONE_JOB = """import sys, time
import mlflow
from aos_bench.tracking import ensure_experiment
uri, start_at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
with mlflow.start_run(experiment_id=ensure_experiment(uri, "aos_bench")):
    mlflow.log_param("job", sys.argv[3])
"""


def test_single_jobs_opening_a_fresh_store_at_the_same_instant_each_keep_their_run(tmp_path, env):
    uri, jobs = f"sqlite:///{tmp_path}/store/mlflow.db", 4
    start_at = time.time() + 10  # seconds: past the 4 processes' MLflow imports (2-3 s each) on 2 busy cores
    processes = [subprocess.Popen([sys.executable, "-c", ONE_JOB, uri, str(start_at), str(job)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for job in range(jobs)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * jobs, outputs
    assert time.time() > start_at, "every process waited for the same instant"
    client = mlflow.MlflowClient(uri)
    assert [experiment.name for experiment in client.search_experiments()] == ["aos_bench", "Default"]
    runs = client.search_runs([client.get_experiment_by_name("aos_bench").experiment_id])
    assert sorted((run.data.params["job"], run.info.status) for run in runs) == [(str(job), "FINISHED") for job in range(jobs)]


def test_a_store_that_fails_as_a_sweep_ends_stops_it_in_one_line(tmp_path, capsys):
    store = tmp_path / "mlflow.db"
    store.write_bytes(hashlib.sha256(b"not an SQLite file").digest() * 128)
    uri = f"sqlite:///{store}"
    callback = sweep.SweepTracking(report=True)
    callback.uri, callback.key, callback.run_id = uri, "tracking.uri", "0123abcd"  # as on_multirun_start leaves them
    sweep.FINISH_PROGRESS[callback.run_id] = lambda: None  # the progress thread's stop
    with pytest.raises(SystemExit) as stop:
        # a sweep of the basic launcher, as Hydra hands it to the callback
        ended = OmegaConf.create({"hydra": {"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
                                            "sweep": {"dir": str(tmp_path)}}, "tracking": {"experiment": "aos_bench"}})
        callback.on_multirun_end(config=ended)
    why = "(DatabaseError: (sqlite3.DatabaseError) file is not a database)"
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"aos_bench: tracking.uri={uri}: could not mark the sweep's parent run FINISHED {why}; its jobs' runs are kept\n"
    sweep.fail_if_running(uri, callback.run_id)  # at exit: one line too, where a traceback was
    assert capsys.readouterr().err == f"aos_bench: tracking.uri={uri}: could not end the stopped sweep {callback.run_id} {why}\n"


def test_an_experiment_gets_the_uis_landing_view_when_made_and_when_made_before_it(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    older = client.create_experiment("aos_bench")  # as a store written before the view existed holds it
    assert ensure_experiment(uri, "aos_bench") == older
    for experiment_id in (older, ensure_experiment(uri, "fresh")):
        assert client.get_experiment(experiment_id).tags.items() >= results_view().items()
