"""PgBouncer from Debian's `pgbouncer` package, on 127.0.0.1, in front of a `LocalPostgres`.

>>> with LocalPostgres() as pg, LocalPgBouncer(pg) as bouncer:  # doctest: +SKIP
...     schema = pg.create_app_schema()
...     url = f"postgresql+psycopg://{bouncer.host}:{bouncer.port}/{schema.dbname}"

Configured as PgBouncer is commonly put in front of RDS: clients authenticate
with SCRAM-SHA-256 against verifiers PgBouncer reads from the server itself
(`auth_user` + `auth_query` on `pg_shadow`), so no password list is kept in
PgBouncer, and server connections are shared per transaction
(`pool_mode = transaction`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from rotating_pool.testing._process import (
    LocalService,
    end_process,
    free_port,
    wait_for_logins,
)
from rotating_pool.testing.postgres import LocalPostgres, _server_user_options

__all__ = ["PGBOUNCER", "LocalPgBouncer"]

logger = logging.getLogger("rotating_pool.testing")

PGBOUNCER = Path("/usr/sbin/pgbouncer")
AUTH_QUERY = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
_STOP_TIMEOUT = 10.0


class LocalPgBouncer(LocalService):
    """PgBouncer (Debian's package, 1.18 on bookworm) on 127.0.0.1 in front of `postgres`.

    Settings: every database of `postgres` (`* = host=... port=...`),
    `auth_type = scram-sha-256`, `auth_user` = the server's superuser (its
    password in a private `auth_file`), `auth_query = SELECT usename, passwd
    FROM pg_shadow WHERE usename=$1`, `pool_mode` (default `transaction`), a
    free port, and the log in `log_path`. `pg_shadow` lists only roles that may
    log in, so PgBouncer knows a NOLOGIN role as no user at all.

    How PgBouncer 1.18 refuses a login, as seen on this bed (the refusal is
    PgBouncer's own; PostgreSQL never sees the attempt)::

        wrong password          FATAL:  SASL authentication failed     SQLSTATE 08P01
        NOLOGIN or unknown user FATAL:  no such user                   SQLSTATE 08P01

    SQLSTATE as asyncpg and pg8000 report it (`.sqlstate`, `args[0]["C"]`);
    psycopg 3 and psycopg2 report none at connect. 08P01 (protocol violation)
    is PgBouncer's code for every error it raises itself, so class 08 says
    nothing about whether the login or the network failed.

    PgBouncer learns a new password at the next login (it runs `auth_query`
    for each), and refuses the old one from then on, pooled server connections
    or not. A missing database behind the `*` entry fails PgBouncer's own
    `auth_query` login: `server login has been failing, try again later
    (server_login_retry)` (08P01), after holding the client while it retries.

    With `pool_mode = transaction` drivers must not keep named prepared
    statements across transactions: psycopg 3 needs `prepare_threshold=None`
    (else `prepared statement "_pg3_0" already exists`), asyncpg through
    SQLAlchemy `?prepared_statement_cache_size=0` in the URL (else `prepared
    statement "__asyncpg_stmt_10__" does not exist`); psycopg2 and pg8000 need
    nothing.

    PgBouncer refuses to run as root: as root it runs as the `postgres` OS user.

    Args:
        postgres: the server to pool (started).
        port: the TCP port; by default a free one, chosen at `start()`.
        pool_mode: `transaction`, `session` or `statement`.
        settings: more `[pgbouncer]` settings, e.g. {"default_pool_size": "40"}.
    """

    def __init__(
        self,
        postgres: LocalPostgres,
        *,
        port: int | None = None,
        pool_mode: str = "transaction",
        settings: dict[str, str] | None = None,
    ) -> None:
        self._postgres = postgres
        self._port = port
        self._pool_mode = pool_mode
        self._settings = dict(settings or {})
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> Path:
        """The directory holding the configuration, the auth file and the log."""
        if self._directory is None:
            raise RuntimeError("LocalPgBouncer has no directory yet: call start() first")
        return self._directory

    @property
    def log_path(self) -> Path:
        """PgBouncer's log (its stderr)."""
        return self.directory / "pgbouncer.log"

    def start(self) -> LocalPgBouncer:
        """Write the configuration, start PgBouncer and wait until a login through it works."""
        if self._process is not None:
            raise RuntimeError("LocalPgBouncer is already started")
        if not PGBOUNCER.exists():
            raise RuntimeError(
                f"{PGBOUNCER} is missing: install Debian's pgbouncer package "
                "(apt-get install pgbouncer, or `make pgbouncer`)"
            )
        started = time.monotonic()
        try:
            self._configure()
            self._launch()
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        logger.info(
            "PgBouncer (pool_mode=%s) on %s:%d in front of PostgreSQL on port %d, "
            "started in %.2f s (log: %s)",
            self._pool_mode,
            self.host,
            self.port,
            self._postgres.port,
            time.monotonic() - started,
            self.log_path,
        )
        return self

    def stop(self) -> None:
        """Shut PgBouncer down at once (SIGTERM) and remove its directory."""
        process, self._process = self._process, None
        if process is not None:
            # SIGTERM is PgBouncer's immediate shutdown; SIGINT would wait for clients.
            end_process(process, signal.SIGTERM, _STOP_TIMEOUT)
            logger.info("PgBouncer on port %s stopped", self._port)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def admin_connect(self, dbname: str = "postgres") -> psycopg.Connection[psycopg.rows.TupleRow]:
        """Open an autocommit connection through PgBouncer as the server's superuser."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self._postgres.admin_user,
            password=self._postgres.admin_password,
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
            prepare_threshold=None,
        )

    def _configure(self) -> None:
        as_user = _server_user_options()
        # As root, under /tmp: the postgres user must reach the files.
        parent = "/tmp" if as_user else None  # noqa: S108
        directory = Path(tempfile.mkdtemp(prefix="rotating-pool-pgbouncer-", dir=parent))
        self._directory = directory
        if self._port is None:
            self._port = free_port(self.host)
        admin = self._postgres.admin_user
        settings = {
            "listen_addr": self.host,
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "scram-sha-256",
            "auth_file": str(directory / "userlist.txt"),
            "auth_user": admin,
            "auth_query": AUTH_QUERY,
            "admin_users": admin,
            "pool_mode": self._pool_mode,
            "max_client_conn": "1000",
            "default_pool_size": "20",
            "syslog": "0",
            # Seconds before PgBouncer tries a failed server login again (default 15):
            # short, so that a test bed recovers quickly from a server restart.
            "server_login_retry": "1",
            **self._settings,
        }
        lines = [
            "; written by rotating_pool.testing.LocalPgBouncer",
            "[databases]",
            f"* = host={self._postgres.host} port={self._postgres.port}",
            "",
            "[pgbouncer]",
            *(f"{name} = {value}" for name, value in settings.items()),
        ]
        config = directory / "pgbouncer.ini"
        config.write_text("\n".join(lines) + "\n")
        # The auth_user's own password, which PgBouncer needs in clear to log in with it.
        userlist = directory / "userlist.txt"
        fd = os.open(userlist, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f'"{admin}" "{self._postgres.admin_password}"\n')
        if as_user:
            for path in (directory, config, userlist):
                os.chown(path, as_user["user"], as_user["group"])

    def _launch(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(PGBOUNCER), str(self.directory / "pgbouncer.ini")],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_server_user_options(),
            )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        wait_for_logins(self._process, self.admin_connect, "PgBouncer", self.log_path)
