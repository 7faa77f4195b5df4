"""A real PostgreSQL server for tests: initdb into a fresh directory, started on loopback.

PostgreSQL refuses to run as root (CI runs as root), so the cluster belongs to an unprivileged
user (`nobody`) and every server command runs as that user. `make test` installs Debian's
`postgresql` package when it is missing (scripts/ensure-postgres.sh); a machine without it
fails these tests loudly rather than skipping them.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

DB_USER = "kms"
DB_NAME = "kms"


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        pytest.fail(f"PostgreSQL's {name} is not installed (run scripts/ensure-postgres.sh)")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(user: str | None, args: list[str]) -> None:
    """Run a server command as the cluster's owner (root may not run PostgreSQL)."""
    subprocess.run(
        args, check=True, capture_output=True, timeout=120, user=user, group=user and "nogroup"
    )


@dataclass
class PostgresServer:
    """One running cluster: `url` for the KMS, `stop()`/`start()` to take it away and back."""

    directory: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def _ctl(self, *args: str) -> None:
        _run_as(self.user, [_pg_bin("pg_ctl"), "-D", str(self.directory / "data"), *args])

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.directory} -c fsync=on -c synchronous_commit=on"
        )
        self._ctl("-l", str(self.directory / "log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def promote(self) -> None:
        """A standby becomes the primary (what Patroni does on failover)."""
        self._ctl("-w", "promote")

    def kill(self) -> None:
        """The machine dies: SIGKILL the postmaster and every backend, no shutdown at all."""
        pid = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)
        os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        (self.directory / "data" / "postmaster.pid").unlink(missing_ok=True)

    def sql(self, statement: str, db: str = DB_NAME) -> str:
        done = subprocess.run(
            [
                _pg_bin("psql"),
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                DB_USER,
                "-d",
                db,
                "-c",
                statement,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout.strip()


_databases = itertools.count()


def fresh_database(server: PostgresServer) -> str:
    """The URL of a new, empty database on `server` (one per test keeps tests apart)."""
    name = f"t{next(_databases)}"
    server.sql(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + "/" + name


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    user = "nobody" if os.geteuid() == 0 else None
    directory = Path(tempfile.mkdtemp(prefix="ekms-pg-"))
    if user:
        shutil.chown(directory, user, "nogroup")
    server = PostgresServer(directory, _free_port(), user)
    initdb = [_pg_bin("initdb"), "-D", str(directory / "data"), "-U", DB_USER]
    _run_as(user, [*initdb, "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
    server.start()
    try:
        subprocess.run(
            [
                _pg_bin("createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(server.port),
                "-U",
                DB_USER,
                DB_NAME,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield server
    finally:
        try:
            server.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped by the test
        deadline = time.monotonic() + 10
        while (directory / "data" / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def postgres_standby(primary: PostgresServer, name: str = "standby1") -> Iterator[PostgresServer]:
    """A synchronous streaming standby of `primary`: `primary` acknowledges a commit only once
    this standby has flushed it (synchronous_standby_names), as in a Patroni pair."""
    directory = Path(tempfile.mkdtemp(prefix="ekms-pg-standby-"))
    if primary.user:
        shutil.chown(directory, primary.user, "nogroup")
    standby = PostgresServer(directory, _free_port(), primary.user)
    conninfo = f"host=127.0.0.1 port={primary.port} user={DB_USER} application_name={name}"
    _run_as(
        primary.user,
        [
            _pg_bin("pg_basebackup"),
            "-D",
            str(directory / "data"),
            "-d",
            conninfo,
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",  # the default spread checkpoint takes minutes
            "--no-sync",
        ],
    )
    standby.start()
    primary.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
    primary.sql("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    while primary.sql("SELECT sync_state FROM pg_stat_replication") != "sync":
        if time.monotonic() > deadline:
            pytest.fail("the standby did not become synchronous")
        time.sleep(0.1)
    try:
        yield standby
    finally:
        try:
            standby.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(directory, ignore_errors=True)
