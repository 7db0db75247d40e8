"""MLflow: the store, one run per job, its params, tags, metrics and artifacts."""

import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.environment_variables import MLFLOW_TRACKING_TOKEN
from mlflow.utils.credentials import read_mlflow_creds
from omegaconf import DictConfig, OmegaConf

from aos_bench.checks import CREDENTIALS, NO_CREDENTIALS, holds_credentials
from aos_bench.errors import reject

ERROR_TAG_LIMIT = 5000  # characters of the error message kept in the `error` tag (MLflow caps tag values)
SWEEP_ENV = "AOS_SWEEP_RUN_ID"  # the multirun's parent run id, exported by aos_bench.sweep to every job process
# Keys that say where runs go or how they print, not what they compute: left out of config_hash and of the sweep key.
NOT_HASHED = ("tracking", "data_dir", "cache_dir", "force", "train.progress")
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3: a training experiment, not GenAI
UI_RUNS = "#/experiments/{}/runs?workflowType=machine_learning"  # the page of an experiment's training runs (MLflow 3.x)
SERVER_TIMEOUT = 5.0  # seconds a tracking server gets to answer before any job starts (MLflow's client retries for minutes)
DOWN = "does not answer ({}); start the server or fix the address"  # {}: why, in a few words
REFUSED = f"refused the credentials (HTTP {{}}); set {CREDENTIALS}"  # {}: 401 or 403, from `mlflow server --app-name basic-auth`


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


def tracking_uri(cfg: Mapping) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else an SQLite file under ./mlruns (absolute, so Hydra's run dirs don't matter)."""
    if cfg.get("uri"):
        return str(cfg["uri"])
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd().resolve() / 'mlruns' / 'mlflow.db'}"


def tracking_key(cfg: Mapping) -> str:
    """Where tracking_uri(cfg) comes from, for error messages: `tracking.uri` or the environment variable."""
    return "tracking.uri" if cfg.get("uri") else "MLFLOW_TRACKING_URI"


def failure_reason(error: BaseException, timeout: float) -> str:
    """A few words on why a connection failed: connection refused, unknown host, no answer within 5 s, ..."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s"
    return str(getattr(error, "strerror", None) or error)


def http_failure(error: urllib.error.HTTPError) -> str | None:
    """What an HTTP error says is wrong with the tracking server (5xx: MLflow's client would retry it for minutes), else None."""
    if error.code == 403 and error.read(100).startswith(b"Invalid Host header"):  # MLflow 3's DNS-rebinding guard
        return DOWN.format("HTTP 403: the server's --allowed-hosts does not list this host name")
    if error.code in (401, 403):  # no credentials, wrong ones, or a user the server does not let in
        return REFUSED.format(error.code)
    if error.code == 404:
        return DOWN.format("HTTP 404: no MLflow API at this address")
    return DOWN.format(f"HTTP {error.code} {error.reason}") if error.code >= 500 else None


def auth_header() -> dict[str, str]:
    """The Authorization header MLflow's client sends: basic auth from $MLFLOW_TRACKING_USERNAME and
    $MLFLOW_TRACKING_PASSWORD (else ~/.mlflow/credentials), else $MLFLOW_TRACKING_TOKEN as a bearer token; or none."""
    user, password = read_mlflow_creds()
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {"Authorization": f"Bearer {MLFLOW_TRACKING_TOKEN.get()}"} if MLFLOW_TRACKING_TOKEN.get() else {}


def server_problem(uri: str, timeout: float = SERVER_TIMEOUT) -> str | None:
    """What stops jobs at the HTTP tracking server at uri, in the words after `key=uri`: it does not answer one API
    request, or it refuses the credentials MLflow's client sends; None when it serves it (or uri is a file store)."""
    if not uri.startswith(("http://", "https://")):
        return None
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        urllib.request.urlopen(urllib.request.Request(url, headers=auth_header()), timeout=timeout).close()
    except urllib.error.HTTPError as error:
        return http_failure(error)
    except OSError as error:  # URLError wraps connect failures in .reason; a read timeout comes bare
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLError):  # it answers; certificates are MLflow's business (MLFLOW_TRACKING_INSECURE_TLS)
            return None
        return DOWN.format(failure_reason(reason, timeout) if isinstance(reason, BaseException) else str(reason))
    return None


def store_problem(uri: str) -> str | None:
    """Why MLflow cannot keep runs at uri, in the words after `key=uri`: a scheme it has no tracking store for; else None."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry as stores  # the registry MLflow itself consults

    try:
        stores.get_store_builder(uri)  # finds the builder for uri's scheme; builds nothing
    except mlflow.exceptions.MlflowException:
        schemes = ", ".join(f"{scheme}://" for scheme in sorted(stores._registry) if scheme)
        return f"names a scheme ({urllib.parse.urlparse(uri).scheme}) MLflow has no tracking store for; allowed: a path, or one of {schemes}"
    return None


def require_server(uri: str, key: str) -> None:
    """Stop with one line and exit code 2 when uri names a user or password or a scheme MLflow has no store for, or
    the tracking server there does not answer or refuses the credentials (key: where uri was set)."""
    if holds_credentials(uri):
        reject(f"{key}={uri}: {NO_CREDENTIALS}")  # reject shows the password as ***
    if (problem := store_problem(uri)) is not None:
        reject(f"{key}={uri} {problem}")
    if (problem := server_problem(uri)) is not None:
        reject(f"{key}={uri} {problem}")


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
        return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
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
    experiment_id = ensure_experiment(tracking_uri(cfg.tracking), cfg.tracking.experiment)
    sweep, config = os.environ[SWEEP_ENV], config_hash(cfg)
    done = mlflow.search_runs(
        [experiment_id],
        f"tags.sweep = '{sweep}' and tags.config_hash = '{config}' and attributes.status = 'FINISHED'",
        max_results=1,
        output_format="list",
    )
    return dict(done[0].data.metrics) if done else None


@contextlib.contextmanager
def job_run(cfg: DictConfig, tags: Mapping[str, str]) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one job, in a multirun nested under its sweep's; ends FINISHED, or FAILED (KILLED when
    interrupted or sent SIGTERM) with the `error` tag."""
    experiment_id = ensure_experiment(tracking_uri(cfg.tracking), cfg.tracking.experiment)
    described = {"mlflow.note.content": command_line()}  # the run's description in the UI
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name(cfg), tags=run_tags(cfg, tags) | described) as run,
        sigterm_raises() as received,
    ):
        try:
            mlflow.log_params(flat_params(cfg))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            yield run
        except BaseException as error:
            mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:ERROR_TAG_LIMIT])
            mlflow.end_run("KILLED" if isinstance(error, KeyboardInterrupt) or received else "FAILED")
            if isinstance(error, SigTerm):
                raise Terminated(str(error)) from None
            raise
