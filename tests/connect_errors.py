"""Connect errors produced live on the real bed, as each driver reports them.

`capture()` provokes every situation on real servers (PostgreSQL 15, PgBouncer,
the RDS Proxy stand-in) and records what psycopg 3, psycopg2, pg8000 and
asyncpg raise: the message and the SQLSTATE where the driver gives one.
`tests/test_connect_errors.py` runs it and checks the classifier against it;
`tests/data/connect_errors.json` is a snapshot of it for the unit tests of the
classifier (`tests/test_policy.py`). To rewrite the snapshot::

    .venv/bin/python -m tests.connect_errors
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pg8000
import psycopg
import psycopg2

from rotating_pool.testing import LocalPgBouncer, LocalPostgres, LocalRdsProxy, LocalSecretsManager
from rotating_pool.testing._process import free_port
from rotating_pool.testing.postgres import PG_BIN, _server_user_options

SNAPSHOT = Path(__file__).parent / "data" / "connect_errors.json"
DRIVERS = ("psycopg", "psycopg2", "pg8000", "asyncpg")
TIMEOUT = 2  # seconds, for every connect attempt
UNKNOWN_HOST = "no-such-host.invalid"  # RFC 2606: never resolves
SLOTS = 5  # max_connections of the server for capacity, TLS and shutdown
STANDBY = "a standby without hot standby (hot_standby=off)"
PENDING: dict[str, str] = {}
"""Situations the classifier does not classify as expected yet, with why: kept out
of the snapshot and out of the live test's assertion. None today."""
TIMING_DEPENDENT = ("starting up", "auth_query login fails")
"""Situations whose wording depends on timing (which state the server or
PgBouncer is in when the login arrives): snapshot and live run may differ."""


@dataclass(frozen=True)
class Captured:
    """One connect error as a driver raised it.

    Attributes:
        situation: what was provoked.
        driver: psycopg, psycopg2, pg8000 or asyncpg.
        error: the exception's class name.
        message: its text (pg8000: the server's message field).
        sqlstate: the SQLSTATE the driver carries, else None.
        expected: the class the classifier must give: refused, transient, unrecognised.
    """

    situation: str
    driver: str
    error: str
    message: str
    sqlstate: str | None
    expected: str
    exception: BaseException | None = field(default=None, compare=False, repr=False)


def connect_once(driver: str, params: dict[str, Any]) -> None:
    """Connect with `driver` and close at once; raises what the driver raises."""
    host, port, user = params["host"], params["port"], params["user"]
    password, dbname = params["password"], params["dbname"]
    if driver in ("psycopg", "psycopg2"):
        module: Any = psycopg if driver == "psycopg" else psycopg2
        extra = {"sslmode": params["sslmode"]} if "sslmode" in params else {}
        module.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            dbname=dbname,
            connect_timeout=TIMEOUT,
            **extra,
        ).close()
    elif driver == "pg8000":
        # pg8000 tries TLS first unless told not to (ssl_context=False).
        tls = {"ssl_context": False} if params.get("sslmode") == "disable" else {}
        pg8000.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            database=dbname,
            timeout=TIMEOUT,
            **tls,
        ).close()
    else:

        async def attempt() -> None:
            conn = await asyncpg.connect(
                host=host,
                port=port,
                user=user,
                password=password,
                database=dbname,
                timeout=TIMEOUT,
                ssl=False,
            )
            await conn.close()

        asyncio.run(attempt())


def provoke(
    situation: str, expected: str, params: dict[str, Any], drivers: tuple[str, ...] = DRIVERS
) -> list[Captured]:
    """Connect with each driver; every one must fail. Returns what they raised."""
    captured = []
    for driver in drivers:
        try:
            connect_once(driver, params)
        except Exception as error:
            captured.append(describe(situation, driver, error, expected))
        else:
            raise AssertionError(f"{driver} connected although {situation}")
    return captured


def describe(situation: str, driver: str, error: BaseException, expected: str) -> Captured:
    fields = next((arg for arg in error.args if isinstance(arg, dict)), None)
    if fields is not None:  # pg8000: the server's ErrorResponse fields
        message, sqlstate = str(fields.get("M", "")), fields.get("C")
    else:
        message = str(error).strip()
        sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return Captured(situation, driver, type(error).__name__, message, sqlstate, expected, error)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose listener accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def capture(postgres: LocalPostgres, secretsmanager: LocalSecretsManager) -> list[Captured]:
    """Provoke every situation and return what each driver raised."""
    schema = postgres.create_app_schema(role="errs", users=("errs_a", "errs_b"))
    user, other = schema.users
    good = {
        "host": postgres.host,
        "port": postgres.port,
        "user": user,
        "password": schema.passwords[user],
        "dbname": schema.dbname,
    }
    out: list[Captured] = []
    # Refusals: directly, through PgBouncer and through the RDS Proxy stand-in.
    for where, host_port in _fronts(postgres, secretsmanager, schema):
        at = {**good, **host_port}
        out += provoke(f"{where}: wrong password", "refused", {**at, "password": "not-it"})
        out += provoke(
            f"{where}: the other user (NOLOGIN, not the secret's)",
            "refused",
            {**at, "user": other, "password": schema.passwords[other]},
        )
        if where.startswith("PgBouncer"):
            # PgBouncer's own auth_query login to that database fails; it holds
            # the first client while it retries (psycopg 3 times out), then says so.
            out += provoke(
                f"{where}: missing database (its auth_query login fails)",
                "transient",
                {**at, "dbname": "no_such_database"},
            )
    # Transient: nothing about the credentials.
    out += provoke("refused port (server stopped)", "transient", {**good, "port": free_port()})
    out += provoke("missing database", "transient", {**good, "dbname": "no_such_database"})
    out += provoke("unknown host name", "transient", {**good, "host": UNKNOWN_HOST})
    with silent_listener() as port:
        out += provoke(
            "connect timeout (a listener that never answers)",
            "transient",
            {**good, "port": port},
            drivers=("psycopg", "asyncpg"),
        )
    out += _small_server_cases()
    return out


