"""Load test of a tracking server: many jobs logging at once, as real jobs do, against a local `mlflow server` on
127.0.0.1 that keeps its runs in SQLite, then in PostgreSQL. Prints, for each: jobs per minute, the median and 95th
percentile of the time one job takes to log, errors, and runs lost or left RUNNING.

    python scripts/load_test.py                                    # 32 jobs, 8 at once, 20 epochs; both stores
    python scripts/load_test.py --jobs 64 --parallel 16 --write results/load_test.md
    python scripts/load_test.py --jobs 500 --parallel 64 --pool 40 # the PostgreSQL server with 40 + 40 connections a worker

A job here is a real job's logging without its training: aos_bench.tracking.job_run on the smoke preset's config (its
params, tags and config.yaml, nested under one parent run as in a sweep), then `--epochs` epochs of per-epoch metrics,
the test metrics, class_counts.json and per_class.csv, and the run ended FINISHED. PostgreSQL is the server of
scripts/local_postgres.sh (start it first, as root), in a new database that is dropped at the end; without it that
half is skipped, saying why. Bounded: at most 500 jobs, 64 at once, and --timeout seconds of logging per store (jobs not
done by then are errors); the server is stopped in every case. All traffic goes to 127.0.0.1.
"""

import argparse
import contextlib
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import sqlalchemy
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from aos_bench.paths import CONFIG_DIR
from aos_bench.tracking import SWEEP_ENV, SigTerm, Terminated, ensure_experiment, job_run

ROOT = Path(__file__).resolve().parents[1]
MAX_JOBS, MAX_PARALLEL = 500, 64  # bounds on --jobs and --parallel
SERVER_START = 120.0  # seconds `mlflow server` gets to answer /health (7-15 s on a quiet 2-core machine)
SERVER_STOP = 30.0  # seconds it gets to exit after SIGTERM, before SIGKILL
EXPERIMENT = "load_test"


