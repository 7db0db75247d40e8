"""Where a sweep stands: in the launching process, one line per job as its MLflow run ends, counted against the grid.

Every launcher (Hydra's basic one, joblib's workers, submitit's local and SLURM jobs) ends each job's run in the
store, so the launching process reads the count there rather than from the launcher: a thread polls the sweep's
child runs every POLL_SECONDS and prints `[k/N] <run name>: F1 <value> (<time>); ETA <time>` for each that ended.
A resumed sweep counts the jobs it skips (a FINISHED run of their config is already there) as done from the start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mlflow

POLL_SECONDS = 10.0  # a poll reads only runs that ended since the last one: a few ms of the launching process
ENDED = ("FINISHED", "FAILED", "KILLED")
log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """`2m03s`; from an hour on, `1h02m`."""
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s"


def job_line(done: int, total: int, run: mlflow.entities.Run, eta: float | None) -> str:
    """`[3/90] aos intel step mu=0.4 rho=20 seed=2: F1 61.20 (2m04s); ETA 1h32m` for a run that has ended."""
    seconds = (run.info.end_time - run.info.start_time) / 1000
    ended = f"F1 {run.data.metrics['test_f1_macro']:.2f}" if run.info.status == "FINISHED" else run.info.status
    until = f"; ETA {duration(eta)}" if eta is not None else ""
    return f"[{done}/{total}] {run.info.run_name}: {ended} ({duration(seconds)}){until}"


def watch(uri: str, sweep_id: str, total: int) -> Callable[[], None]:
    """Print a job_line for each job run of the sweep that ends from now on, from a thread polling the store; returns
    the function that stops the thread once the last job has returned, printing the lines not yet printed."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_run(sweep_id).info.experiment_id

    def ended(since: int = 0) -> list[mlflow.entities.Run]:
        """The sweep's job runs that have ended at or after `since` (ms), in the order they ended: a poll reads the
        runs new since the last one, not the whole sweep."""
        query = f"tags.sweep = '{sweep_id}' and attributes.end_time >= {since}"  # a RUNNING run has no end time
        runs = client.search_runs([experiment_id], query, max_results=50_000)
        return sorted((run for run in runs if run.info.status in ENDED), key=lambda run: run.info.end_time)

    earlier = ended()
    seen = {run.info.run_id for run in earlier}
    skipped = len({run.data.tags.get("config_hash") for run in earlier if run.info.status == "FINISHED"})
    counts = {"new": 0, "since": max((run.info.end_time for run in earlier), default=0)}  # runs ended in this launch; the last end
    if skipped:
        log.info("[%d/%d] done before this launch: their jobs are skipped", skipped, total)
    start = time.time() * 1000  # ms, as MLflow's end times

    def report() -> None:
        """One line for each run that ended since the last call."""
        for run in ended(counts["since"]):
            if run.info.run_id in seen:  # one that ended in the same millisecond as the last one reported
                continue
            seen.add(run.info.run_id)
            counts["since"] = run.info.end_time
            counts["new"] += 1
            done = skipped + counts["new"]
            eta = (run.info.end_time - start) / 1000 / counts["new"] * (total - done) if done < total else None  # at this launch's pace
            log.info(job_line(done, total, run, eta))

    stop = threading.Event()
    lock = threading.Lock()  # the thread and the final call never print the same run twice

    def poll() -> None:
        """Report every POLL_SECONDS until stopped; a busy store (SQLite locked by a job's write) waits for the next."""
        while not stop.wait(POLL_SECONDS):
            with lock:
                try:
                    report()
                except mlflow.exceptions.MlflowException as error:
                    log.debug("progress: store busy (%s); next poll in %g s", error, POLL_SECONDS)

    thread = threading.Thread(target=poll, name="sweep-progress", daemon=True)
    thread.start()

    def finish() -> None:
        """Stop polling and print what ended since the last poll."""
        stop.set()
        thread.join()
        with lock:
            report()

    return finish
