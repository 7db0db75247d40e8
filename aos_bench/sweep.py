"""One MLflow parent run per multirun: opened (or resumed) before the first job starts, closed and reported after the last.

The launching process creates the store, the experiment and the parent run, and exports the parent's id
(tracking.SWEEP_ENV) and the store's URI to the jobs through the environment, which Hydra's launchers pass on:
the in-process basic launcher, joblib's loky workers and submitit's local and SLURM jobs (sbatch's default --export=ALL).
Each job's run carries the parent id as `mlflow.parentRunId`, so the MLflow UI shows one sweep as one expandable row.

Resume: the same command again (same preset, grid and overrides, ignoring tracking.NOT_HASHED keys) reopens the
same parent run, and every job that already has a FINISHED run there with the same config hash returns its metrics
without training (job.run). force=true starts a new parent run instead, so every job runs again. Trade-off: a
different command, even one whose grid overlaps, is a different sweep and reruns its jobs; one sweep stays one
self-contained row, and the report never mixes runs of two sweeps.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra import compose
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from aos_bench.checks import hydra_error_line, launcher_problem, override_key, stack_problem, validate
from aos_bench.errors import UsageError, reject
from aos_bench.progress import watch
from aos_bench.registry import launcher_of
from aos_bench.status import in_queue
from aos_bench.store import require_reachable, require_writable, tracking_key, tracking_uri, unwritable_hint

if TYPE_CHECKING:  # mlflow and torch are imported where a sweep starts: Hydra builds this callback for single runs too
    import mlflow

log = logging.getLogger(__name__)
# In the launching process, each sweep's progress.watch stop function, by parent run id: not an attribute of the
# callback, which Hydra's joblib launcher pickles for its workers (a thread cannot be pickled)
FINISH_PROGRESS: dict[str, Callable[[], None]] = {}


def sweep_key(config: DictConfig) -> str:
    """16 hex digits naming a sweep command: its overrides and the preset's grid, without tracking.NOT_HASHED keys."""
    from aos_bench.tracking import hashed

    overrides = sorted(o for o in config.hydra.overrides.task if hashed(override_key(o)))
    grid = OmegaConf.to_container(config.hydra.sweeper).get("params")  # a preset's hydra.sweeper.params
    text = json.dumps({"overrides": overrides, "grid": grid}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parent_name(config: DictConfig) -> str:
    """The parent run's name: the preset and the overrides that narrow its grid (`table1 sweep dataset=intel`), or,
    without a preset, `sweep` and the time it started."""
    if not config.preset:
        return f"sweep {time.strftime('%Y-%m-%d %H:%M')}"
    grid = {override_key(key) for key in OmegaConf.select(config, "hydra.sweeper.params") or {}}  # `+row` adds a group
    narrowing = [o for o in config.hydra.overrides.task if override_key(o) in grid]
    return " ".join([f"{config.preset} sweep", *narrowing])


def last_parent(client: mlflow.MlflowClient, experiment_id: str, key: str) -> list[mlflow.entities.Run]:
    """The latest parent run of the sweep command with this sweep_key, as a list of one, or empty."""
    return client.search_runs([experiment_id], f"tags.sweep_key = '{key}'", order_by=["attributes.start_time DESC"], max_results=1)


def open_parent(config: DictConfig, client: mlflow.MlflowClient, experiment_id: str) -> str:
    """The id of this command's last parent run, set RUNNING again (resume); a new one if none, or with force=true."""
    key = sweep_key(config)
    tags = {
        "preset": str(config.preset or "none"),
        "sweep_key": key,
        "sweep_dir": str(Path(config.hydra.sweep.dir).resolve()),  # of the latest launch
        "sweep_command": " ".join(config.hydra.overrides.task),
    }
    last = [] if config.force else last_parent(client, experiment_id, key)
    described = {"mlflow.note.content": f"python -m aos_bench -m {tags['sweep_command']}".rstrip()}  # its description
    if not last:
        return client.create_run(experiment_id, tags=tags | described, run_name=parent_name(config)).info.run_id
    run_id = last[0].info.run_id
    if (array := last[0].data.tags.get("slurm_array")) and last[0].info.status == "RUNNING" and in_queue(array):
        reject(f"sweep {run_id} still has jobs in SLURM's queue (array {array}): `python -m aos_bench.status --sweep {run_id}` "
               f"says how far it is; wait for its end, or `scancel {array}`, then run this command again to resume it")
    client.update_run(run_id, status="RUNNING")
    for name, value in tags.items():
        client.set_tag(run_id, name, value)
    if "error" in last[0].data.tags:  # why the last launch stopped: no longer true of a sweep that runs again
        client.delete_tag(run_id, "error")
    close_orphans(client, experiment_id, run_id)
    log.info("resuming sweep %s: its jobs with a FINISHED run are skipped (force=true reruns them all)", run_id)
    return run_id


def failed_jobs(uri: str, experiment_id: str, run_id: str) -> str:
    """`N of the sweep's jobs failed: <run name> (<error>), ...; the same command reruns them`, or '' when every job
    has a FINISHED run."""
    import mlflow

    from aos_bench.report.runs import unfinished

    mlflow.set_tracking_uri(uri)
    jobs = unfinished(experiment_id, run_id)
    if jobs.empty:
        return ""
    named = []
    for _, job in jobs.iterrows():  # a job by its overrides (run names leave out lr, epochs, ...), and why it failed
        overrides = str(job.get("tags.mlflow.note.content")).removeprefix("python -m aos_bench ")
        named.append(f"`{overrides}` ({job['tags.error'] if isinstance(job.get('tags.error'), str) else job['status']})")
    return f"{len(named)} of the sweep's jobs failed: {', '.join(named)}; the same command reruns them"


def record_launch(client: mlflow.MlflowClient, run_id: str, jobs: int) -> None:
    """Tag the parent run with this launch: its jobs and start (ms), read by aos_bench.status; a detached launch's
    SLURM tags are the detached launcher's to set again."""
    tags = client.get_run(run_id).data.tags
    client.set_tag(run_id, "jobs", str(jobs))
    client.set_tag(run_id, "launched", str(int(time.time() * 1000)))
    for name in ("slurm_array", "slurm_closer"):
        if name in tags:
            client.delete_tag(run_id, name)


def close_orphans(client: mlflow.MlflowClient, experiment_id: str, run_id: str) -> None:
    """Mark KILLED the job runs that the sweep's previous launch left RUNNING: a worker process killed with its
    launcher (joblib's, at a SIGINT or SIGKILL) cannot end its own run. The resume reruns their jobs."""
    for orphan in client.search_runs([experiment_id], f"tags.sweep = '{run_id}' and attributes.status = 'RUNNING'"):
        client.set_tag(orphan.info.run_id, "error", "left RUNNING when its sweep's launch stopped; the resume reruns its job")
        client.set_terminated(orphan.info.run_id, "KILLED")


def fail_if_running(uri: str, run_id: str, stopped: list[str] | None = None, jobs_in_process: bool = True, key: str = "tracking.uri") -> None:
    """At exit: a parent run still RUNNING means the sweep stopped before its end: KILLED when this process got a
    signal (`stopped`, or a KILLED job run when jobs run in this process), else FAILED: a job failed, or a job in
    another process was stopped (scancel, a preemption) while the sweep itself was not. A store that fails here gets
    one line (key: where uri was set), unless it cannot be written: the line that stopped the sweep said so already."""
    try:
        close_stopped(uri, run_id, stopped, jobs_in_process)
    except Exception as error:  # at exit, where a traceback would follow the line that said what stopped the sweep
        from aos_bench.tracking import store_failure

        if unwritable_hint(error, uri) is None:  # a full, read-only or locked store stopped the job or the parent's end
            print(f"aos_bench: {store_failure(uri, key, f'end the stopped sweep {run_id}', error)}", file=sys.stderr)


def close_stopped(uri: str, run_id: str, stopped: list[str] | None, jobs_in_process: bool) -> None:
    """fail_if_running's work: mark the parent run KILLED or FAILED, with the `error` tag, if it is still RUNNING."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        return
    last = client.search_runs([run.info.experiment_id], f"tags.sweep = '{run_id}'", order_by=["attributes.start_time DESC"], max_results=1)
    if stopped or (jobs_in_process and last and last[0].info.status == "KILLED"):
        why = f"stopped by {', '.join(stopped)}" if stopped else "a job was stopped by a signal"
        client.set_tag(run_id, "error", f"{why}; the same command resumes the sweep")
        client.set_terminated(run_id, "KILLED")
        return
    client.set_tag(run_id, "error", "the sweep stopped before its last job returned; the same command resumes it")
    client.set_terminated(run_id, "FAILED")


def is_stacked(launcher: DictConfig) -> bool:
    """Whether this Hydra launcher is hydra/launcher=stacked."""
    return getattr(launcher_of(launcher), "stacked", False)


def is_detached(launcher: DictConfig) -> bool:
    """Whether this Hydra launcher is hydra/launcher=slurm_detached: the command returns once the array is submitted."""
    return getattr(launcher_of(launcher), "detached", False)


def jobs_in_process(launcher: DictConfig) -> bool:
    """Whether this Hydra launcher runs the jobs in the launching process (Hydra's basic one, aos_bench's stacked one),
    sharing its signals, rather than in worker processes (joblib) or cluster jobs (submitit); an unknown one: no."""
    return getattr(launcher_of(launcher), "in_process", False)


def stop_on_signals(stopped: list[str]) -> None:
    """In the launching process, SIGTERM and SIGINT append their name to `stopped` and raise KeyboardInterrupt,
    which no launcher catches: the sweep stops, and fail_if_running marks its parent run KILLED."""

    def handler(signum: int, frame: object) -> None:
        """Remember the signal, then stop the sweep."""
        stopped.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(f"stopped by {stopped[-1]}")

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def job_overrides(config: DictConfig) -> list[list[str]]:
    """Every job's overrides as the basic sweeper expands them: the preset's grid, then the command line (which wins)."""
    grid = [f"{key}={value}" for key, value in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(grid + list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def composer(config: DictConfig) -> Callable[[list[str]], DictConfig]:
    """A function from one job's overrides to its config as Hydra composes it. Jobs that differ only in values (seed=0,1,
    ..., mu) share one composition of their config groups, then get their values as Hydra applies them after composing:
    a 100-seed sweep composes once (0.1 to 0.2 s each on a busy 2-core machine), not 100 times."""
    loader, parser = GlobalHydra.instance().config_loader(), OverridesParser.create()
    composed: dict[tuple[str, ...], DictConfig] = {}
    groups: dict[str, bool] = {}  # whether a key is a config group: Hydra's look-up scans the config folders (0.04 s)
    parsed: dict[str, Override] = {}  # each override once: jobs share most of theirs, and Hydra's parser takes ms each

    def is_shared(key: str) -> bool:
        """Config groups (method=aos, +row=...) change the defaults list; hydra.* keys are not in a job's config."""
        if key not in groups:
            groups[key] = key.startswith("hydra") or bool(loader.get_group_options(key))
        return groups[key]

    def job_config(overrides: list[str]) -> DictConfig:
        """One job's config."""
        for line in overrides:
            if line not in parsed:
                parsed[line] = parser.parse_override(line)
        shared = tuple(line for line in overrides if is_shared(parsed[line].key_or_group))
        if shared not in composed:
            composed[shared] = compose(config.hydra.job.config_name, overrides=list(shared))
        job = copy.deepcopy(composed[shared])
        ConfigLoaderImpl._apply_overrides_to_config([parsed[line] for line in overrides if line not in shared], job)
        return job

    return job_config


