"""Play the whole Fargate task on this machine: rotations under HTTP load, zero failed requests.

One command starts what the task and AWS provide, then loads the app and
rotates its secret on a schedule::

    python -m examples.fargate_sidecar.run_local [--seconds 60] [--quick] [--no-tls]

- PostgreSQL (`LocalPostgres`), the database, serving TLS only; roles and
  secret made by `rotating_pool.rotation.bootstrap`, as on a real deployment
  (scene.py). Every login takes the production path, verify-full against the
  bed's CA: the app's, bootstrap's and the rotation function's. ``--no-tls``
  runs the plaintext variant (secrets with ``"ssl": false``; the rotation
  function then warns at each login that TLS is off).
- Secrets Manager (`LocalSecretsManager`: moto over HTTP, with AWS behaviour
  restored where moto departs from it).
- The Secrets Manager Agent sidecar: `rotating_pool.testing.LocalAgent`, a LOCAL
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

This module holds the command line and the run's order of events; each part
is its own module beside it: scene.py (names, set-up, what is read back),
load.py (the load generator), sessions.py (sessions per user from
pg_stat_activity), schedule.py (the rotations), app_process.py (gunicorn),
report.py (progress and summary) and chart.py.

It prints progress once a second, a summary at the end, and writes a chart
(PNG) of throughput, errors and latency with each rotation marked. Exit code 1
if any request failed, if rows in the table differ from 2xx write answers, if a
rotation failed, or if a password appears in the app's log.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from examples.fargate_sidecar.app_process import App, app_environment, start_app, stop_app
from examples.fargate_sidecar.chart import write_chart
from examples.fargate_sidecar.init_token import write_token
from examples.fargate_sidecar.load import LoadGenerator
from examples.fargate_sidecar.report import Summary, print_summary, progress_line, scan_app_log
from examples.fargate_sidecar.scene import (
    DBNAME,
    ROLE,
    SECRET_NAME,
    all_passwords,
    count_rows,
    database_url,
    rotation_environment,
    set_up_database,
)
from examples.fargate_sidecar.schedule import RotationSchedule
from examples.fargate_sidecar.sessions import SessionSampler
from rotating_pool.retire import poll_interval
from rotating_pool.testing import LocalAgent, LocalPostgres, LocalSecretsManager

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

HERE = Path(__file__).resolve().parent
DEFAULT_CHART = HERE / "results" / "run.png"

# Load runs this long before the first rotation and after the last one.
QUIET_SECONDS = 2.0


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


def describe_tls(postgres: LocalPostgres) -> str:
    """One line on how every login to the server is protected."""
    if postgres.tls:
        return (
            f"PostgreSQL on 127.0.0.1:{postgres.port} serves TLS only; the app, bootstrap and "
            f"the rotation function verify it (verify-full) against the bed's CA {postgres.ca_path}"
        )
    return (
        f"PostgreSQL on 127.0.0.1:{postgres.port} WITHOUT TLS (--no-tls): the secrets say "
        '"ssl": false and the rotation function warns at each login'
    )


def run(args: argparse.Namespace) -> int:
    """Set everything up, run the load and the rotations, report; returns the exit code."""
    run_dir = Path(tempfile.mkdtemp(prefix="rotating-pool-fargate-"))
    chart = Path(args.chart).resolve()
    keep_logs = False
    print("starting PostgreSQL and Secrets Manager (moto) ...", flush=True)
    try:
        with (
            LocalPostgres(tls=not args.no_tls) as postgres,
            LocalSecretsManager() as secretsmanager,
        ):
            client = secretsmanager.client()
            print(describe_tls(postgres), flush=True)
            # This process plays AWS: the rotation handler and bootstrap reach the
            # local Secrets Manager through the usual environment variables, and the
            # handler finds the CA it verifies the server with in SSL_ROOT_CERT.
            with _environment({**secretsmanager.env(), **rotation_environment(postgres)}):
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
                ttl: dict[str, Any] = {}
                if args.retire_after is not None:
                    ttl["ttl"] = poll_interval(args.retire_after)
                with LocalAgent(client, token=token, port=0, **ttl) as agent:
                    print(
                        f"LOCAL STAND-IN for the AWS Secrets Manager Agent at "
                        f"{agent.endpoint_url} (rotating_pool.testing.LocalAgent, TTL "
                        f"{agent.ttl:g} s, token from {token_path / 'token'}); "
                        "not the AWS agent",
                        flush=True,
                    )
                    env = app_environment(
                        agent, token_path / "token", args, database_url=database_url(postgres)
                    )
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
        "--no-tls",
        action="store_true",
        help="run PostgreSQL without TLS and the secrets with \"ssl\": false (the rotation "
        "function then warns that TLS is off); by default every login is verify-full",
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
