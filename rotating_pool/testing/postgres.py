"""A throwaway PostgreSQL 15 server, from Debian's packages, on 127.0.0.1.

With ``tls=True`` it serves TLS only (``ssl = on``, ``hostssl``-only
``pg_hba.conf``) with a certificate for 127.0.0.1 signed by a CA made at start
(`ca_path`); its secret documents then carry no ``ssl`` key, so the rotation
side verifies it. A plain server's documents say ``"ssl": false``.

>>> with LocalPostgres() as pg:  # doctest: +SKIP
...     schema = pg.create_app_schema()
...     with pg.admin_connect() as conn:
...         conn.execute("select 1").fetchone()
(1,)
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from rotating_pool.testing._process import (
    LocalService,
    end_process,
    free_port,
    wait_for_logins,
)
from rotating_pool.testing.tls import CertificateAuthority

__all__ = ["PG_BIN", "AppSchema", "LocalPostgres"]

logger = logging.getLogger("rotating_pool.testing")

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# The unprivileged OS user that Debian's postgresql-common creates; initdb and
# postgres refuse to run as root, so as root they run as this user.
_SERVER_OS_USER = "postgres"
_STOP_TIMEOUT = 30.0


def _new_password() -> str:
    return secrets.token_urlsafe(24)


def _server_user_options() -> dict[str, Any]:
    """Popen options that run a server binary as the unprivileged user when we are root.

    The process is started as that user directly rather than through
    `runuser`: runuser stays as a parent that swallows SIGINT and turns SIGTERM
    into a smart shutdown followed by SIGKILL two seconds later, so the
    postmaster could not be given a clean fast shutdown through it.
    """
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(_SERVER_OS_USER)
    except KeyError:
        raise RuntimeError(
            "PostgreSQL refuses to run as root and there is no "
            f"{_SERVER_OS_USER!r} OS user to run it as: install Debian's postgresql-15"
        ) from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _set_password(conn: psycopg.Connection[TupleRow], user: str, password: str) -> None:
    # ALTER ROLE takes no bind parameter; a SCRAM verifier made client-side keeps
    # the plaintext out of the statement and so out of any server log.
    verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256")
    conn.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(verifier.decode())
        )
    )


@dataclass(frozen=True)
class AppSchema:
    """The roles and database of an application that uses alternating-users rotation.

    `role` owns the database and its objects; `users[0]` can log in,
    `users[1]` exists with NOLOGIN until a rotation hands over to it. Both are
    members of `role` and `SET ROLE` to it at login, so objects they create
    belong to `role`.

    Attributes:
        role: the NOLOGIN role that owns everything.
        users: the two login users, the first one active.
        dbname: the application database.
        passwords: user name -> password (kept out of repr).
        host: the server's address.
        port: the server's port.
        tls: whether the server serves TLS only (its documents then carry no
            ``ssl`` key; otherwise ``"ssl": false``).
    """

    role: str
    users: tuple[str, str]
    dbname: str
    passwords: dict[str, str] = field(repr=False)
    host: str
    port: int
    tls: bool = False

    def secret_document(self, strategy: str, masterarn: str | None = None) -> dict[str, Any]:
        """Return the RDS-style JSON secret for `users[0]`.

        Args:
            strategy: the `rotation_strategy` to write, e.g. "single" or "alternating".
            masterarn: the ARN of the admin secret; written for "alternating" only.

        With strategy "alternating" the document also carries `rotation_role`,
        `rotation_users` and (when given) `masterarn`.
        """
        user = self.users[0]
        document: dict[str, Any] = {
            "engine": "postgres",
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "username": user,
            "password": self.passwords[user],
            "rotation_strategy": strategy,
        }
        if not self.tls:
            document["ssl"] = False
        if strategy == "alternating":
            document["rotation_role"] = self.role
            document["rotation_users"] = list(self.users)
            if masterarn is not None:
                document["masterarn"] = masterarn
        return document


class LocalPostgres(LocalService):
    """A throwaway PostgreSQL 15 server on 127.0.0.1, with a random superuser password.

    Args:
        directory: where the server keeps its files (data directory, socket,
            log). By default a new temporary directory, removed by `stop()`.
            A given directory is kept; as root it is handed to the `postgres`
            OS user, so its parents must be traversable by that user.
        port: the TCP port; by default a free one, chosen at `start()`.
        max_connections: the server's `max_connections` (the default 100 is
            too few for many writers with a short pool_recycle).
        settings: more `-c name=value` server settings.
        tls: serve TLS only, with a certificate for 127.0.0.1 (not for
            ``localhost``) signed by a CA made at start; clients verify it
            against `ca_path`.

    Runs `initdb` and `postgres` directly as an ordinary user, and as the
    unprivileged `postgres` OS user when run as root (they refuse root).
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        port: int | None = None,
        max_connections: int = 400,
        settings: dict[str, str] | None = None,
        tls: bool = False,
    ) -> None:
        self._given_directory = directory
        self._tls = tls
        self._port = port
        self._max_connections = max_connections
        self._settings = dict(settings or {})
        self._admin_password = _new_password()
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def admin_user(self) -> str:
        """The superuser's name."""
        return "postgres"

    @property
    def admin_password(self) -> str:
        """The superuser's password, random for each instance."""
        return self._admin_password

    @property
    def directory(self) -> Path:
        """The directory holding the data directory, the socket and the log."""
        if self._directory is None:
            raise RuntimeError("LocalPostgres has no directory yet: call start() first")
        return self._directory

    @property
    def tls(self) -> bool:
        """Whether the server serves TLS only."""
        return self._tls

    @property
    def ca_path(self) -> Path:
        """The CA certificate (PEM) that signs the server's certificate (TLS only)."""
        if not self._tls:
            raise RuntimeError("this LocalPostgres has no TLS: make it with tls=True")
        return self.directory / "ca.pem"

    def tls_params(self) -> dict[str, Any]:
        """libpq parameters that verify this server (``verify-full`` against
        `ca_path`); empty for a plain server."""
        if not self._tls:
            return {}
        return {"sslmode": "verify-full", "sslrootcert": str(self.ca_path)}

    @property
    def log_path(self) -> Path:
        """The server's log file (its stderr)."""
        return self.directory / "postgres.log"

    def start(self) -> LocalPostgres:
        """Create a cluster, start the server and wait until it accepts logins."""
        if self._process is not None:
            raise RuntimeError("LocalPostgres is already started")
        started = time.monotonic()
        try:
            self._prepare_directory()
            self._initdb()
            if self._tls:
                self._set_up_tls()
            self._launch()
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        logger.info(
            "PostgreSQL started on %s:%d in %.2f s (log: %s)",
            self.host,
            self.port,
            time.monotonic() - started,
            self.log_path,
        )
        return self

    def stop(self) -> None:
        """Shut the server down (fast shutdown) and remove the directory it created."""
        process, self._process = self._process, None
        if process is not None:
            # SIGINT is PostgreSQL's fast shutdown: ends sessions, no waiting for clients.
            end_process(process, signal.SIGINT, _STOP_TIMEOUT)
            logger.info("PostgreSQL on port %s stopped", self._port)
        if self._given_directory is None and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def admin_connect(self, dbname: str = "postgres") -> psycopg.Connection[TupleRow]:
        """Open an autocommit connection as the superuser."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.admin_user,
            password=self.admin_password,
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
            **self.tls_params(),
        )

    def admin_document(self) -> dict[str, Any]:
        """Return the RDS-style JSON secret of the superuser, for database `postgres`
        (with ``"ssl": false`` for a plain server)."""
        document: dict[str, Any] = {
            "engine": "postgres",
            "host": self.host,
            "port": self.port,
            "dbname": "postgres",
            "username": self.admin_user,
            "password": self.admin_password,
        }
        if not self._tls:
            document["ssl"] = False
        return document

    def create_createrole_admin(self, name: str = "rds_master") -> dict[str, Any]:
        """Create (or reset) an admin shaped as RDS's master user and return its
        RDS-style secret document (`admin_document`'s shape).

        RDS gives its master user CREATEROLE and CREATEDB and membership of
        ``rds_superuser``, never SUPERUSER
        (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/Appendix.PostgreSQL.CommonDBATasks.Roles.html);
        here ``rds_superuser`` is a plain NOLOGIN role standing in for RDS's.
        On PostgreSQL 15 such a role may change the password of any role that
        is not a superuser.
        """
        password = _new_password()
        ident = sql.Identifier(name)
        with self.admin_connect() as conn:
            conn.execute(
                "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_superuser')"
                " THEN CREATE ROLE rds_superuser NOLOGIN; END IF; END$$"
            )
            exists = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", [name]
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB").format(ident))
            conn.execute(sql.SQL("GRANT rds_superuser TO {}").format(ident))
            _set_password(conn, name, password)
        return {**self.admin_document(), "username": name, "password": password}

    def create_rds_iam_role(self) -> None:
        """Create, if missing, a plain NOLOGIN ``rds_iam`` role standing in for
        RDS's: there, its members log in only with IAM auth tokens
        (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.DBAccounts.html);
        here it is only a name to grant, and this server checks no token."""
        with self.admin_connect() as conn:
            conn.execute(
                "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_iam')"
                " THEN CREATE ROLE rds_iam NOLOGIN; END IF; END$$"
            )

    def create_app_schema(
        self,
        role: str = "app",
        users: tuple[str, str] = ("app_a", "app_b"),
        dbname: str | None = None,
    ) -> AppSchema:
        """Create the roles and database of an alternating-users application.

        `role` NOLOGIN; `users[0]` LOGIN and `users[1]` NOLOGIN, each with a
        random password, a member of `role` and set to `SET ROLE role` at
        login; a database `dbname` (default: `role`) owned by `role`.
        """
        if users[0] == users[1]:
            raise ValueError("the two users of an alternating-users schema must differ")
        dbname = dbname or role
        passwords = {user: _new_password() for user in users}
        ident = sql.Identifier
        with self.admin_connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(role)))
            for user, login in zip(users, (sql.SQL("LOGIN"), sql.SQL("NOLOGIN")), strict=True):
                conn.execute(sql.SQL("CREATE ROLE {} {}").format(ident(user), login))
                _set_password(conn, user, passwords[user])
                conn.execute(sql.SQL("GRANT {} TO {}").format(ident(role), ident(user)))
                conn.execute(sql.SQL("ALTER ROLE {} SET ROLE {}").format(ident(user), ident(role)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident(dbname), ident(role)))
        logger.info("created role %r, users %r, database %r", role, users, dbname)
        return AppSchema(
            role=role,
            users=users,
            dbname=dbname,
            passwords=passwords,
            host=self.host,
            port=self.port,
            tls=self._tls,
        )

    def _prepare_directory(self) -> None:
        as_user = _server_user_options()
        if self._given_directory is not None:
            directory = self._given_directory
            directory.mkdir(parents=True, exist_ok=True)
        else:
            # As root, under /tmp: the postgres user must be able to traverse
            # every parent, which a root-only TMPDIR may not allow.
            parent = "/tmp" if as_user else None  # noqa: S108
            directory = Path(tempfile.mkdtemp(prefix="rotating-pool-pg-", dir=parent))
        if as_user:
            os.chown(directory, as_user["user"], as_user["group"])
        self._directory = directory
        if self._port is None:
            self._port = free_port(self.host)

    def _initdb(self) -> None:
        directory = self.directory
        data = directory / "data"
        if data.exists():
            raise RuntimeError(f"{data} already exists: give LocalPostgres an empty directory")
        as_user = _server_user_options()
        pwfile = directory / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.admin_password + "\n")
        try:
            if as_user:
                os.chown(pwfile, as_user["user"], as_user["group"])
            result = subprocess.run(
                [
                    str(PG_BIN / "initdb"),
                    "--pgdata",
                    str(data),
                    "--username",
                    self.admin_user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    # English server messages: login failures are recognised by them.
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
                **as_user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            tail = "\n".join(result.stdout.splitlines()[-30:])
            raise RuntimeError(f"initdb failed with exit code {result.returncode}:\n{tail}")

    def _set_up_tls(self) -> None:
        """A CA and a server certificate for 127.0.0.1, ``ssl = on`` and a
        pg_hba.conf that accepts TCP logins over TLS only."""
        directory = self.directory
        ca = CertificateAuthority.create(f"rotating_pool LocalPostgres CA {self.port}")
        ca.write_cert(directory / "ca.pem")
        cert, key = directory / "server.crt", directory / "server.key"
        ca.issue_server_cert([self.host], cert, key)
        (directory / "data" / "pg_hba.conf").write_text(
            "# rotating_pool LocalPostgres(tls=True): TCP logins over TLS only\n"
            "local   all  all                scram-sha-256\n"
            "hostssl all  all  127.0.0.1/32  scram-sha-256\n"
        )
        as_user = _server_user_options()
        if as_user:
            for path in (cert, key, directory / "ca.pem", directory / "data" / "pg_hba.conf"):
                os.chown(path, as_user["user"], as_user["group"])
        self._settings = {
            "ssl": "on",
            "ssl_cert_file": str(cert),
            "ssl_key_file": str(key),
            **self._settings,
        }

    def _launch(self) -> None:
        directory = self.directory
        command = [
            str(PG_BIN / "postgres"),
            "-D",
            str(directory / "data"),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"max_connections={self._max_connections}",
            "-c",
            "fsync=off",
            "-c",
            f"unix_socket_directories={directory}",
            "-c",
            "logging_collector=off",
        ]
        for name, value in self._settings.items():
            command += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_server_user_options(),
            )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        wait_for_logins(self._process, self.admin_connect, "PostgreSQL", self.log_path)