def job_configs(config: DictConfig) -> list[DictConfig]:
    """The config of every job of the multirun `config`, in the sweeper's order."""
    return list(map(composer(config), job_overrides(config)))


def check_values(config: DictConfig) -> list[tuple[list[str], DictConfig]]:
    """Every job's overrides and config, once each value has passed its check (in a second, before torch is imported)."""
    if problem := launcher_problem(config.hydra.launcher):
        reject(f"{problem} (no job of this sweep has run)")
    jobs, stacked, job_config = [], is_stacked(config.hydra.launcher), composer(config)
    for overrides in job_overrides(config):
        try:
            jobs.append((overrides, job_config(overrides)))
            validate(jobs[-1][1])
            if stacked and (problem := stack_problem(jobs[-1][1])):
                raise UsageError(problem)
        except HydraException as error:  # Hydra would only warn of an error in a callback, then run the sweep
            reject(f"{hydra_error_line(error, overrides)} (job: {' '.join(overrides)}; no job of this sweep has run)")
        except UsageError as error:
            reject(f"{error} (job: {' '.join(overrides)}; no job of this sweep has run)")
    return jobs


def check_jobs(jobs: list[tuple[list[str], DictConfig]]) -> None:
    """Run every job's input checks that need the data (files, imbalance) before the first job trains."""
    from aos_bench.data import cached_loader
    from aos_bench.job import prepare

    load_once = cached_loader()
    for overrides, cfg in jobs:
        try:
            prepare(cfg, load=load_once)
        except UsageError as error:
            reject(f"{error} (job: {' '.join(overrides)}; no job of this sweep has run)")