def _fronts(
    postgres: LocalPostgres, secretsmanager: LocalSecretsManager, schema: Any
) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "PostgreSQL", {}
    with LocalPgBouncer(postgres) as bouncer:
        yield "PgBouncer 1.18", {"host": bouncer.host, "port": bouncer.port}
    client = secretsmanager.client()
    arn = client.create_secret(
        Name=f"connect-errors-{time.monotonic_ns()}",
        SecretString=json.dumps(schema.secret_document("alternating")),
    )["ARN"]
    with LocalRdsProxy(
        client, arn, target=(postgres.host, postgres.port), refresh_interval=None
    ) as rds:
        yield "RDS Proxy stand-in", {"host": rds.host, "port": rds.port}


def _small_server_cases() -> list[Captured]:
    """Capacity, TLS, shutting down and starting up, on servers of their own."""
    out: list[Captured] = []
    with LocalPostgres(tls=True) as tls_only:  # pg_hba.conf: hostssl lines only
        out += provoke(
            "server requires TLS (pg_hba hostssl only), client without TLS",
            "transient",
            {
                "host": tls_only.host,
                "port": tls_only.port,
                "user": tls_only.admin_user,
                "password": tls_only.admin_password,
                "dbname": "postgres",
                "sslmode": "disable",
            },
        )
    directory = Path(tempfile.mkdtemp(prefix="rotating-pool-errors-", dir="/tmp"))
    directory.chmod(0o711)  # the server's OS user must reach its directories in it
    settings = {"superuser_reserved_connections": "0"}
    # Slots to spare for the other cases: a refused login's backend leaves a
    # moment after the client has its answer.
    server = LocalPostgres(directory / "pg", max_connections=SLOTS, settings=settings)
    try:
        server.start()
        admin = server.admin_connect()
        admin.execute("CREATE ROLE plain LOGIN PASSWORD 'plain-password'")
        plain = {
            "host": server.host,
            "port": server.port,
            "user": "plain",
            "password": "plain-password",
            "dbname": "postgres",
        }
        with contextlib.ExitStack() as held:
            for _ in range(SLOTS - 1):  # with `admin`, every slot taken
                held.enter_context(server.admin_connect())
            out += provoke("max_connections exceeded", "transient", plain)
        _postmaster_signal(server, signal.SIGTERM)  # smart shutdown: waits for `admin`
        out += _until_captured("the server shutting down", _SHUTTING_DOWN, plain)
        admin.close()
        server.stop()
        out += _standby_cases(server, plain)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return out


def _standby_cases(server: LocalPostgres, plain: dict[str, Any]) -> list[Captured]:
    """Restart the stopped server as a standby with hot_standby=off: it says it is
    starting up, then that it accepts no connections."""
    data = server.directory / "data"
    (data / "standby.signal").touch()
    as_user = _server_user_options()
    if as_user:
        os.chown(data / "standby.signal", as_user["user"], as_user["group"])
    process = subprocess.Popen(
        [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-p",
            str(server.port),
            "-c",
            f"listen_addresses={server.host}",
            "-c",
            "hot_standby=off",
            "-c",
            f"unix_socket_directories={server.directory}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **as_user,
    )
    try:
        out = []
        # The first moments of a start: best effort (the window is short).
        [first] = _until_captured("the server starting up", _ANY_FATAL, plain, ("psycopg",))
        if "starting up" in first.message:
            out.append(first)
        return out + _until_captured(STANDBY, _NOT_ACCEPTING, plain)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


_SHUTTING_DOWN = re.compile("shutting down")
_NOT_ACCEPTING = re.compile("not accepting connections")
_ANY_FATAL = re.compile("FATAL")


def _until_captured(
    situation: str,
    wording: re.Pattern[str],
    params: dict[str, Any],
    drivers: tuple[str, ...] = DRIVERS,
) -> list[Captured]:
    """Try each driver until the server's answer matches `wording` (it is changing state)."""
    out = []
    for driver in drivers:
        deadline = time.monotonic() + 15
        while True:
            [seen] = provoke(situation, "transient", params, drivers=(driver,))
            if wording.search(seen.message):
                out.append(seen)
                break
            assert time.monotonic() < deadline, f"{driver} never matched {wording}: {seen}"
            time.sleep(0.02)
    return out


def _postmaster_signal(server: LocalPostgres, signum: int) -> None:
    pid = int((server.directory / "data" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signum)


_PORT = re.compile(r"(port |'127\.0\.0\.1', )\d+")


def normalised(message: str) -> str:
    """The message with what changes from run to run (ports) blanked out."""
    return _PORT.sub(r"\1<port>", message)


def snapshot_row(captured: Captured) -> dict[str, Any]:
    """What the snapshot keeps of a capture: no exception object, ports blanked out."""
    row = asdict(captured)
    del row["exception"]
    return {**row, "message": normalised(captured.message)}


def write_snapshot(captured: list[Captured]) -> None:
    """Write `captured` to tests/data/connect_errors.json, ports blanked out."""
    SNAPSHOT.parent.mkdir(exist_ok=True)
    rows = [snapshot_row(c) for c in captured if c.situation not in PENDING]
    SNAPSHOT.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    with LocalPostgres() as pg, LocalSecretsManager() as sm:
        write_snapshot(capture(pg, sm))
    print(f"wrote {SNAPSHOT}")
