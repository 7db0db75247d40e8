"""One job: data -> imbalance -> method -> training -> metrics -> MLflow."""

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from omegaconf import DictConfig
from sklearn.metrics import confusion_matrix
from torch import nn

from aos_bench.data import ImageData, load_data, normalisation
from aos_bench.errors import UsageError
from aos_bench.imbalance import Subset, make_subset
from aos_bench.methods import Method, get_method
from aos_bench.metrics import per_class, scores
from aos_bench.models import build_model
from aos_bench.plots import adversarial_figure, confusion_figure, log_figure
from aos_bench.runtime import describe, pick_device, set_up
from aos_bench.store import tracking_uri
from aos_bench.summary import data_lines, data_params, data_record
from aos_bench.tracking import SWEEP_ENV, config_hash, finished_metrics, job_run, run_name, shown_metrics, store_step, ui_address
from aos_bench.train import RunStats, fit, predict, recipe_of, resolve_precision, training_set

log = logging.getLogger(__name__)


def subset_sha256(indices: torch.Tensor) -> str:
    """SHA-256 of the chosen training indices: runs with equal hashes trained on the same images."""
    return hashlib.sha256(indices.to(torch.int64).cpu().numpy().tobytes()).hexdigest()


def prepare(cfg: DictConfig, load: Callable[..., ImageData] = load_data) -> tuple[ImageData, Subset]:
    """Load the data and draw the imbalanced subset: every bad-input error that checks.validate (the door:
    aos_bench.sweep) cannot see, a CUDA device this machine lacks first, is raised here."""
    pick_device(cfg.train.device)
    data = load(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    subset = make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed, cfg.dataset)
    if data.present is not None and not data.present[subset.indices].all():
        lacking = int((~data.present[subset.indices]).sum())
        raise UsageError(
            f"data_dir={cfg.data_dir} holds a pack of {cfg.dataset.name} without {lacking} of this job's {len(subset.indices)} "
            "training images (it was made for other imbalance settings); make one with python -m aos_bench.pack <out> <this sweep's overrides>"
        )
    return data, subset


@dataclass(frozen=True)
class Job:
    """One job, set up: its config, data, imbalanced subset, device, method, run tags, the data's normalisation, its
    freshly initialised model and its training images and labels on the device."""

    cfg: DictConfig
    data: ImageData
    subset: Subset
    device: torch.device
    method: Method
    tags: dict[str, str]
    mean: list[float]
    std: list[float]
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor


def set_up_job(cfg: DictConfig, load: Callable[..., ImageData] = load_data) -> Job:
    """Everything a job trains with, in the order its random draws need: data, subset, torch settings, then the model
    initialised from `seed`."""
    data, subset = prepare(cfg, load)
    log.info("\n".join(data_lines(data_record(cfg.dataset.name, data, subset))))  # what this job trains and tests on
    device = pick_device(cfg.train.device)
    set_up(cfg.train)
    tags = {"dataset": cfg.dataset.name, "method": cfg.method.name, "imbalance": cfg.imbalance.kind, "recipe": cfg.recipe.name}
    tags["subset_sha256"] = subset_sha256(subset.indices)
    if data.skipped:  # unreadable image files left out with dataset.skip_bad=true
        tags["skipped_images"] = str(len(data.skipped))
    mean, std = normalisation(cfg.dataset, data.train_x)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.train_x.shape[1:], len(data.classes), mean, std)
    model = model.to(device, memory_format=torch.channels_last)
    x, y = data.train_x[subset.indices].to(device), data.train_y[subset.indices].to(device)
    return Job(cfg, data, subset, device, get_method(cfg.method.name), tags, mean, std, model, x, y)


def log_environment(job: Job, extra: dict[str, str] | None = None) -> None:
    """Into the active run: the `env.*` params (with `extra` ones), the data's test source and minority rule, and the
    normalisation when measured on the data."""
    cfg = job.cfg
    mlflow.log_params(describe(job.device, resolve_precision(job.device, cfg.train.precision)) | (extra or {}))
    mlflow.log_params(data_params(data_record(cfg.dataset.name, job.data, job.subset)))
    if cfg.dataset.get("mean") is None or cfg.dataset.get("std") is None:  # measured on the training split
        mlflow.log_params({"dataset.train_mean": job.mean, "dataset.train_std": job.std})


