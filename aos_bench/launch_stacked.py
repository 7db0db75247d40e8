"""`hydra/launcher=stacked`: a sweep's compatible jobs trained together, one stacked network per group (aos_bench.train_stacked).
The Hydra launcher itself is hydra_plugins/aos_bench_stacked (Hydra takes launchers from that namespace only).

Jobs are grouped by what one network step must share: dataset, model, train settings (batch size, epochs, lr, clip,
precision, device) and the method's lr_scale; then by step count (an epoch's size can follow the method's set). They
may differ in method, seed, data_seed, imbalance, eps and p. A group holds at most `max_models` models.

Jobs stay jobs: each gets its own MLflow run under the sweep's parent, with the params, config hash, tags, metrics and
artifacts of a separate job, plus `env.stacked_models` (how many models it trained beside). A job whose run is
FINISHED in the sweep is skipped, as job.run skips it. Trade-off: a group's runs are written when the group has
trained (a run's duration in the UI is its logging time, not its training time), so a group stopped mid-way leaves
no runs, and the resume trains the whole group again.
"""

import copy
import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

if TYPE_CHECKING:  # the launcher imports this module before torch: the training core only where it trains
    from aos_bench.train import RunStats

log = logging.getLogger(__name__)


def group_key(cfg: DictConfig) -> str:
    """What the jobs of one stack must share, as one string."""
    shared = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("dataset", "model", "train")}
    return json.dumps(shared | {"data_dir": str(cfg.data_dir), "lr_scale": cfg.method.get("lr_scale", 1.0)}, sort_keys=True)


def groups(keys: Sequence[object]) -> list[list[int]]:
    """Positions of equal `keys`, one list per key, in the order each key first appears."""
    found: dict[object, list[int]] = {}
    for i, key in enumerate(keys):
        found.setdefault(key, []).append(i)
    return list(found.values())


def stacks(keys: Sequence[object], max_models: int) -> list[list[int]]:
    """groups(keys), each cut into stacks of at most max_models."""
    return [group[i : i + max_models] for group in groups(keys) for i in range(0, len(group), max_models)]


def task_config(config: DictConfig) -> DictConfig:
    """A job's config as its task function sees it: without the `hydra` node (as Hydra's run_job hands it over)."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def run_stacked(configs: Sequence[DictConfig], max_models: int) -> list[float | BaseException]:
    """Each job's test macro-F1, or the error that ended it: the jobs with a FINISHED run in the sweep skipped, the
    others trained in stacks and logged, one run each. `configs` are the jobs' full configs (with `hydra`)."""
    from aos_bench.data import cached_loader
    from aos_bench.tracking import finished_metrics

    tasks = [task_config(config) for config in configs]
    results: list = [None] * len(configs)
    pending = []
    for i, task in enumerate(tasks):
        if (done := finished_metrics(task)) is not None:
            log.info("skipped: this sweep already has a FINISHED run of this config (force=true reruns every job)")
            results[i] = done["test_f1_macro"]
        else:
            pending.append(i)
    load = cached_loader()  # one decoding of each dataset for all groups
    for group in groups([group_key(tasks[i]) for i in pending]):
        where = [pending[i] for i in group]
        for i, value in zip(where, train_group([configs[i] for i in where], [tasks[i] for i in where], max_models, load), strict=True):
            results[i] = value
    return results


def train_group(configs: list[DictConfig], tasks: list[DictConfig], max_models: int, load: Callable) -> list[float | BaseException]:
    """Set up the jobs of one group key (full configs and their task configs; datasets from `load`), split them by
    step count into stacks of at most max_models, train each stack and log its jobs' runs; each job's F1 or error."""
    from aos_bench.job import set_up_job
    from aos_bench.tracking import run_name
    from aos_bench.train import planned_steps, recipe_of, training_set
    from aos_bench.train_stacked import fit_stack

    jobs = [set_up_job(task, load=load) for task in tasks]
    sets = [training_set(j.x, j.y, j.method, j.cfg.method, j.subset.minority_classes, j.cfg.seed, j.cfg.train.epoch_size) for j in jobs]
    recipe = recipe_of(jobs[0].cfg)  # one for the group: group_key holds what it reads
    results: list = [None] * len(jobs)
    for stack in stacks([planned_steps(s.n_images, recipe) for s in sets], max_models):
        members = [jobs[i] for i in stack]
        log.info("training a stack of %d: %s", len(stack), ", ".join(run_name(j.cfg) for j in members))
        stats = fit_stack([j.model for j in members], [sets[i] for i in stack], recipe, name=f"stack of {len(stack)}")
        for i, job_stats in zip(stack, stats, strict=True):
            results[i] = log_job(jobs[i], configs[i], job_stats, len(stack))
    return results


def log_job(job, config: DictConfig, stats: "RunStats", stacked: int) -> float | BaseException:
    """One trained job of a stack logged as its own run, FAILED with the error if its model diverged; its F1 or error."""
    import mlflow

    from aos_bench.errors import Diverged
    from aos_bench.job import evaluate, log_environment, report_done
    from aos_bench.tracking import job_run, run_name

    HydraConfig.instance().set_config(config)  # the run's description names this job's overrides, as in run_job
    try:
        with job_run(job.cfg, job.tags) as active:
            log_environment(job, {"env.stacked_models": str(stacked)})
            for epoch, values in enumerate(stats.epochs):
                mlflow.log_metrics(values, step=epoch)
            if stats.error is not None:
                raise Diverged(stats.error)
            metrics = evaluate(job, stats)
    except Diverged as error:
        log.error("%s: %s", run_name(job.cfg), error)
        return error
    report_done(active, metrics, job.cfg)
    return metrics["test_f1_macro"]
