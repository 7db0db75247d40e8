"""One job: data -> imbalance -> method -> training -> metrics -> MLflow."""

import hashlib
import logging
import os
from collections.abc import Callable

import mlflow
import torch
from omegaconf import DictConfig
from sklearn.metrics import confusion_matrix

from aos_bench.checks import validate as check_values
from aos_bench.data import ImageData, load_data, normalisation
from aos_bench.imbalance import Subset, make_subset
from aos_bench.methods import get_method, validate_method
from aos_bench.metrics import per_class, scores
from aos_bench.models import build_model
from aos_bench.plots import adversarial_figure, confusion_figure, log_figure
from aos_bench.runtime import describe, pick_device, set_up
from aos_bench.tracking import SWEEP_ENV, finished_metrics, job_run, run_name, tracking_uri, ui_address
from aos_bench.train import fit, predict, resolve_precision

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> None:
    """Reject bad config values with one line naming the key, before any data is loaded."""
    check_values(cfg)  # every key's type and range
    validate_method(cfg.method)
    pick_device(cfg.train.device)


def subset_sha256(indices: torch.Tensor) -> str:
    """SHA-256 of the chosen training indices: runs with equal hashes trained on the same images."""
    return hashlib.sha256(indices.to(torch.int64).cpu().numpy().tobytes()).hexdigest()


def prepare(cfg: DictConfig, load: Callable[..., ImageData] = load_data) -> tuple[ImageData, Subset]:
    """Check the config, load the data and draw the imbalanced subset: every bad-input error is raised here."""
    validate(cfg)
    data = load(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    return data, make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed, cfg.dataset.get("natural_minority", False))


def run(cfg: DictConfig, interactive: bool = False) -> dict[str, float]:
    """Train and evaluate one configuration, logged as one MLflow run; returns the test metrics (percent)."""
    if (done := finished_metrics(cfg)) is not None:
        log.info("skipped: this sweep already has a FINISHED run of this config (force=true reruns every job)")
        return done
    data, subset = prepare(cfg)
    progress = interactive if cfg.train.progress == "auto" else cfg.train.progress
    device = pick_device(cfg.train.device)
    method = get_method(cfg.method.name)
    set_up(cfg.train)
    tags = {"dataset": cfg.dataset.name, "method": cfg.method.name, "imbalance": cfg.imbalance.kind, "recipe": cfg.recipe.name}
    tags["subset_sha256"] = subset_sha256(subset.indices)
    if data.skipped:  # unreadable image files left out with dataset.skip_bad=true
        tags["skipped_images"] = str(len(data.skipped))
    mean, std = normalisation(cfg.dataset, data.train_x)
    with job_run(cfg, tags) as active:
        mlflow.log_params(describe(device, resolve_precision(device, cfg.train.precision)))
        if cfg.dataset.get("mean") is None or cfg.dataset.get("std") is None:  # measured on the training split
            mlflow.log_params({"dataset.train_mean": mean, "dataset.train_std": std})
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.train_x.shape[1:], len(data.classes), mean, std)
        model = model.to(device, memory_format=torch.channels_last)
        x, y = data.train_x[subset.indices].to(device), data.train_y[subset.indices].to(device)
        stats = fit(
            model,
            x,
            y,
            method,
            cfg.train,
            cfg.method,
            cfg.dataset.augment,
            subset.minority_classes,
            cfg.seed,
            on_epoch=lambda epoch, values: mlflow.log_metrics(values, step=epoch),
            progress=progress,
            name=run_name(cfg),
        )
        mlflow.log_dict(
            {
                "classes": data.classes,
                "minority_classes": subset.minority_classes,
                "imbalanced": subset.sizes,
                "resampled": stats["class_counts"],
            },
            "class_counts.json",
        )
        y_true = data.test_y.numpy()
        priors = torch.tensor(subset.sizes, device=device)  # the imbalanced set's class sizes, for test-time corrections
        adjust = (lambda logits: method.adjust(logits, priors, cfg.method)) if method.adjust else None
        y_pred = predict(model, data.test_x.to(device), cfg.train.eval_batch_size, cfg.train.precision, adjust).cpu().numpy()
        metrics = scores(y_true, y_pred, len(data.classes), subset.minority_classes)
        mlflow.log_metrics({**metrics, "train_steps": stats["train_steps"]})
        mlflow.log_text(per_class(y_true, y_pred, data.classes).to_csv(index=False), "per_class.csv")
        matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(data.classes))))
        log_figure(confusion_figure(matrix, data.classes), "confusion_matrix.png")
        if stats["examples"] is not None:
            log_figure(adversarial_figure(*stats["examples"], data.classes), "adversarial_examples.png")
    log.info("run %s: test_f1_macro=%.2f test_accuracy=%.2f", active.info.run_id, metrics["test_f1_macro"], metrics["test_accuracy"])
    if not os.environ.get(SWEEP_ENV):  # a sweep prints it once, at its end
        log.info("MLflow: %s", ui_address(tracking_uri(cfg.tracking), active.info.experiment_id))
    return metrics
