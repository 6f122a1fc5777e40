"""Play the whole Fargate task on this machine: rotations under HTTP load, zero failed requests.

One command starts what the task and AWS provide, then loads the app and
rotates its secret on a schedule::

    python -m examples.fargate_sidecar.run_local [--seconds 60] [--quick]

- PostgreSQL (`LocalPostgres`), the database; roles and secret made by
  `rotating_pool.rotation.bootstrap`, as on a real deployment.
- Secrets Manager (`LocalSecretsManager`: moto over HTTP, with AWS behaviour
  restored where moto departs from it).
- The Secrets Manager Agent sidecar: `rotating_pool.local.LocalAgent`, a LOCAL
  STAND-IN that speaks the agent's protocol (the real agent is a Rust binary
  that needs AWS). Its token is written by init_token.py into a file, and both
  it and the app read it from there (``AWS_TOKEN=file://...``), as in the task.
- The app (app.py) under gunicorn with the image's gunicorn.conf.py (2 workers,
  --preload), in a subprocess whose environment holds no AWS setting at all:
  it reaches the secret only through the agent.
- Secrets Manager's rotation schedule: every few seconds, RotateSecret with a
  rotation Lambda ARN (it stages the empty AWSPENDING version, as AWS does),
  then the four steps through `rotating_pool.rotation.lambda_handler` with that
  token, as Secrets Manager invokes the Lambda, with a pause between testSecret
  and finishSecret as separate Lambda invocations take. First the alternating
  strategy; half way, the secret is re-bootstrapped to the single-user strategy.
- A load generator: threads sending keep-alive HTTP requests (http.client),
  half POST /orders (writes), half GET /orders/<id> (reads).

It prints progress once a second, a summary at the end, and writes a chart
(PNG) of throughput, errors and latency with each rotation marked. Exit code 1
if any request failed, if rows in the table differ from 2xx write answers, if a
rotation failed, or if a password appears in the app's log.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from examples.fargate_sidecar.init_token import write_token
from rotating_pool.local import LocalAgent, LocalPostgres, LocalSecretsManager
from rotating_pool.local._process import free_port, log_tail
from rotating_pool.retire import poll_interval
from rotating_pool.rotation import STEPS, BootstrapPlan, Strategy, bootstrap, lambda_handler

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_CHART = HERE / "results" / "run.png"

SECRET_NAME = "orders/db"
ADMIN_SECRET_NAME = "orders/db-admin"
ROLE = "orders"
DBNAME = "orders"
# A function name starting with "rotating-pool-local" makes the local Secrets
# Manager stage the rotation as AWS does and invoke nothing: this runner
# invokes the handler itself, as Secrets Manager would invoke the Lambda.
ROTATION_LAMBDA_ARN = (
    "arn:aws:lambda:us-east-1:123456789012:function:rotating-pool-local-orders-rotation"
)

# The load generator's request timeout: far above any answer the app should
# give, so that a slow answer shows as latency, not as an error.
REQUEST_TIMEOUT = 30.0
APP_START_TIMEOUT = 60.0
APP_STOP_TIMEOUT = 30.0
# Load runs this long before the first rotation and after the last one.
QUIET_SECONDS = 2.0


# -- what was measured ------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One HTTP request: when it finished (seconds since the load started), how long
    it took, what it was, and whether it got a 2xx answer."""

    at: float
    latency: float
    write: bool
    ok: bool


@dataclass(frozen=True)
class Rotation:
    """One rotation, start and end in seconds since the load started."""

    strategy: str
    started: float
    finished: float
    username: str
    error: str | None = None


@dataclass
class LoadResult:
    """What the load generator counted."""

    samples: list[Sample] = field(default_factory=list)
    writes_2xx: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        """Requests sent (answered or not)."""
        return len(self.samples)

    @property
    def ok(self) -> int:
        """Requests answered 2xx."""
        return sum(sample.ok for sample in self.samples)

    @property
    def failed(self) -> int:
        """Requests not answered 2xx (error status or no answer)."""
        return self.requests - self.ok


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100, nearest rank) of `values`; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- the load generator -------------------------------------------------------------