def evaluate(job: Job, stats: RunStats) -> dict[str, float]:
    """Into the active run: the class counts, the test metrics and the per-class, confusion and adversarial artifacts
    of the trained job.model; returns the test metrics (percent)."""
    cfg, data, subset, method = job.cfg, job.data, job.subset, job.method
    mlflow.log_dict(data_record(cfg.dataset.name, data, subset) | {"resampled": stats.class_counts}, "class_counts.json")
    y_true = data.test_y.numpy()
    priors = torch.tensor(subset.sizes, device=job.device)  # the imbalanced set's class sizes, for test-time corrections
    adjust = (lambda logits: method.adjust(logits, priors, cfg.method)) if method.adjust else None
    y_pred = predict(job.model, data.test_x.to(job.device), cfg.train.eval_batch_size, cfg.train.precision, adjust).cpu().numpy()
    metrics = scores(y_true, y_pred, len(data.classes), subset.minority_classes)
    mlflow.log_metrics({**shown_metrics(metrics), **metrics, "train_steps": stats.train_steps})  # F1 before the long names on a run's page
    mlflow.log_text(per_class(y_true, y_pred, data.classes).to_csv(index=False), "per_class.csv")
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(data.classes))))
    log_figure(confusion_figure(matrix, data.classes), "confusion_matrix.png")
    if stats.examples is not None:
        log_figure(adversarial_figure(*stats.examples, data.classes), "adversarial_examples.png")
    return metrics


def report_done(run: mlflow.ActiveRun, metrics: dict[str, float], cfg: DictConfig) -> None:
    """The log line of a finished job; outside a sweep, the MLflow address too (a sweep prints it once, at its end)."""
    log.info("run %s: test_f1_macro=%.2f test_accuracy=%.2f", run.info.run_id, metrics["test_f1_macro"], metrics["test_accuracy"])
    if not os.environ.get(SWEEP_ENV):
        log.info("MLflow: %s", ui_address(tracking_uri(cfg.tracking), run.info.experiment_id))


def checkpoint_path(cfg: DictConfig) -> Path | None:
    """Where a single job saves its state after each epoch: <tracking.checkpoint_dir>/<config_hash>.pt, or None (off).
    Keyed by config_hash: a file is resumed only by a job of the same computation, whichever store it logs to."""
    folder = cfg.tracking.get("checkpoint_dir")
    return None if folder is None else Path(folder) / f"{config_hash(cfg)}.pt"


def run(cfg: DictConfig, interactive: bool = False) -> dict[str, float]:
    """Train and evaluate one configuration, logged as one MLflow run; returns the test metrics (percent). A job
    stopped after an epoch with tracking.checkpoint_dir set goes on from there in a new run, which logs the epochs it
    trains (the stopped run keeps the others) and tags resumed_epochs."""
    if (done := finished_metrics(cfg)) is not None:
        log.info("skipped: this sweep already has a FINISHED run of this config (force=true reruns every job)")
        return done
    job = set_up_job(cfg)
    progress = interactive if cfg.train.progress == "auto" else cfg.train.progress
    with job_run(cfg, job.tags) as active:
        log_environment(job)
        ts = training_set(job.x, job.y, job.method, cfg.method, job.subset.minority_classes, cfg.seed, cfg.train.epoch_size)
        stats = fit(
            job.model,
            ts,
            recipe_of(cfg),
            on_epoch=lambda epoch, values: mlflow.log_metrics(values, step=epoch),
            progress=progress,
            name=run_name(cfg),
            checkpoint=checkpoint_path(cfg),
        )
        if stats.resumed_epochs:
            mlflow.set_tag("resumed_epochs", str(stats.resumed_epochs))
        with store_step(cfg.tracking, "log this job's results", (OSError,)):  # MLflow copies local artifacts with shutil, unwrapped
            metrics = evaluate(job, stats)
    report_done(active, metrics, cfg)
    return metrics
