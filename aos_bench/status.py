"""How far a sweep is, from any shell, while it runs or after: `python -m aos_bench.status [--sweep RUN_ID|latest]`.

    sweep 3f2a9c... (smoke sweep): RUNNING; SLURM array 812, closed by job 813
    12 jobs: 3 queued, 2 running, 6 FINISHED, 1 FAILED; ETA 1m20s

FINISHED, FAILED and running are the store's: the sweep's job runs, one per config (a config with a FINISHED run is
FINISHED; else its latest run counts), FAILED including KILLED. A FAILED run of an earlier launch does not count: the
latest launch runs its job again. The jobs not in the store yet are queued while the sweep runs; a detached SLURM sweep
(hydra/launcher=slurm_detached) counts them from SLURM's queue (squeue), and those that left the queue without a run
(cancelled while pending, or killed before they logged) as gone. The ETA: the mean duration of the finished jobs,
times the jobs left, over the jobs running now.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aos_bench.progress import duration

if TYPE_CHECKING:
    import mlflow

FAILED = ("FAILED", "KILLED")  # a job that ended without its result
SHOWN_FAILED = 10  # failed jobs named one per line under the counts


@dataclass(frozen=True)
class SweepStatus:
    """One sweep's jobs, counted: the store's runs and, for a detached SLURM sweep, its array in the queue."""

    parent: mlflow.entities.Run
    total: int | None  # jobs in the grid (the parent's `jobs` tag; None for a sweep launched before it was recorded)
    finished: list[mlflow.entities.Run]  # one run per config
    failed: list[mlflow.entities.Run]  # FAILED or KILLED in the latest launch, no FINISHED run of the config
    running: list[mlflow.entities.Run]
    queued: int  # jobs not in the store yet that will run: SLURM's pending tasks, or the rest of a running local sweep
    gone: int  # jobs with no run that will not run: they left SLURM's queue without one, or the sweep has ended
    eta: float | None  # seconds until the last job ends, at the finished jobs' mean duration

    @property
    def array(self) -> str | None:
        """The SLURM array of a detached sweep's latest launch."""
        return self.parent.data.tags.get("slurm_array")

    def lines(self) -> list[str]:
        """What `python -m aos_bench.status` prints: the sweep, the counts with the ETA, then the failed jobs."""
        info, tags = self.parent.info, self.parent.data.tags
        head = f"sweep {info.run_id} ({info.run_name}): {info.status}"
        if self.array:
            head += f"; SLURM array {self.array}, closed by job {tags.get('slurm_closer', '?')}"
        counts = [f"{self.queued} queued", f"{len(self.running)} running", f"{len(self.finished)} FINISHED", f"{len(self.failed)} FAILED"]
        if self.gone:
            counts.append(f"{self.gone} {'gone from the queue without a run' if self.array else 'not run'}")
        if self.eta is not None:
            until = f"ETA {duration(self.eta)}"
        elif info.status == "RUNNING":
            until = "ETA after the first job ends"
        else:
            until = f"ended {time.strftime('%Y-%m-%d %H:%M', time.localtime(info.end_time / 1000))}" if info.end_time else "ended"
        total = "?" if self.total is None else str(self.total)
        lines = [head, f"{total} jobs: {', '.join(counts)}; {until}"]
        for run in self.failed[:SHOWN_FAILED]:
            error = (run.data.tags.get("error") or "").splitlines()[:1]
            lines.append(f"  {run.info.status}: {run.info.run_name}" + (f" ({error[0][:120]})" if error else ""))
        if len(self.failed) > SHOWN_FAILED:
            lines.append(f"  ... and {len(self.failed) - SHOWN_FAILED} more")
        return lines


def latest_per_config(runs: Sequence[mlflow.entities.Run]) -> list[mlflow.entities.Run]:
    """One run per config_hash: its FINISHED run if it has one (the latest), else its latest run."""
    chosen = {}
    for run in sorted(runs, key=lambda run: (run.info.status == "FINISHED", run.info.start_time)):
        chosen[run.data.tags.get("config_hash", run.info.run_id)] = run
    return list(chosen.values())


def in_queue(array: str) -> dict[str, int] | None:
    """The tasks of a SLURM array in the queue, by state (PENDING, RUNNING, COMPLETING, ...): {} once the array has
    left it; None where squeue does not answer (no SLURM on this machine)."""
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%T"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return {} if "Invalid job id" in result.stderr else None  # an array that ended long ago is forgotten
    states: dict[str, int] = {}
    for state in result.stdout.split():
        states[state] = states.get(state, 0) + 1
    return states


def sweep_status(client: mlflow.MlflowClient, parent: mlflow.entities.Run) -> SweepStatus:
    """The counts of the sweep whose parent run is `parent`, from its store and, for a detached sweep, SLURM's queue."""
    info, tags = parent.info, parent.data.tags
    launched = int(tags.get("launched", 0))  # ms; runs that failed before the latest launch are being retried
    runs = latest_per_config(client.search_runs([info.experiment_id], f"tags.sweep = '{info.run_id}'", max_results=50_000))
    finished = [run for run in runs if run.info.status == "FINISHED"]
    failed = [run for run in runs if run.info.status in FAILED and run.info.start_time >= launched]
    running = [run for run in runs if run.info.status == "RUNNING"]
    total = int(tags["jobs"]) if "jobs" in tags else None
    waiting = max(0, (total or 0) - len(finished) - len(failed) - len(running))
    queued = waiting if info.status == "RUNNING" else 0
    if tags.get("slurm_array") and (states := in_queue(tags["slurm_array"])) is not None:
        started = sum(n for state, n in states.items() if state != "PENDING")  # a task runs some seconds before its run starts
        queued = min(waiting, states.get("PENDING", 0) + max(0, started - len(running)))
    eta = None
    if info.status == "RUNNING" and finished and queued + len(running):
        mean = sum(run.info.end_time - run.info.start_time for run in finished) / len(finished) / 1000
        eta = mean * (queued + len(running)) / max(1, len(running))
    return SweepStatus(parent, total, finished, failed, running, queued, waiting - queued, eta)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print how far one sweep is."""
    from aos_bench.errors import reject
    from aos_bench.report import sweep_arguments
    from aos_bench.report.runs import find_sweep
    from aos_bench.tracking import require_server

    parser = argparse.ArgumentParser(prog="python -m aos_bench.status", description=__doc__.split("\n")[0])
    args = sweep_arguments(parser).parse_args(argv)
    require_server(args.tracking_uri, "--tracking-uri")
    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    client = mlflow.MlflowClient(args.tracking_uri)
    try:
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            raise LookupError(f"no experiment {args.experiment!r} at {args.tracking_uri}")
        parent = find_sweep(experiment.experiment_id, args.sweep)
        if "sweep_key" not in parent.data.tags:
            raise LookupError(f"run {args.sweep} is not a sweep's parent run (a job's run: its sweep is {parent.data.tags.get('sweep', 'none')})")
    except LookupError as error:
        reject(f"status: {error}")
    print("\n".join(sweep_status(client, parent).lines()))


if __name__ == "__main__":
    main()