class LoadGenerator:
    """`threads` clients, each on one keep-alive connection, half writes and half reads.

    A write is ``POST /orders``; a read is ``GET /orders/<id>`` of an order an
    earlier write got a 201 for, so every read should find its row.
    """

    def __init__(self, host: str, port: int, *, threads: int) -> None:
        self.host = host
        self.port = port
        self.threads = threads
        self.started = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._result = LoadResult()
        self._ids: list[int] = []
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        """Start the clients; sample times count from now."""
        self.started = time.monotonic()
        for number in range(self.threads):
            worker = threading.Thread(
                target=self._run, args=(number,), name=f"load-{number}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def stop(self) -> LoadResult:
        """Stop the clients after their request in flight and return the counts."""
        self._stop.set()
        for worker in self._workers:
            worker.join()
        return self._result

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.started

    def samples_since(self, index: int) -> list[Sample]:
        """Samples recorded from position `index` on."""
        with self._lock:
            return self._result.samples[index:]

    def totals(self) -> tuple[int, int]:
        """(requests, failed) so far."""
        with self._lock:
            samples = self._result.samples
            return len(samples), sum(not s.ok for s in samples)

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)

    def _run(self, number: int) -> None:
        chooser = random.Random(number)
        connection = self._connect()
        sequence = 0
        while not self._stop.is_set():
            with self._lock:
                order_id = chooser.choice(self._ids) if self._ids else None
            write = order_id is None or chooser.random() < 0.5
            if write:
                sequence += 1
                body = json.dumps(
                    {"item": f"item-{number}-{sequence}", "quantity": chooser.randint(1, 9)}
                )
                method, path = "POST", "/orders"
                headers = {"Content-Type": "application/json"}
            else:
                method, path, body, headers = "GET", f"/orders/{order_id}", None, {}
            began = time.monotonic()
            status, answer, error = 0, b"", None
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                status = response.status
                if response.will_close:
                    connection.close()
                    connection = self._connect()
            except (OSError, http.client.HTTPException) as exc:
                error = type(exc).__name__
                connection.close()
                connection = self._connect()
            finished = time.monotonic()
            ok = 200 <= status < 300
            created = _created_id(answer) if write and status == 201 else None
            with self._lock:
                self._result.samples.append(
                    Sample(finished - self.started, finished - began, write, ok)
                )
                if not ok:
                    what = error or f"HTTP {status} {_short(answer)}"
                    self._result.errors[f"{method} {path.split('/')[1]}: {what}"] += 1
                if write and ok:
                    self._result.writes_2xx += 1
                if created is not None:
                    self._ids.append(created)
        connection.close()


