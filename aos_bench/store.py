"""Where runs are kept, settled before MLflow, torch or pandas is imported (they take 3 to 6 s each): the tracking URI,
one request to an HTTP tracking server, a write probe of an SQLite store (read-only, full, locked), and the lock under
which processes that start together create one SQLite store.
"""

import base64
import configparser
import contextlib
import fcntl
import os
import shutil
import socket
import sqlite3
import ssl
import tempfile
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
MIN_FREE = 8 * 2**20  # bytes free on a store's disk before any job starts: a job adds about 0.3 MB (its rows, 3 figures)
WRITE_WAIT = 10.0  # seconds the write probe waits for another process's write lock on an SQLite store (a job holds it for ms)
# What a store's error says when it cannot be written, in lower case: a full disk, a read-only place, a lock held elsewhere
FULL = ("disk is full", "no space left on device")
READ_ONLY = ("read-only file system", "readonly database", "permission denied")
LOCKED = ("database is locked",)


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
        from_file = parser["mlflow"] if parser.has_section("mlflow") else {}
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    try:
        user, password = (os.environ.get(name) or from_file.get(name.lower()) for name in names)
    except configparser.Error as error:  # its message quotes the value: the password
        reject(f"{path}: cannot be read as MLflow reads it ({type(error).__name__}); write each % of a value as %%")
    if password and not password.isascii():  # the server decodes basic auth as ASCII on its artifact routes: every upload fails
        source = names[1] if os.environ.get(names[1]) else f"{path} (mlflow_tracking_password)"
        reject(f"{source}: the password holds characters outside ASCII, which the MLflow server refuses on its artifact "
               "routes (HTTP 401); allowed: a password of ASCII characters")
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


def store_folder(uri: str) -> Path | str:
    """The folder that holds the store at uri (an SQLite file's), for messages; else uri itself (a server, a database)."""
    path = sqlite_path(uri)
    return uri if path is None else path.absolute().parent


def unwritable_hint(error: BaseException | str, uri: str) -> str | None:
    """What to do when the store at uri cannot be written, read from its error (and the errors it wraps): free space,
    make the folder writable, or end the process that holds the lock; None for another error."""
    messages, seen = [], error
    while isinstance(seen, BaseException):
        messages.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    text = " ".join(messages if messages else [str(error)]).lower()
    folder = store_folder(uri)
    if any(words in text for words in FULL):
        return f"the disk that holds {folder} is full; free space there, then rerun the same command"
    if any(words in text for words in READ_ONLY):
        return f"{folder} cannot be written (read-only); make it writable or set tracking.uri to a place that is, then rerun the same command"
    if any(words in text for words in LOCKED):
        return (f"another process holds the write lock of {sqlite_path(uri) or uri} (`fuser` names it); let it finish or stop it,"
                " then rerun the same command")
    return None


def write_problem(uri: str) -> str | None:
    """Why jobs could not write runs to the SQLite store at uri, in the words after `key=uri:` (its folder read-only,
    its disk full or nearly, its file locked by another process); None when they can, or uri is not an SQLite file.
    Tried with a file of 64 KiB in the nearest folder that exists, and a write transaction begun and rolled back."""
    path = sqlite_path(uri)
    if path is None:
        return None
    folder = next(folder for folder in path.absolute().parents if folder.is_dir())  # where the store is, or will be created
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(bytes(64 * 1024))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        return unwritable_hint(error, uri) or f"{folder} cannot be written ({error.strerror})"
    if (free := shutil.disk_usage(folder).free) < MIN_FREE:
        return (f"the disk that holds {folder} has {free / 2**20:.1f} MB free, under the {MIN_FREE / 2**20:g} MB jobs need;"
                " free space there, then rerun the same command")
    if path.exists():
        try:
            with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=WRITE_WAIT)) as connection:
                connection.execute("BEGIN IMMEDIATE")  # the write lock, as MLflow takes it for a run's first row
                connection.rollback()
        except sqlite3.Error as error:
            return unwritable_hint(error, uri) or f"cannot be opened for writing (sqlite3: {error})"
    return None


def require_writable(uri: str, key: str) -> None:
    """Stop with one line and exit code 2 when jobs could not write runs to the store at uri (write_problem), before
    any job trains (key: where uri was set)."""
    if (problem := write_problem(uri)) is not None:
        reject(f"{key}={uri}: {problem}")
