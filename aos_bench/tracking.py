"""MLflow: the store, one run per job, its params, tags, metrics and artifacts."""

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import urllib.parse
from collections.abc import Iterator, Mapping

import mlflow
import pandas as pd
import requests
import sqlalchemy
from omegaconf import DictConfig, OmegaConf

from aos_bench.errors import StoreFailed, reject
from aos_bench.store import creation_lock, require_reachable, sqlite_path, tracking_key, tracking_uri, unwritable_hint

ERROR_TAG_LIMIT = 5000  # characters of the error message kept in the `error` tag (MLflow caps tag values)
SWEEP_ENV = "AOS_SWEEP_RUN_ID"  # the multirun's parent run id, exported by aos_bench.sweep to every job process
# Keys that say where runs go or how they print, not what they compute: left out of config_hash and of the sweep key.
NOT_HASHED = ("tracking", "data_dir", "cache_dir", "force", "train.progress")
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3: a training experiment, not GenAI
# The headline metrics again, rounded, under short names for the UI, which prints every digit (92.4155210...) and cuts
# long names; the report reads the full ones
SHOWN = {"test_f1_macro": "F1", "test_f1_minority": "F1 minority"}
# The UI's landing view: an experiment tag `mlflow.sharedViewState.<key>` that MLflow 3's runs page applies when the
# address names its key. The SHOWN columns, best F1 first; sorted by a metric, the page lists job runs flat (sweep
# parent runs, which have no F1, last) where it would list one collapsed row per sweep.
RESULTS_VIEW = "results"
RUN_NAME_PX = 340  # the name column's width, pixels: whole names (`balanced_softmax cifar10 step mu=0.3 rho=500 seed=0`), not 170 px cut
UI_RUNS = "#/experiments/{}/runs?workflowType=machine_learning&viewStateShareKey=" + RESULTS_VIEW  # training runs (MLflow 3.x)


# MLflow logs the traceback of every SQLAlchemy error it raises (80 lines for a full disk); store_failure says it in one
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

# What a failing store raises: MLflow's own errors, an SQLite store's bare SQLAlchemy ones, a server's connection errors
STORE_ERRORS = (mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError, requests.exceptions.RequestException)


class Terminated(Exception):
    """SIGTERM during a run: scancel, a preemption or a time limit. An Exception, so that the launcher gets the job back."""


class SigTerm(BaseException):
    """What the SIGTERM handler raises: not an Exception, so that no `except Exception` on its way swallows it (logging's
    handlers do, when the signal lands while a line is written, and the job would train on until SIGKILL); job_run
    turns it into Terminated once the run is marked KILLED."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[list[int]]:
    """Within the block, SIGTERM raises SigTerm (SLURM's and submitit's default would leave the run RUNNING);
    yields the signals received, since code the exception passes through (MLflow's) may wrap it in another."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        """Remember the signal and raise where the job is."""
        received.append(signum)
        raise SigTerm(f"stopped by {signal.Signals(signum).name} (scancel, a preemption or a time limit)")

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield received
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def store_problem(uri: str) -> str | None:
    """Why MLflow cannot keep runs at uri, in the words after `key=uri`: a scheme it has no tracking store for; else None."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry as stores  # the registry MLflow itself consults

    try:
        stores.get_store_builder(uri)  # finds the builder for uri's scheme; builds nothing
    except mlflow.exceptions.MlflowException:
        schemes = ", ".join(f"{scheme}://" for scheme in sorted(stores._registry) if scheme)
        return f"names a scheme ({urllib.parse.urlparse(uri).scheme}) MLflow has no tracking store for; allowed: a path, or one of {schemes}"
    return None


def require_scheme(uri: str, key: str) -> None:
    """Stop with one line and exit code 2 when uri names a scheme MLflow has no tracking store for (key: where uri was set)."""
    if (problem := store_problem(uri)) is not None:
        reject(f"{key}={uri} {problem}")


def require_server(uri: str, key: str) -> None:
    """Stop with one line and exit code 2 when uri names a user or password, the tracking server there does not answer
    or refuses the credentials, or uri names a scheme MLflow has no store for (key: where uri was set)."""
    require_reachable(uri, key)
    require_scheme(uri, key)


def store_failure(uri: str, key: str, what: str, error: BaseException) -> str:
    """The one line that says what failed on the store at uri: `tracking.uri=<uri>: could not <what> (<error>)`, or,
    when it could not be written, `...: could not <what>: <what to free or fix>`."""
    if (hint := unwritable_hint(error, uri)) is not None:
        return f"{key}={uri}: could not {what}: {hint}"
    first = (str(error).strip().splitlines() or [""])[0][:300]  # SQLAlchemy appends its SQL and a help link below
    return f"{key}={uri}: could not {what} ({type(error).__name__}: {first})"


@contextlib.contextmanager
def store_step(tracking: Mapping, what: str, errors: tuple[type[Exception], ...] = (Exception,)) -> Iterator[None]:
    """Within the block every error of `errors` is the store's (by default any: the block only opens the store or
    logs): raised as StoreFailed."""
    try:
        yield
    except errors as error:  # a migration half done by another process raises anything: alembic's, ValueError, ...
        raise StoreFailed(store_failure(tracking_uri(tracking), tracking_key(tracking), what, error)) from error


def shown_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The SHOWN copies of the headline metrics, rounded to 2 decimals, for the UI's columns."""
    return {name: round(metrics[key], 2) for key, name in SHOWN.items() if key in metrics}