def _created_id(answer: bytes) -> int | None:
    try:
        value = json.loads(answer)["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None


def _short(answer: bytes) -> str:
    return " ".join(answer.decode("utf-8", "replace").split())[:80]


# -- database sessions per user ---------------------------------------------------------


@dataclass(frozen=True)
class SessionSample:
    """Open sessions of the app's database per user, at `at` seconds since the load started."""

    at: float
    by_user: dict[str, int]


class SessionSampler:
    """Counts the app's sessions per user in ``pg_stat_activity`` every `every` seconds.

    The rotation's own logins (application_name ``rotating-pool-rotation``) and
    the sampler's are left out: what remains is the app's pools.
    """

    def __init__(self, postgres: LocalPostgres, clock: LoadGenerator, every: float = 0.25) -> None:
        self.postgres = postgres
        self.clock = clock
        self.every = every
        self.samples: list[SessionSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sessions", daemon=True)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> list[SessionSample]:
        """Stop and return the samples."""
        self._stop.set()
        self._thread.join()
        return self.samples

    def _run(self) -> None:
        with self.postgres.admin_connect() as conn:
            conn.autocommit = True
            while not self._stop.wait(self.every):
                rows = conn.execute(
                    "SELECT usename, count(*) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()"
                    " AND application_name IS DISTINCT FROM 'rotating-pool-rotation'"
                    " AND usename IS NOT NULL GROUP BY usename",
                    [DBNAME],
                ).fetchall()
                self.samples.append(SessionSample(self.clock.now(), dict(rows)))


# -- the rotation schedule ------------------------------------------------------------


class RotationSchedule:
    """Rotates the secret every `every` seconds as Secrets Manager would, in a thread.

    Alternating rotations until `switch_at`, then a re-bootstrap to the
    single-user strategy, then single-user rotations until `end_at` (seconds on
    the load generator's clock).
    """

    def __init__(
        self,
        client: SecretsManagerClient,
        postgres: LocalPostgres,
        clock: LoadGenerator,
        *,
        every: float,
        window: float,
        start_at: float,
        switch_at: float,
        end_at: float,
    ) -> None:
        self.client = client
        self.postgres = postgres
        self.clock = clock
        self.every = every
        self.window = window
        self.start_at = start_at
        self.switch_at = switch_at
        self.end_at = end_at
        self.rotations: list[Rotation] = []
        self.switched_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rotations", daemon=True)

    def start(self) -> None:
        """Start the schedule."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the rotation in progress (a rotation is never cut in half)."""
        self._stop.set()
        self._thread.join()

    def counts(self) -> Counter[str]:
        """Finished rotations by strategy."""
        with self._lock:
            return Counter(r.strategy for r in self.rotations if r.error is None)

    def _wait_until(self, at: float) -> bool:
        """Sleep until `at` on the load clock; False when stopped meanwhile."""
        return not self._stop.wait(max(0.0, at - self.clock.now()))

    def _run(self) -> None:
        strategy = Strategy.ALTERNATING
        next_at = self.start_at
        while self._wait_until(next_at):
            if strategy is Strategy.ALTERNATING and self.clock.now() >= self.switch_at:
                self._switch_to_single()
                strategy = Strategy.SINGLE
            if self.clock.now() + self.window + 1.0 > self.end_at:
                return  # no time for another whole rotation before the quiet end
            rotation = self._rotate(strategy.value)
            with self._lock:
                self.rotations.append(rotation)
            _print_rotation(len(self.rotations), rotation)
            next_at += self.every

    def _rotate(self, strategy: str) -> Rotation:
        """One rotation: RotateSecret, then the four Lambda invocations with its token."""
        started = self.clock.now()
        try:
            token = self.client.rotate_secret(
                SecretId=SECRET_NAME, RotationLambdaARN=ROTATION_LAMBDA_ARN
            )["VersionId"]
            for step in STEPS:
                if step == "finishSecret":
                    # Secrets Manager invokes each step separately; between
                    # setSecret and finishSecret a single-user rotation has
                    # changed the password while AWSCURRENT still has the old one.
                    time.sleep(self.window)
                event = {"SecretId": SECRET_NAME, "ClientRequestToken": token, "Step": step}
                lambda_handler(event, None)
            username = _current_username(self.client)
        except Exception as exc:  # reported in the summary; the run then fails
            return Rotation(strategy, started, self.clock.now(), "?", f"{type(exc).__name__}")
        return Rotation(strategy, started, self.clock.now(), username)

    def _switch_to_single(self) -> None:
        """Re-bootstrap the secret for the single-user strategy, keeping its user,
        and retire the other user, as moving a real deployment would.

        Retiring it matters: the app keeps the credentials it has until a login
        is refused, and after an alternating rotation those are the previous
        user's, which single-user rotations would never touch.
        """
        user = _current_username(self.client)
        retired = next(u for u in (f"{ROLE}_a", f"{ROLE}_b") if u != user)
        report = bootstrap(
            BootstrapPlan(
                secret_name=SECRET_NAME,
                admin_secret_id=ADMIN_SECRET_NAME,
                strategy=Strategy.SINGLE,
                role=ROLE,
                users=(user,),
                dbname=DBNAME,
            ),
            self.client,
        )
        with self.postgres.admin_connect() as conn:
            # Open sessions of the retired user go on; its new logins are refused.
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(retired)))
        self.switched_at = self.clock.now()
        print(
            f"  {self.switched_at:5.1f} s  re-bootstrapped {SECRET_NAME!r} for the single-user "
            f"strategy (user {report.username!r}, password "
            f"{'changed' if report.password_set else 'kept'}) and retired {retired!r} (NOLOGIN): "
            "rotations now change that user's own password",
            flush=True,
        )


def _current_username(client: SecretsManagerClient) -> str:
    value = client.get_secret_value(SecretId=SECRET_NAME, VersionStage="AWSCURRENT")
    return str(json.loads(value["SecretString"])["username"])


