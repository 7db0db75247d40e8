"""A SLURM sweep that gives the prompt back (hydra/launcher=slurm_detached): submit, return, close from a job.

The launching process (aos_bench.sweep's callback) composes and checks every job once, opens the parent run, then
submit() sends the sweep as one `sbatch --array` (each task runs its job as hydra/launcher=submitit_slurm runs it) and a
closing job that SLURM starts after the array's last task has ended, whatever its end (`--dependency=afterany`). The
command returns as soon as both are queued; the parent run stays RUNNING. The closing job (close()) counts the sweep's
runs in the store: every job FINISHED gives the parent FINISHED and the report, as the attached launch writes them;
otherwise the parent ends FAILED, its `error` tag naming the jobs that did not finish, and the same command resumes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from aos_bench.store import tracking_key
from aos_bench.sweep import finish, mlflow_client
from aos_bench.tracking import SWEEP_ENV

if TYPE_CHECKING:
    import submitit

    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

log = logging.getLogger(__name__)
CLOSER = {"cpus_per_task": 1, "gpus_per_node": None, "gpus_per_task": None, "timeout_min": 30}  # the closing job's share: one core for minutes
NAMED_FAILED = 20  # failed jobs named in the parent's `error` tag


def executor(params: dict[str, Any]) -> submitit.AutoExecutor:
    """submitit's SLURM executor for the hydra.launcher.* keys, mapped as hydra-submitit-launcher maps them (shared
    keys as they are, the others prefixed with slurm_)."""
    import submitit

    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    built = submitit.AutoExecutor(cluster="slurm", folder=params["submitit_folder"], slurm_max_num_timeout=params["max_num_timeout"])
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    rest = {key: value for key, value in params.items() if key not in ("submitit_folder", "max_num_timeout")}
    built.update_parameters(**{key if key in shared else f"slurm_{key}": value for key, value in rest.items()})
    return built


def submit(launcher: SlurmLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Queue the sweep's jobs as one SLURM array and its closing job after it; tag the parent run with both ids (read
    by aos_bench.status); return without waiting, one JobReturn per job with no value."""
    config = launcher.config
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    state = Singleton.get_state()  # the jobs' Hydra state, as the attached launcher sends it
    numbered = list(enumerate(job_overrides, initial_job_idx))
    args = [(list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", state) for idx, overrides in numbered]
    jobs = executor(launcher.params).map_array(launcher, *zip(*args, strict=True))  # one sbatch --array
    array = jobs[0].job_id.split("_")[0]
    uri, run_id = os.environ["MLFLOW_TRACKING_URI"], os.environ[SWEEP_ENV]  # set by the sweep's callback
    extra = launcher.params.get("additional_parameters") or {}
    closing = executor(launcher.params | CLOSER | {"name": f"{launcher.params['name']}_close"})
    closing.update_parameters(slurm_additional_parameters=extra | {"dependency": f"afterany:{array}"})
    report = bool(OmegaConf.select(config, "hydra.callbacks.sweep.report", default=True))
    closer = closing.submit(close, uri, tracking_key(config.tracking), config.tracking.experiment, run_id, sweep_dir.resolve(), report)
    client = mlflow_client(uri)
    client.set_tag(run_id, "slurm_array", array)
    client.set_tag(run_id, "slurm_closer", closer.job_id)
    log.info("submitted %d jobs as SLURM array %s; job %s closes the sweep after its last task", len(jobs), array, closer.job_id)
    log.info("how far it is: python -m aos_bench.status --sweep %s --tracking-uri %s", run_id, uri)
    return [JobReturn(list(filter_overrides(overrides)), status=JobStatus.COMPLETED) for _, overrides in numbered]


def close(uri: str, key: str, experiment: str, run_id: str, sweep_dir: Path, report: bool) -> str:
    """The closing job: the parent run FINISHED with its report when every job has a FINISHED run, else FAILED with an
    `error` tag naming the jobs that did not finish; a parent no longer RUNNING (closed, or resumed by a new launch that
    reset its tags) is left as it is. Returns the parent's status."""
    from aos_bench.status import sweep_status

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    client = mlflow_client(uri)
    parent = client.get_run(run_id)
    if parent.info.status != "RUNNING":
        return parent.info.status
    status = sweep_status(client, parent)
    if status.total is not None and len(status.finished) >= status.total:
        finish(uri, key, experiment, run_id, sweep_dir, report)
        return "FINISHED"
    names = [f"{run.info.run_name} ({run.info.status})" for run in status.failed[:NAMED_FAILED]]
    more = len(status.failed) - len(names)
    failed = ", ".join(names) + (f" and {more} more" if more > 0 else "")
    missing = (status.total or 0) - len(status.finished)
    without = missing - len(status.failed) - len(status.running)
    parts = [f"{missing} of {status.total} jobs did not finish"] + ([f"failed: {failed}"] if failed else [])
    if without > 0:
        parts.append(f"{without} without a run (cancelled before they started, or stopped before they logged:"
                     f" their logs are in {sweep_dir}/.submitit)")
    client.set_tag(run_id, "error", "; ".join(parts) + "; the same command resumes the sweep")
    client.set_terminated(run_id, "FAILED")
    log.info("sweep %s: FAILED: %s", run_id, "; ".join(parts))
    return "FAILED"
