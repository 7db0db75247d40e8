"""MLflow: the store, one run per job, its params, tags, metrics and artifacts."""

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf

ERROR_TAG_LIMIT = 5000  # characters of the error message kept in the `error` tag (MLflow caps tag values)


def tracking_uri(cfg: Mapping) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else an SQLite file under ./mlruns (absolute, so Hydra's run dirs don't matter)."""
    if cfg.get("uri"):
        return str(cfg["uri"])
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd().resolve() / 'mlruns' / 'mlflow.db'}"


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, creating the store and the experiment when missing (artifacts beside an SQLite file)."""
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
        return mlflow.get_experiment_by_name(name).experiment_id


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys: imbalance.mu, method.eps, ..."""
    flat = pd.json_normalize(OmegaConf.to_container(cfg, resolve=True), sep=".").iloc[0].to_dict()
    return {key: str(value) for key, value in flat.items()}


@contextlib.contextmanager
def job_run(cfg: DictConfig, tags: Mapping[str, str]) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one job; ends FINISHED, or FAILED with the error message as the `error` tag."""
    experiment_id = ensure_experiment(tracking_uri(cfg.tracking), cfg.tracking.experiment)
    with mlflow.start_run(experiment_id=experiment_id, tags=dict(tags)) as run:
        try:
            mlflow.log_params(flat_params(cfg))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            yield run
        except BaseException as error:
            mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:ERROR_TAG_LIMIT])
            mlflow.end_run("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            raise