def free_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens (the OS's pick, released again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    """Whether the server at url answers its /health page."""
    try:
        urllib.request.urlopen(f"{url}/health", timeout=1).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def mlflow_server(backend: str, folder: Path, workers: int, pool: int | None = None) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 at a free port, its runs in `backend`, its artifacts under folder; yields its URL.
    pool: database connections each worker keeps, and as many more at a peak (MLflow's default: 5, and 10 more)."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--artifacts-destination",
               str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runner
    if pool:
        env |= {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(pool), "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(pool)}
    with open(folder / "server.log", "w") as log:  # its own process group: uvicorn runs in a child process
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START
        while not healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start within {SERVER_START:g} s: {(folder / 'server.log').read_text()[-500:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=SERVER_STOP)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=SERVER_STOP)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new database on scripts/local_postgres.sh's server, dropped at the end: its URI. Raises LookupError when none runs."""
    script = ROOT / "scripts" / "local_postgres.sh"
    if subprocess.run([str(script), "status"], capture_output=True, timeout=30).returncode != 0:
        raise LookupError("no PostgreSQL server: run `scripts/local_postgres.sh start` as root")
    server = subprocess.run([str(script), "uri"], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    name = f"aos_load_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def job_config(url: str, seed: int) -> DictConfig:
    """The smoke preset's config for one job (its seed), logging to the server at url."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", f"seed={seed}", f"tracking.uri={url}", f"tracking.experiment={EXPERIMENT}"])


def log_one_job(cfg: DictConfig, epochs: int) -> tuple[float, str | None]:
    """Log one job as aos_bench.job.run does, without training: (seconds it took, the error or None)."""
    start = time.monotonic()
    try:
        tags = {"dataset": cfg.dataset.name, "method": cfg.method.name, "imbalance": cfg.imbalance.kind, "recipe": cfg.recipe.name}
        with job_run(cfg, tags | {"subset_sha256": secrets.token_hex(32)}):
            for epoch in range(epochs):  # what fit's on_epoch logs: the epoch's mean loss (and clipped steps when clipping)
                mlflow.log_metrics({"train_loss": 2.3 / (epoch + 1), "clipped_steps": float(epoch % 3)}, step=epoch)
            classes = [f"class{k}" for k in range(10)]
            mlflow.log_dict({"classes": classes, "minority_classes": [0, 1, 2], "imbalanced": [20] * 3 + [200] * 7}, "class_counts.json")
            names = ("f1_macro", "f1_weighted", "accuracy", "balanced_accuracy", "gmean", "f1_majority", "f1_minority")
            mlflow.log_metrics({f"test_{name}": 50.0 + k for k, name in enumerate(names)} | {"train_steps": 6.0})
            mlflow.log_text("class,precision,recall,f1,support\n" + "".join(f"{c},50,50,50,100\n" for c in classes), "per_class.csv")
    except (Terminated, SigTerm):  # the pool's SIGTERM at --timeout: this worker exits, as a stopped job does
        os._exit(128 + signal.SIGTERM)  # (surviving it, as job_run's handler lets a job do, kept the pool from ending)
    except Exception as error:  # the figure counts it; the run's fate is read from the store afterwards
        return time.monotonic() - start, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    return time.monotonic() - start, None


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of values, interpolated linearly between order statistics."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def load(url: str, jobs: int, parallel: int, epochs: int, timeout: float) -> dict[str, float | int | str]:
    """Run `jobs` jobs' logging, `parallel` at once, against the server at url, under one parent run; the figures."""
    experiment_id = ensure_experiment(url, EXPERIMENT)
    client = mlflow.MlflowClient(url)
    parent = client.create_run(experiment_id, tags={"sweep_key": secrets.token_hex(8), "preset": "load_test"}, run_name="load test").info.run_id
    os.environ[SWEEP_ENV] = parent  # each job's run nests under it, as under a sweep (the worker processes inherit it)
    configs = [job_config(url, seed) for seed in range(jobs)]
    start = time.monotonic()
    pool = multiprocessing.get_context("fork").Pool(parallel)
    pending = [pool.apply_async(log_one_job, (cfg, epochs)) for cfg in configs]
    results: list[tuple[float, str | None]] = []
    for job in pending:
        left = max(0.0, start + timeout - time.monotonic())
        try:
            results.append(job.get(timeout=left))
        except multiprocessing.TimeoutError:
            results.append((timeout, f"not done within --timeout {timeout:g} s"))
    wall = time.monotonic() - start
    pool.terminate()
    pool.join()
    del os.environ[SWEEP_ENV]
    client.set_terminated(parent, "FINISHED")
    runs = client.search_runs([experiment_id], f"tags.sweep = '{parent}'", max_results=MAX_JOBS + 100)
    errors = [error for _, error in results if error]
    done = [seconds for seconds, error in results if not error]
    return {
        "jobs": jobs, "parallel": parallel, "epochs": epochs, "wall_s": wall,
        "jobs_per_min": 60 * len(done) / wall,
        "p50_s": percentile(done, 50) if done else float("nan"), "p95_s": percentile(done, 95) if done else float("nan"),
        "errors": len(errors), "first_error": errors[0] if errors else "",
        "lost": jobs - len(runs), "running": sum(run.info.status == "RUNNING" for run in runs),
        "finished": sum(run.info.status == "FINISHED" for run in runs),
    }


def line(store: str, figures: dict) -> str:
    """One store's figures on one line."""
    text = (f"{store}: {figures['jobs']} jobs, {figures['parallel']} at once, {figures['epochs']} epochs each: "
            f"{figures['jobs_per_min']:.1f} jobs/min; one job's logging p50 {figures['p50_s']:.2f} s, p95 {figures['p95_s']:.2f} s; "
            f"errors {figures['errors']}; runs lost {figures['lost']}, left RUNNING {figures['running']}, FINISHED {figures['finished']} "
            f"(wall {figures['wall_s']:.1f} s)")
    return text + (f"; first error: {figures['first_error']}" if figures["errors"] else "")


def main(argv: list[str] | None = None) -> None:
    """Command line: load-test an SQLite-backed and a PostgreSQL-backed `mlflow server`, print the figures (and write them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=32, help=f"jobs per store, at most {MAX_JOBS} (default: %(default)s)")
    parser.add_argument("--parallel", type=int, default=8, help=f"jobs logging at once, at most {MAX_PARALLEL} (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=20, help="per-epoch metric steps a job logs (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="the server's uvicorn worker processes (default: %(default)s)")
    parser.add_argument("--pool", type=int, help="the PostgreSQL server's connections per worker, and as many more at a peak "
                        "(MLFLOW_SQLALCHEMYSTORE_POOL_SIZE and _MAX_OVERFLOW; default: MLflow's, 5 and 10 more)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds of logging per store before the rest count as errors")
    parser.add_argument("--stores", default="sqlite,postgresql", help="which servers, in order (default: %(default)s)")
    parser.add_argument("--write", type=Path, help="also write the figures, with this command, to this markdown file")
    args = parser.parse_args(argv)
    if not (1 <= args.jobs <= MAX_JOBS and 1 <= args.parallel <= MAX_PARALLEL and args.epochs >= 1 and args.timeout > 0):
        parser.error(f"--jobs in 1..{MAX_JOBS}, --parallel in 1..{MAX_PARALLEL}, --epochs >= 1 and --timeout > 0")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # no `View run ... at:` line per run
    lines = []
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix=f"load_{store}_") as folder:
            try:
                with contextlib.ExitStack() as stack:
                    if store == "sqlite":
                        backend = f"sqlite:///{folder}/mlflow.db"
                    elif store == "postgresql":
                        backend = stack.enter_context(postgres_database())
                    else:
                        parser.error(f"--stores: sqlite or postgresql, not {store}")
                    pool = args.pool if store == "postgresql" else None  # SQLite's one writer gains nothing from more
                    url = stack.enter_context(mlflow_server(backend, Path(folder), args.workers, pool))
                    lines.append(line(store, load(url, args.jobs, args.parallel, args.epochs, args.timeout)))
            except LookupError as why:
                lines.append(f"{store}: skipped ({why})")
        print(lines[-1], flush=True)
    if args.write:
        load_avg = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        command = "python scripts/load_test.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.write.write_text(
            f"`{command}` ({time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, load average after it {load_avg}, "
            f"MLflow {mlflow.__version__}):\n\n```\n" + "\n".join(lines) + "\n```\n"
        )


if __name__ == "__main__":
    main()
