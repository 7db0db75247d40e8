"""Credentials in URIs, the one home of their rules: a tracking URI names no user or password (params, Hydra's files and
logs would keep it); MLflow's client reads them from the environment instead. Imported before torch and MLflow.

A password may hold any character (`/ # ? @ : % =`, spaces, unicode) that a user types unescaped, so the userinfo of
`scheme://userinfo@host` runs from after `://` to the last `@` of the URI (of its word, in a line of text), not to the
first `/`, `?` or `#` as RFC 3986 would cut it. Trade-off: a URI whose path holds an `@` after a host
(`http://host/a@b`) counts as holding credentials and is refused too; a path (`sqlite:////data/a@b/mlflow.db`,
`/data/a@b`) does not, since nothing but `/` follows its `://`. A password that holds an `@` followed later by a space
is refused, but masked only up to that `@` in a line of text (the word rule cannot tell its end from the message's).
"""

import re

CREDENTIALS = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"  # where MLflow's client reads basic-auth credentials
NO_CREDENTIALS = f"a URI with no user or password in it (set {CREDENTIALS} instead)"
# `scheme://userinfo@`: userinfo up to the `@` that is the last of its word (the host follows it, then a space or the end)
USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s][^\n]*?)@(?=[^@\s]*(?:\s|$))")


def holds_credentials(uri: str) -> bool:
    """Whether a URI names a user or password (`http://alice:secret@host:5000`), which params and logs would keep."""
    return USERINFO.match(uri) is not None


def masked(text: str) -> str:
    """text with the credentials of every URI in it shown as ***: `http://alice:***@host:5000`, `http://***@host`."""

    def hide(match: re.Match) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user + ':' if colon else ''}***@"  # a userinfo without `:` is a token: hidden whole

    return USERINFO.sub(hide, text)
