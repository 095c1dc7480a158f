"""Secrets stay out of what is printed, what ``ps`` shows and what other users can read.

A store URI such as ``postgresql://mlflow:PASSWORD@db/mlflow`` is shown as
``postgresql://mlflow:***@db/mlflow`` (:func:`redact_uri`); the clear URI only travels in a child
process's environment, which other users cannot read (``/proc/PID/environ`` is owner-only), unlike its
command line. Ray writes its token file ``~/.ray/auth_token`` world-readable (0644);
:func:`protect_ray_auth_token` makes it 0600.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

REDACTED = "***"

# scheme://user:password@...  The password is read as SQLAlchemy reads it: everything up to the first
# '@', '/', '?' and '#' included; redacting too much is safe, too little is not.
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^:/?#@]*:)(?P<password>[^@]*)(?=@)")
# Query parameters whose value is a credential: ?password=, ?sslpassword=, ?token=, ?sig= (SAS), ?api_key=...
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|sig|credential|auth", re.IGNORECASE)


def _split_query(uri: str) -> tuple[str, str, str]:
    """(before '?', the query, from '#' on); the query is '' when there is none."""
    fragment_at = uri.find("#")
    body, fragment = (uri, "") if fragment_at < 0 else (uri[:fragment_at], uri[fragment_at:])
    query_at = body.find("?")
    if query_at < 0:
        return body, "", fragment
    return body[:query_at], body[query_at + 1 :], fragment


def _secret_value(parameter: str) -> str:
    """The value of one ``key=value`` query parameter if the key names a credential, else ''."""
    key, _, value = parameter.partition("=")
    return value if _SECRET_KEY.search(key) else ""


def secret_values(uri: str) -> list[str]:
    """The credentials written into ``uri`` (its password, the values of secret-looking query keys),
    each as written and percent-decoded: the strings to :func:`scrub` from text that may quote them."""
    values = []
    if match := _USERINFO.match(uri):
        values.append(match["password"])
    query = _split_query(_USERINFO.sub(REDACTED, uri, count=1))[1]
    values += [_secret_value(parameter) for parameter in query.split("&")]
    return list(dict.fromkeys(form for v in values if v for form in (v, unquote(v))))


def redact_uri(uri: str) -> str:
    """``uri`` with its password and secret query values shown as ``***``; the rest is kept as written.

    ``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``;
    ``https://host/x?sig=abc&v=1`` -> ``https://host/x?sig=***&v=1``.
    """
    redacted = _USERINFO.sub(rf"\g<head>{REDACTED}", uri, count=1)
    head, query, fragment = _split_query(redacted)
    if not query:
        return redacted
    parameters = [f"{p.partition('=')[0]}={REDACTED}" if _secret_value(p) else p for p in query.split("&")]
    return f"{head}?{'&'.join(parameters)}{fragment}"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***`` (for logs shown to the user)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def protect_file(path: str | Path) -> bool:
    """Make ``path`` readable and writable by its owner only (0600); False when it does not exist."""
    try:
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    except FileNotFoundError:
        return False
    return True


def ray_auth_token_paths() -> list[Path]:
    """Where Ray keeps its token: ``$RAY_AUTH_TOKEN_PATH`` if set, and ``~/.ray/auth_token``, where
    ``ray.init()`` writes a new one."""
    paths = [Path.home() / ".ray" / "auth_token"]
    if custom := os.environ.get("RAY_AUTH_TOKEN_PATH"):
        paths.insert(0, Path(custom).expanduser())
    return paths


def protect_ray_auth_token() -> list[Path]:
    """chmod 0600 the Ray token files this user owns that others can read; the files changed.

    Call it right after ``ray.init``. Files owned by someone else or on a read-only mount (a Kubernetes
    Secret) are left alone: a search must not fail over a file it cannot change.
    """
    changed = []
    for path in ray_auth_token_paths():
        try:
            info = path.stat()
            if info.st_uid != os.getuid() or not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                continue
            if protect_file(path):
                changed.append(path)
        except OSError:
            continue
    return changed
