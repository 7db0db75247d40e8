"""Where runs are kept, settled before MLflow, torch or pandas is imported (they take 3 to 6 s each): the tracking URI,
one request to an HTTP tracking server, and the lock under which processes that start together create one SQLite store.
"""

import base64
import configparser
import contextlib
import fcntl
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from aos_bench.credentials import CREDENTIALS, NO_CREDENTIALS, holds_credentials
from aos_bench.errors import reject

SERVER_TIMEOUT = 5.0  # seconds a tracking server gets to answer before any job starts (MLflow's client retries for minutes)
DOWN = "does not answer ({}); start the server or fix the address"  # {}: why, in a few words
REFUSED = f"refused the credentials (HTTP {{}}); set {CREDENTIALS}"  # {}: 401 or 403, from `mlflow server --app-name basic-auth`
LOCK_WAIT = 300.0  # seconds a process waits for another to finish creating the store (a fresh one takes 2-10 s)
LOCK_POLL = 0.05  # seconds between two tries of the creation lock


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


def credentials() -> tuple[str | None, str | None]:
    """The user and password MLflow's client sends (mlflow.utils.credentials.read_mlflow_creds): each from
    $MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD, else from ~/.mlflow/credentials' [mlflow] section."""
    from_file: Mapping[str, str] = {}
    path = Path(os.path.expanduser("~/.mlflow/credentials"))
    if path.exists():
        parser = configparser.ConfigParser()
        parser.read(path)
        from_file = parser["mlflow"] if "mlflow" in parser else {}
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    try:
        user, password = (os.environ.get(name) or from_file.get(name.lower()) for name in names)
    except configparser.Error as error:  # its message quotes the value: the password
        reject(f"{path}: cannot be read as MLflow reads it ({type(error).__name__}); write each % of a value as %%")
    if password and not password.isascii():  # the server decodes basic auth as ASCII on its artifact routes: every upload fails
        source = names[1] if os.environ.get(names[1]) else f"{path} (mlflow_tracking_password)"
        reject(f"{source}: the password holds characters outside ASCII, which the MLflow server refuses on its artifact "
               "routes (HTTP 401); allowed: a password of ASCII characters")  # fmt: skip
    return user, password


def auth_header() -> dict[str, str]:
    """The Authorization header MLflow's client sends: basic auth from credentials(), else $MLFLOW_TRACKING_TOKEN as a
    bearer token; or none."""
    user, password = credentials()
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def server_problem(uri: str, timeout: float = SERVER_TIMEOUT) -> str | None:
    """What stops jobs at the HTTP tracking server at uri, in the words after `key=uri`: it does not answer one API
    request, or it refuses the credentials MLflow's client sends; None when it serves it (or uri is not a server)."""
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


def require_reachable(uri: str, key: str) -> None:
    """Stop with one line and exit code 2 when uri names a user or password, or the HTTP tracking server there does not
    answer or refuses the credentials (key: where uri was set). Called first, before MLflow and torch are imported."""
    if holds_credentials(uri):
        reject(f"{key}={uri}: {NO_CREDENTIALS}")  # reject shows the password as ***
    if (problem := server_problem(uri)) is not None:
        reject(f"{key}={uri} {problem}")


def sqlite_path(uri: str) -> Path | None:
    """The file of an SQLite tracking URI (`sqlite:///mlruns/mlflow.db` relative, `sqlite:////abs/mlflow.db`), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = urllib.parse.urlsplit(uri).path.removeprefix("/")  # without a `?timeout=...` query
    return None if path in ("", ":memory:") else Path(path)


@contextlib.contextmanager
def creation_lock(uri: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Within the block, this process alone of all that use the SQLite store at uri may open it: a file lock beside it
    (`mlflow.db.lock`). MLflow creates and migrates an SQLite file's schema when a process first opens it
    (SqlAlchemyStore.__init__: _all_tables_exist, then _initialize_tables, which runs every alembic migration, then the
    default experiment), without a lock across processes; sweeps and jobs that start together on a fresh file break each
    other's migrations (`duplicate column name`, `table _alembic_tmp_... already exists`). Other URIs need none: a
    tracking server creates its schema once, as it starts.

    Trade-off: every process takes the lock once per store it opens, also on a store that exists (a few milliseconds
    when no one holds it), and waits while another creates one (seconds); in return a first open is the same whether one
    process or a hundred start at once. fcntl locks are advisory and local to one machine, as SQLite itself is safe only
    there (docs/sweeps.md). A process that holds the lock past `wait` seconds stops the others with one line."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a") as lock:  # the lock goes when the file closes, even at a crash
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    reject(f"tracking store {uri}: another process has been creating it for over {wait:g} s ({lock.name}); is one stuck?")
                time.sleep(LOCK_POLL)
        yield