def results_view() -> dict[str, str]:
    """The experiment tag of the UI's landing view (RESULTS_VIEW): its columns, their order and widths, the runs' order."""
    columns = [f"metrics.`{name}`" for name in SHOWN.values()]
    name = "attributes.`Run Name`"
    state = {
        "selectedColumns": columns,
        "columnOrder": [name, *columns],  # the F1 columns beside the names
        "columnWidths": {name: RUN_NAME_PX},  # the UI applies a width only to a column of columnOrder
        "orderByKey": columns[0],
        "orderByAsc": False,
    }
    return {f"mlflow.sharedViewState.{RESULTS_VIEW}": json.dumps(state)}


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, creating the store and the experiment when missing (artifacts beside an SQLite file); an
    experiment made before the UI's landing view gets it where the store lets this user set it."""
    mlflow.set_tracking_uri(uri)
    with creation_lock(uri):  # the store's first open in this process creates its schema when the file is new
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            for key, value in results_view().items():
                if experiment.tags.get(key) != value:
                    with contextlib.suppress(mlflow.exceptions.MlflowException):  # a user who may only log runs
                        mlflow.MlflowClient(uri).set_experiment_tag(experiment.experiment_id, key, value)
            return experiment.experiment_id
        location = (path.parent.absolute() / "artifacts").as_uri() if (path := sqlite_path(uri)) else None
        try:
            return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS | results_view())
        except mlflow.exceptions.MlflowException:  # created meanwhile by a job on a server store, which takes no lock
            return mlflow.get_experiment_by_name(name).experiment_id


def ui_address(uri: str, experiment_id: str) -> str:
    """Where a person sees the experiment's runs: the server's page, or the command that serves a file store and its page."""
    page = UI_RUNS.format(experiment_id)
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"`mlflow ui --backend-store-uri {uri}`, then http://127.0.0.1:5000/{page}"


def run_name(cfg: DictConfig) -> str:
    """A job run's name in the paper's words: `aos mnist step mu=0.3 rho=500 seed=0`."""
    shape = {"step": ("mu", "rho"), "linear": ("rho",)}.get(cfg.imbalance.kind, ())
    return " ".join([cfg.method.name, cfg.dataset.name, cfg.imbalance.kind, *(f"{k}={cfg.imbalance[k]}" for k in shape), f"seed={cfg.seed}"])