def _print_rotation(number: int, rotation: Rotation) -> None:
    took = rotation.finished - rotation.started
    if rotation.error:
        outcome = f"FAILED ({rotation.error})"
    else:
        outcome = f"AWSCURRENT is now user {rotation.username!r}"
    print(
        f"  {rotation.finished:5.1f} s  rotation {number} ({rotation.strategy}) "
        f"in {took:.2f} s: {outcome}",
        flush=True,
    )


# -- the app under gunicorn -----------------------------------------------------------


@dataclass
class App:
    """The gunicorn process serving app.py."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workers: int


def app_environment(
    agent: LocalAgent, token_path: Path, args: argparse.Namespace
) -> dict[str, str]:
    """The app's environment: as in the task definition, and nothing of AWS but the token.

    AWS_* settings of this process (the local Secrets Manager's endpoint and keys)
    are left out, so the app cannot reach Secrets Manager itself: every read
    goes through the agent.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AWS_") and name != "ROTATING_POOL_AGENT_ENDPOINT"
    }
    env.update(
        {
            "DB_SECRET_ID": SECRET_NAME,
            "AWS_TOKEN": f"file://{token_path}",
            "ROTATING_POOL_AGENT_ENDPOINT": agent.endpoint_url,
            "WEB_CONCURRENCY": str(args.workers),
            "GUNICORN_THREADS": "4",
            "DB_POOL_SIZE": "4",
            # Production keeps connections for 30 minutes; here they are replaced
            # every second so that each rotation meets many new logins, as a large
            # fleet's would.
            "DB_POOL_RECYCLE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if args.retire_after is not None:
        # No recycling: connections live until retirement closes superseded ones.
        env.update({"DB_POOL_RECYCLE": "-1", "DB_RETIRE_AFTER": str(args.retire_after)})
    return env


def start_app(env: dict[str, str], run_dir: Path, workers: int) -> App:
    """Start gunicorn with the image's config file, bound to a free local port."""
    port = free_port()
    env = {**env, "HOST": "127.0.0.1", "PORT": str(port)}
    log_path = run_dir / "app.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(HERE / "gunicorn.conf.py"),
        # The access log would be one line per request; the error log (stderr)
        # keeps gunicorn's and the app's own messages.
        "--access-logfile",
        str(run_dir / "access.log"),
        "examples.fargate_sidecar.app:app",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    app = App(process, port, log_path, workers)
    try:
        wait_until_ready(app)
    except BaseException:
        stop_app(app)
        raise
    return app


def wait_until_ready(app: App) -> None:
    """Poll GET /ready until the app answers 200 (its engine logged in)."""
    deadline = time.monotonic() + APP_START_TIMEOUT
    while True:
        code = app.process.poll()
        if code is not None:
            raise RuntimeError(
                f"gunicorn exited with code {code} while starting; end of {app.log_path}:\n"
                f"{log_tail(app.log_path)}"
            )
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
            try:
                connection.request("GET", "/ready")
                if connection.getresponse().status == 200:
                    return
            finally:
                connection.close()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the app did not become ready within {APP_START_TIMEOUT:.0f} s; "
                f"end of {app.log_path}:\n{log_tail(app.log_path)}"
            )
        time.sleep(0.2)


def stop_app(app: App) -> None:
    """SIGTERM (graceful shutdown, as ECS stops a task), SIGKILL if it lingers."""
    if app.process.poll() is None:
        app.process.send_signal(signal.SIGTERM)
        try:
            app.process.wait(APP_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(app.process.pid, signal.SIGKILL)
            app.process.wait()


# -- setting up -----------------------------------------------------------------------


def set_up_database(postgres: LocalPostgres, client: SecretsManagerClient) -> str:
    """Admin secret, then roles, database and app secret by `bootstrap`; returns the user."""
    client.create_secret(Name=ADMIN_SECRET_NAME, SecretString=json.dumps(postgres.admin_document()))
    report = bootstrap(
        BootstrapPlan(
            secret_name=SECRET_NAME,
            admin_secret_id=ADMIN_SECRET_NAME,
            strategy=Strategy.ALTERNATING,
            role=ROLE,
            dbname=DBNAME,
            create_database=True,
        ),
        client,
    )
    return report.username


def count_rows(postgres: LocalPostgres) -> int:
    """Rows in the orders table, counted as the admin."""
    with postgres.admin_connect(DBNAME) as conn:
        row = conn.execute("SELECT count(*) FROM orders").fetchone()
    return int(row[0]) if row else 0


def all_passwords(client: SecretsManagerClient, postgres: LocalPostgres) -> set[str]:
    """Every password any version of the app secret held, and the admin's."""
    passwords = {postgres.admin_password}
    versions = client.list_secret_version_ids(SecretId=SECRET_NAME, IncludeDeprecated=True)
    for version in versions["Versions"]:
        with contextlib.suppress(client.exceptions.ResourceNotFoundException):
            value = client.get_secret_value(SecretId=SECRET_NAME, VersionId=version["VersionId"])
            password = json.loads(value["SecretString"]).get("password")
            if password:
                passwords.add(str(password))
    return passwords


# -- reporting --------------------------------------------------------------------------


def progress_line(
    now: float, total: int, failed: int, window: list[Sample], rotations: Counter[str]
) -> str:
    """One line of live progress; latency percentiles over the last second."""
    latencies = [s.latency for s in window]
    return (
        f"  {now:5.1f} s  requests {total:8,d} ({len(window):4d}/s)  errors {failed:3d}  "
        f"rotations {rotations['alternating']:2d} alternating {rotations['single']:2d} single  "
        f"p50 {percentile(latencies, 50) * 1000:6.1f} ms  "
        f"p99 {percentile(latencies, 99) * 1000:6.1f} ms"
    )


@dataclass
class Summary:
    """The figures of a run."""

    seconds: float
    load: LoadResult
    rows: int
    rotations: list[Rotation]
    recovered_logins: int
    refused_logins: int
    agent_requests: int
    agent_refreshes: int
    agent_upstream: int
    worker_boots: int
    workers: int
    passwords_checked: int
    leaked_passwords: int
    sessions: list[SessionSample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the run met every promise."""
        return (
            self.load.failed == 0
            and self.rows == self.load.writes_2xx
            and all(r.error is None for r in self.rotations)
            and self.leaked_passwords == 0
            and self.load.requests > 0
        )


def print_summary(summary: Summary, chart: Path) -> None:
    """The end-of-run report."""
    load = summary.load
    latencies = [s.latency for s in load.samples]
    writes = sum(s.write for s in load.samples)
    by_strategy = Counter(r.strategy for r in summary.rotations if r.error is None)
    failed_rotations = [r for r in summary.rotations if r.error]
    rows_ok = summary.rows == load.writes_2xx
    print()
    print("=" * 78)
    print(f"summary of {summary.seconds:.0f} s under load")
    reads = load.requests - writes
    print(f"  HTTP requests          {load.requests:8,d}  ({writes:,d} writes, {reads:,d} reads)")
    print(f"  2xx answers            {load.ok:8,d}")
    print(f"  failed requests        {load.failed:8,d}")
    print(
        f"  rows in the table      {summary.rows:8,d}  vs 2xx write answers {load.writes_2xx:,d}: "
        f"{'equal' if rows_ok else 'DIFFERENT'}"
    )
    print(
        f"  rotations              {by_strategy['alternating']:8d} alternating, "
        f"{by_strategy['single']} single-user"
        + (f", {len(failed_rotations)} FAILED" if failed_rotations else "")
    )
    print(
        f"  latency                p50 {percentile(latencies, 50) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.1f} ms, "
        f"max {max(latencies, default=0.0) * 1000:.1f} ms"
    )
    print(
        f"  refused logins         {summary.refused_logins:8,d}  recovered by rotating_pool: "
        f"{summary.recovered_logins:,d} connections (from the app's log)"
    )
    print(
        f"  agent stand-in         {summary.agent_requests:8,d}  requests, "
        f"{summary.agent_refreshes:,d} with refreshNow=true, "
        f"{summary.agent_upstream:,d} Secrets Manager reads "
        f"({summary.agent_upstream / max(len(summary.rotations), 1):.2f} per rotation, "
        f"{summary.workers} worker processes behind one agent)"
    )
    print(
        f"  gunicorn               {summary.workers:8d}  workers (--preload), "
        f"{summary.worker_boots} booted"
    )
    print(
        f"  secrets in app log     {summary.leaked_passwords:8d}  "
        f"({summary.passwords_checked - 1} passwords and the agent token looked for)"
    )
    for error, count in load.errors.most_common(10):
        print(f"  error x{count}: {error}")
    for rotation in failed_rotations:
        print(f"  rotation at {rotation.started:.1f} s failed: {rotation.error}")
    users = sorted({user for sample in summary.sessions for user in sample.by_user})
    print(
        f"  database sessions      {len(summary.sessions):8d}  samples of pg_stat_activity "
        f"(users: {', '.join(users) or 'none'})"
    )
    print(f"  chart                  {chart}")
    print("=" * 78)
    if summary.ok:
        print("OK: zero failed requests, every 2xx write is a row, every rotation finished")
    else:
        print("FAILED: see above")


def write_chart(
    path: Path,
    load: LoadResult,
    *,
    rotations: list[Rotation],
    switched_at: float | None,
    seconds: float,
    workers: int,
    sessions: Sequence[SessionSample] = (),
) -> None:
    """Throughput, errors, latency and database sessions per user over time, each
    rotation shaded and numbered."""
    import matplotlib  # noqa: PLC0415  (only needed at the end)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    # Whole seconds only; the few requests that finish after the end (in flight
    # when the load stopped) count in the last second rather than in a
    # misleading almost-empty one.
    buckets = max(1, int(seconds))
    ok = [0] * buckets
    writes = [0] * buckets
    errors = [0] * buckets
    latencies: list[list[float]] = [[] for _ in range(buckets)]
    for sample in load.samples:
        second = min(buckets - 1, int(sample.at))
        (ok if sample.ok else errors)[second] += 1
        writes[second] += sample.ok and sample.write
        latencies[second].append(sample.latency * 1000)
    xs = [second + 0.5 for second in range(buckets)]

    figure, (top, middle, bottom, panel) = plt.subplots(
        4, 1, figsize=(11, 9.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.2, 3, 2.4]}
    )
    top.plot(xs, ok, color="tab:green", marker=".", label="2xx answers / s")
    top.plot(xs, writes, color="tab:olive", linestyle=":", label="of which writes")
    top.set_ylabel("requests / s")
    top.set_ylim(0, max(1, *ok) * 1.25)
    middle.bar(xs, errors, width=0.9, color="tab:red")
    middle.set_ylabel("failed / s")
    middle.set_ylim(0, max(1, *errors) * 1.25)
    if not any(errors):
        middle.text(
            0.5,
            0.5,
            "no failed request",
            transform=middle.transAxes,
            ha="center",
            va="center",
            color="tab:red",
        )
    bottom.plot(
        xs, [percentile(v, 50) for v in latencies], color="tab:blue", marker=".", label="p50"
    )
    bottom.plot(
        xs, [percentile(v, 99) for v in latencies], color="tab:purple", marker=".", label="p99"
    )
    bottom.set_ylabel("latency per second (ms)")
    bottom.set_yscale("log")
    plot_sessions(panel, sessions)
    panel.set_xlabel("seconds since the load started")
    panel.set_xlim(0, buckets)

    colours = {"alternating": "tab:orange", "single": "tab:cyan"}
    for axis in (top, middle, bottom, panel):
        for rotation in rotations:
            colour = "red" if rotation.error else colours.get(rotation.strategy, "grey")
            axis.axvspan(rotation.started, rotation.finished, color=colour, alpha=0.2, lw=0)
            # finishSecret: the moment AWSCURRENT moves.
            axis.axvline(rotation.finished, color=colour, linewidth=1)
        if switched_at is not None:
            axis.axvline(switched_at, color="black", linestyle="--", linewidth=1)
        axis.grid(alpha=0.3)
    for number, rotation in enumerate(rotations, 1):
        top.annotate(
            str(number),
            xy=(rotation.finished, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    handles = [
        *top.get_legend_handles_labels()[0],
        *bottom.get_legend_handles_labels()[0],
        *panel.get_legend_handles_labels()[0],
        Patch(
            color=colours["alternating"],
            alpha=0.4,
            label="alternating-users rotation (line: finishSecret)",
        ),
        Patch(color=colours["single"], alpha=0.4, label="single-user rotation"),
        Line2D(
            [], [], color="black", linestyle="--", linewidth=1, label="re-bootstrap to single user"
        ),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    all_latencies = [s.latency for s in load.samples]
    by_strategy = Counter(r.strategy for r in rotations if r.error is None)
    figure.suptitle(
        f"orders app, gunicorn --preload {workers} workers, credentials through a local "
        "stand-in of the Secrets Manager Agent\n"
        f"{load.requests:,d} requests, {load.failed} failed; rotations: "
        f"{by_strategy['alternating']} alternating, {by_strategy['single']} single-user; "
        f"p50 {percentile(all_latencies, 50) * 1000:.1f} ms, "
        f"p99 {percentile(all_latencies, 99) * 1000:.1f} ms",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_sessions(axis: Any, sessions: Sequence[SessionSample]) -> None:
    """The app's database sessions per user over time, one step line per user."""
    users = sorted({user for sample in sessions for user in sample.by_user})
    times = [sample.at for sample in sessions]
    for user in users:
        axis.step(
            times,
            [sample.by_user.get(user, 0) for sample in sessions],
            where="post",
            label=f"sessions of {user}",
        )
    axis.set_ylabel("database sessions\n(pg_stat_activity)")
    peak = max((sum(sample.by_user.values()) for sample in sessions), default=0)
    axis.set_ylim(0, max(1, peak) * 1.15)
    if not sessions:
        axis.text(0.5, 0.5, "not sampled", transform=axis.transAxes, ha="center", va="center")


def scan_app_log(log_path: Path, passwords: set[str]) -> tuple[int, int, int, int]:
    """(refused logins, recovered connections, worker boots, passwords found) from the app's log."""
    text = log_path.read_text(errors="replace")
    refused = text.count("the database refused user")
    recovered = text.count("refused login(s)")
    boots = text.count("Booting worker with pid")
    leaked = sum(1 for password in passwords if password and password in text)
    return refused, recovered, boots, leaked


# -- the run ----------------------------------------------------------------------------


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run(args: argparse.Namespace) -> int:
    """Set everything up, run the load and the rotations, report; returns the exit code."""
    run_dir = Path(tempfile.mkdtemp(prefix="rotating-pool-fargate-"))
    chart = Path(args.chart).resolve()
    keep_logs = False
    print("starting PostgreSQL and Secrets Manager (moto) ...", flush=True)
    try:
        with LocalPostgres() as postgres, LocalSecretsManager() as secretsmanager:
            client = secretsmanager.client()
            # This process plays AWS: the rotation handler and bootstrap reach the
            # local Secrets Manager through the usual environment variables.
            with _environment(secretsmanager.env()):
                user = set_up_database(postgres, client)
                print(
                    f"bootstrapped database {DBNAME!r}, role {ROLE!r}, secret "
                    f"{SECRET_NAME!r} (alternating users, AWSCURRENT user {user!r})"
                )
                token_path = run_dir / "awssmatoken"
                token_path.mkdir()
                write_token(token_path / "token")
                token = (token_path / "token").read_text().strip()
                # With retirement, the agent's cache must not hide a rotation for
                # longer than the poll interval (the agent's ttl_seconds).
                ttl = {} if args.retire_after is None else {"ttl": poll_interval(args.retire_after)}
                with LocalAgent(client, token=token, port=0, **ttl) as agent:
                    print(
                        f"LOCAL STAND-IN for the AWS Secrets Manager Agent at "
                        f"{agent.endpoint_url} (rotating_pool.local.LocalAgent, TTL "
                        f"{agent.ttl:g} s, token from {token_path / 'token'}); "
                        "not the AWS agent",
                        flush=True,
                    )
                    env = app_environment(agent, token_path / "token", args)
                    app = start_app(env, run_dir, args.workers)
                    try:
                        print(
                            f"app: gunicorn --preload, {args.workers} workers x 4 threads, "
                            f"http://127.0.0.1:{app.port} (log {app.log_path})",
                            flush=True,
                        )
                        summary, switched_at = drive(args, app, client, agent, postgres)
                    finally:
                        stop_app(app)
                    # Every password the secret ever held, and the agent token.
                    passwords = all_passwords(client, postgres) | {token}
                    refused, recovered, boots, leaked = scan_app_log(app.log_path, passwords)
                    summary.refused_logins = refused
                    summary.recovered_logins = recovered
                    summary.worker_boots = boots
                    summary.passwords_checked = len(passwords)
                    summary.leaked_passwords = leaked
        write_chart(
            chart,
            summary.load,
            rotations=summary.rotations,
            switched_at=switched_at,
            seconds=summary.seconds,
            workers=args.workers,
            sessions=summary.sessions,
        )
        print_summary(summary, chart)
        keep_logs = args.keep_logs or not summary.ok
        return 0 if summary.ok else 1
    except BaseException:
        keep_logs = True
        raise
    finally:
        if keep_logs:
            print(f"logs kept in {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def drive(
    args: argparse.Namespace,
    app: App,
    client: SecretsManagerClient,
    agent: LocalAgent,
    postgres: LocalPostgres,
) -> tuple[Summary, float | None]:
    """Load and rotations for `args.seconds`, with live progress; then the figures."""
    seconds = float(args.seconds)
    load = LoadGenerator("127.0.0.1", app.port, threads=args.threads)
    schedule = RotationSchedule(
        client,
        postgres,
        load,
        every=args.every,
        window=args.window,
        start_at=QUIET_SECONDS,
        switch_at=seconds / 2,
        end_at=seconds - QUIET_SECONDS,
    )
    agent.reset_counts()
    print(
        f"\nload: {args.threads} keep-alive clients, half POST /orders, half GET /orders/<id>, "
        f"{seconds:.0f} s; a rotation every {args.every:g} s "
        f"({args.window:g} s between setSecret and finishSecret): alternating users, "
        f"then single user from {seconds / 2:.0f} s\n",
        flush=True,
    )
    sampler = SessionSampler(postgres, load)
    load.start()
    sampler.start()
    schedule.start()
    seen = 0
    try:
        tick = 1.0
        while load.now() < seconds:
            time.sleep(max(0.0, min(tick, seconds) - load.now()))
            window = load.samples_since(seen)
            seen += len(window)
            total, failed = load.totals()
            print(progress_line(load.now(), total, failed, window, schedule.counts()), flush=True)
            tick += 1.0
    finally:
        schedule.stop()
        result = load.stop()
        sessions = sampler.stop()
    rows = count_rows(postgres)
    summary = Summary(
        seconds=seconds,
        load=result,
        rows=rows,
        rotations=list(schedule.rotations),
        recovered_logins=0,
        refused_logins=0,
        agent_requests=agent.requests,
        agent_refreshes=agent.refreshes,
        agent_upstream=agent.upstream_calls,
        worker_boots=0,
        workers=app.workers,
        passwords_checked=0,
        leaked_passwords=0,
        sessions=sessions,
    )
    return summary, schedule.switched_at


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.fargate_sidecar.run_local",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="how long the load runs (default 60)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run for CI: 18 s, a rotation every 2.5 s"
    )
    parser.add_argument(
        "--every", type=float, default=3.0, help="seconds between rotation starts (default 3)"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=1.0,
        help="seconds between setSecret and finishSecret (default 1)",
    )
    parser.add_argument("--threads", type=int, default=8, help="HTTP clients (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--retire-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="run the app with retire_after=SECONDS and no pool_recycle (the agent's TTL "
        "then matches the poll interval): superseded sessions are retired, not recycled",
    )
    parser.add_argument(
        "--chart",
        default=str(DEFAULT_CHART),
        help=f"where to write the PNG chart (default {DEFAULT_CHART})",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the app's and gunicorn's logs (kept anyway on failure)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.every = 18.0, 2.5
    if args.workers < 2:
        parser.error("--workers must be 2 or more: the point is a pre-forked server")
    if args.seconds < 4 * QUIET_SECONDS:
        parser.error(f"--seconds must be at least {4 * QUIET_SECONDS:g}")
    # Only warnings from this process: the rotation handler logs each step at
    # INFO, which would drown the progress lines.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("rotating_pool", "rotating_pool.rotation"):
        # lambda_handler sets its logger to INFO when it is unset, as Lambda needs.
        logging.getLogger(name).setLevel(logging.WARNING)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
