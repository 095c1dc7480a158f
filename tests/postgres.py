"""A throwaway PostgreSQL cluster for the tests: MLflow's backend store as the compose stack runs it.

``postgres_cluster`` (session scope) runs ``initdb`` into a fresh folder and starts the server on
127.0.0.1 on a free port, with its unix socket inside that folder and scram-sha-256 password auth for
one user with a generated password. It is stopped (``pg_ctl stop -m fast``) and its folder removed when
the session ends, also after a failure. ``postgres_db`` gives each test a new database and yields its
``postgresql://user:password@127.0.0.1:PORT/db`` URI; :meth:`PostgresCluster.create_database` makes more.

Tests run as root here and in CI, and initdb/postgres refuse to run as root: the cluster then runs as
the ``postgres`` system user that Debian's package creates (``scripts/ensure-postgresql.sh`` installs
it). Without the server programs the fixtures skip, naming that script.

Use from a test module (there is no conftest at ``tests/``)::

    from postgres import postgres_cluster, postgres_db  # noqa: F401  (pytest fixtures)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import free_port

__all__ = [
    "PostgresCluster",
    "postgres_bindir",
    "postgres_cluster",
    "postgres_db",
    "postgres_uri",
    "start_postgres",
]

ENSURE_SCRIPT = "scripts/ensure-postgresql.sh"
SERVER_USER = "postgres"  # who runs the server when the tests run as root
USER = "edgeseg"
# A throwaway cluster: durability settings off (a crash loses nothing the test still needs).
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
    "shared_buffers": "32MB",
}


def postgres_bindir() -> Path | None:
    """The newest Debian ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, else PATH's."""
    found = [
        d
        for d in Path("/usr/lib/postgresql").glob("*/bin")
        if (d / "initdb").exists() and (d / "pg_ctl").exists()
    ]
    if found:
        return max(found, key=lambda d: [int(x) for x in re.findall(r"\d+", d.parent.name)] or [0])
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return Path(initdb).parent if initdb and pg_ctl else None


def postgres_uri(port: int, database: str, user: str = USER, password: str | None = None) -> str:
    """``postgresql://user[:password]@127.0.0.1:port/database`` (the form the docs and the compose stack use)."""
    auth = f"{user}:{password}" if password is not None else user
    return f"postgresql://{auth}@127.0.0.1:{port}/{database}"


@dataclass
class PostgresCluster:
    """A running throwaway cluster; ``password`` is the generated password of ``user``."""

    root: Path
    bindir: Path
    port: int
    password: str = field(repr=False)
    run_as: tuple[str, ...]
    started_in_s: float = 0.0  # initdb + start
    user: str = USER

    @property
    def data(self) -> Path:
        return self.root / "data"

    def uri(self, database: str, *, with_password: bool = True) -> str:
        return postgres_uri(self.port, database, self.user, self.password if with_password else None)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URI (with the password)."""
        import psycopg

        name = name or f"edgeseg_{secrets.token_hex(4)}"
        with psycopg.connect(self.uri("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A server program (``pg_ctl``, ``initdb``) run as the cluster's owner, in the cluster folder."""
        argv = [*self.run_as, str(self.bindir / command[0]), *command[1:]]
        result = subprocess.run(
            argv, cwd=self.root, env=_server_env(), capture_output=True, text=True, timeout=120
        )  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}{self.log()}"
            )
        return result

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "postgres.log").read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        """Stop the server (fast: open connections are cut) and remove the cluster folder."""
        if (self.data / "postmaster.pid").exists():
            stopped = self.run(
                "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False
            )
            if stopped.returncode != 0:
                self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGDATA/PGPORT
    return {**env, "LC_ALL": "C", "LANG": "C"}


def _owner(root: Path) -> tuple[str, ...]:
    """The command prefix that runs as the cluster's owner (chowning ``root`` to it when we are root)."""
    if os.geteuid() != 0:
        return ()
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise RuntimeError(
            f"the tests run as root and PostgreSQL refuses root, but there is no {SERVER_USER!r} user to run "
            f"it as: run {ENSURE_SCRIPT} (Debian's package creates the user)"
        ) from None
    os.chown(root, user.pw_uid, user.pw_gid)
    return ("runuser", "-u", SERVER_USER, "--")


def _initdb(cluster: PostgresCluster) -> None:
    password_file = cluster.root / "password"
    password_file.write_text(cluster.password + "\n")
    password_file.chmod(0o600)
    if cluster.run_as:
        owner = pwd.getpwnam(SERVER_USER)
        os.chown(password_file, owner.pw_uid, owner.pw_gid)
    try:
        cluster.run(
            "initdb", "-D", str(cluster.data), "-U", cluster.user, f"--pwfile={password_file}",
            "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
    finally:
        password_file.unlink()


def _start(cluster: PostgresCluster, attempts: int = 3) -> None:
    """Start on a free port; another process may take the port between the pick and the bind: retry."""
    conf = cluster.data / "postgresql.conf"
    base = conf.read_text()
    for attempt in range(attempts):
        cluster.port = free_port()
        settings = {**SETTINGS, "port": str(cluster.port), "unix_socket_directories": f"'{cluster.root}'"}
        conf.write_text(
            base + "\n# tests/postgres.py\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
        )
        log = str(cluster.root / "postgres.log")
        started = cluster.run(
            "pg_ctl", "-D", str(cluster.data), "-l", log, "-w", "-t", "60", "start", check=False
        )
        if started.returncode == 0:
            return
        if "could not bind" not in cluster.log() or attempt == attempts - 1:
            raise RuntimeError(
                f"PostgreSQL did not start:\n{started.stdout}{started.stderr}\n{cluster.log()}"
            )


def start_postgres(bindir: Path) -> PostgresCluster:
    """initdb + start a cluster in a new folder under the system temp dir (which the server user can reach)."""
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="edgeseg-pg-"))
    try:
        run_as = _owner(root)
        cluster = PostgresCluster(root, bindir, 0, secrets.token_hex(16), run_as)
        _initdb(cluster)
        _start(cluster)
    except BaseException:
        if (root / "data" / "postmaster.pid").exists():
            PostgresCluster(root, bindir, 0, "", _owner(root)).stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    cluster.started_in_s = time.perf_counter() - started
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway cluster for the test session, stopped at its end."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(f"PostgreSQL's initdb/pg_ctl are missing: run {ENSURE_SCRIPT} (make test does)")
    cluster = start_postgres(bindir)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_db(postgres_cluster: PostgresCluster) -> str:
    """A new database in the session's cluster: its ``postgresql://user:password@127.0.0.1:PORT/db`` URI."""
    return postgres_cluster.create_database()