class SweepTracking(Callback):
    """Hydra callback: a single run's values checked before Hydra writes its output dir; the multirun's MLflow parent
    run, and its report when the last job has returned."""

    def __init__(self, report: bool) -> None:
        self.report = report

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A single run: check its values and its tracking server before Hydra writes its output dir (so a URI's password
        never lands there, and a run that cannot be tracked leaves nothing behind)."""
        try:
            validate(config)
        except UsageError as error:
            reject(str(error))
        uri, key = tracking_uri(config.tracking), tracking_key(config.tracking)
        require_reachable(uri, key)  # seconds, before torch and MLflow
        require_writable(uri, key)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check the server and every job, then create the store, the experiment and the parent run; export the parent's id.
        Any failure stops the command with one line: Hydra would turn it into a warning and run every job untracked."""
        self.uri, self.key = tracking_uri(config.tracking), tracking_key(config.tracking)
        require_reachable(self.uri, self.key)  # first: seconds, before torch and MLflow are imported
        require_writable(self.uri, self.key)
        jobs = check_values(config)
        from aos_bench.tracking import SWEEP_ENV, ensure_experiment, require_scheme, store_failure

        require_scheme(self.uri, self.key)
        if not is_detached(config.hydra.launcher):  # the data checks import torch (5-15 s): a detached job checks its own data
            check_jobs(jobs)
        try:
            experiment_id = ensure_experiment(self.uri, config.tracking.experiment)  # before any client: it opens the store
            self.run_id = open_parent(config, mlflow_client(self.uri), experiment_id)
            record_launch(mlflow_client(self.uri), self.run_id, len(jobs))
        except Exception as error:
            reject(store_failure(self.uri, self.key, "create the sweep's parent run", error) + "; no job of this sweep has run")
        os.environ.update({SWEEP_ENV: self.run_id, "MLFLOW_TRACKING_URI": self.uri})  # inherited by every job
        if not is_detached(config.hydra.launcher):  # a detached launch returns at once: aos_bench.status reads its progress
            FINISH_PROGRESS[self.run_id] = watch(self.uri, self.run_id, len(jobs))
        # Hydra skips on_multirun_end when a job fails; a SIGKILL skips this too, leaving the parent RUNNING
        stopped: list[str] = []
        stop_on_signals(stopped)
        atexit.register(fail_if_running, self.uri, self.run_id, stopped, jobs_in_process(config.hydra.launcher), self.key)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Close the sweep (finish). A detached launch leaves the parent RUNNING: the job queued after its array closes it."""
        if is_detached(config.hydra.launcher):
            atexit.unregister(fail_if_running)  # submitted: the parent runs on without this process
            return
        FINISH_PROGRESS.pop(self.run_id)()
        finish(self.uri, self.key, config.tracking.experiment, self.run_id, Path(config.hydra.sweep.dir), self.report)


def finish(uri: str, key: str, experiment: str, run_id: str, sweep_dir: Path, report: bool) -> None:
    """Mark the parent run FINISHED, or FAILED naming the jobs that failed, then write the report of the FINISHED jobs
    into the sweep dir and log it to the parent run; a failure of the store stops the command with one line (every
    job's run is in the store by now, and stays), and failed jobs end it with exit 1 after the report. key: where uri
    was set."""
    from aos_bench.tracking import ERROR_TAG_LIMIT, store_failure, ui_address

    try:
        client = mlflow_client(uri)
        experiment_id = client.get_run(run_id).info.experiment_id
        failed = failed_jobs(uri, experiment_id, run_id)
        if failed:
            client.set_tag(run_id, "error", failed[:ERROR_TAG_LIMIT])
        client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
        log.info("MLflow: %s", ui_address(uri, experiment_id))
    except Exception as error:
        reject(store_failure(uri, key, "mark the sweep's parent run FINISHED", error) + "; its jobs' runs are kept")
    if report:
        report_sweep(uri, key, experiment, run_id, sweep_dir)
    if failed:  # after the report of the jobs that finished
        print(f"aos_bench: {failed}", file=sys.stderr)
        raise SystemExit(1)  # a run failed (docs/configuration.md's exit codes)


def report_sweep(uri: str, key: str, experiment: str, run_id: str, sweep_dir: Path) -> None:
    """Write the report of the sweep's FINISHED jobs into its sweep dir and log it to the parent run (none when no
    job finished); a failure stops the command with one line."""
    from aos_bench.report import write_report  # here, not at the top: jobs instantiate this callback too
    from aos_bench.tracking import store_failure

    client = mlflow_client(uri)
    # The sweep dir, not results/: a quick or partial sweep must not overwrite the committed tables;
    # `python -m aos_bench.report` writes results/ on purpose.
    try:
        paths = write_report(uri, experiment, run_id, sweep_dir)
        for path in paths:
            client.log_artifact(run_id, str(path), "report")
    except LookupError as error:  # every job failed: no table to write
        log.info("no report: %s", error)
        return
    except UsageError as error:  # a report file of the sweep dir that is a link or a folder: refused, not the store's fault
        reject(f"report: {error}; the runs are kept: `python -m aos_bench.report --sweep {run_id} --out DIR` writes it elsewhere")
    except Exception as error:
        line = store_failure(uri, key, "write the sweep's report", error)
        reject(f"{line}; the runs are kept: `python -m aos_bench.report --sweep {run_id}` writes it again")
    log.info("report: %s\n%s", paths[0], paths[0].read_text())


def mlflow_client(uri: str) -> mlflow.MlflowClient:
    """MLflow's client of the store at uri (imported here: Hydra builds the callback for single runs too)."""
    import mlflow

    return mlflow.MlflowClient(uri)