def command_line() -> str:
    """The command that made this job: `python -m aos_bench` and the job's own overrides."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "aos_bench.job.run() called from Python"
    return " ".join(["python -m aos_bench", *HydraConfig.get().overrides.task])


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys: imbalance.mu, method.eps, ..."""
    flat = pd.json_normalize(OmegaConf.to_container(cfg, resolve=True), sep=".").iloc[0].to_dict()
    return {key: str(value) for key, value in flat.items()}


def hashed(key: str) -> bool:
    """Whether a dotted config key counts in config_hash (it is not one of NOT_HASHED or below one)."""
    return not any(key == name or key.startswith(f"{name}.") for name in NOT_HASHED)


def config_hash(cfg: DictConfig) -> str:
    """16 hex digits naming the resolved config without NOT_HASHED keys: equal hashes = the same computation."""
    params = {key: value for key, value in flat_params(cfg).items() if hashed(key)}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def run_tags(cfg: DictConfig, tags: Mapping[str, str]) -> dict[str, str]:
    """`tags` plus config_hash, the preset, and in a multirun the parent run (MLflow nests the run under it)."""
    extra = {"config_hash": config_hash(cfg)}
    if cfg.get("preset"):
        extra["preset"] = str(cfg.preset)
    if os.environ.get(SWEEP_ENV):
        extra |= {"mlflow.parentRunId": os.environ[SWEEP_ENV], "sweep": os.environ[SWEEP_ENV]}
    return {**tags, **extra}


def finished_metrics(cfg: DictConfig) -> dict[str, float] | None:
    """In a multirun, the metrics of a FINISHED run of this sweep with this config_hash (the job is done), else None."""
    if not os.environ.get(SWEEP_ENV):
        return None
    sweep, config = os.environ[SWEEP_ENV], config_hash(cfg)
    with store_step(cfg.tracking, "look up this sweep's finished runs"):
        experiment_id = ensure_experiment(tracking_uri(cfg.tracking), cfg.tracking.experiment)
        done = mlflow.search_runs(
            [experiment_id],
            f"tags.sweep = '{sweep}' and tags.config_hash = '{config}' and attributes.status = 'FINISHED'",
            max_results=1,
            output_format="list",
        )
    return dict(done[0].data.metrics) if done else None


def error_tag(error: BaseException) -> str:
    """The `error` tag of a run that `error` ended: `stopped by SIGINT` or `stopped by SIGTERM (...)`, else `Type: message`."""
    if isinstance(error, KeyboardInterrupt):  # Ctrl-C raises it bare; a sweep's handler (sweep.stop_on_signals) with these words
        return str(error) or "stopped by SIGINT"
    if isinstance(error, SigTerm):
        return str(error)
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def job_run(cfg: DictConfig, tags: Mapping[str, str]) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one job, in a multirun nested under its sweep's; ends FINISHED, or FAILED (KILLED when
    interrupted or sent SIGTERM) with the `error` tag."""
    described = {"mlflow.note.content": command_line()}  # the run's description in the UI
    with store_step(cfg.tracking, "open the store and start this job's run"):
        experiment_id = ensure_experiment(tracking_uri(cfg.tracking), cfg.tracking.experiment)
        started = mlflow.start_run(experiment_id=experiment_id, run_name=run_name(cfg), tags=run_tags(cfg, tags) | described)
    with started as run, sigterm_raises() as received:
        try:
            with store_step(cfg.tracking, "log this job's config"):
                mlflow.log_params(flat_params(cfg))
                mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            yield run
        except BaseException as error:
            with contextlib.suppress(*STORE_ERRORS):  # the store failing: the run stays RUNNING, a resume marks it KILLED
                mlflow.set_tag("error", error_tag(error)[:ERROR_TAG_LIMIT])
                mlflow.end_run("KILLED" if isinstance(error, KeyboardInterrupt) or received else "FAILED")
            if isinstance(error, SigTerm):
                raise Terminated(str(error)) from None
            raise
