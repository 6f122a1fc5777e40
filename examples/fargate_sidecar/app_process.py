"""The app (app.py) under gunicorn with the image's config, as a child process."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from examples.fargate_sidecar.scene import SECRET_NAME
from rotating_pool.testing import LocalAgent, free_port, log_tail

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
APP_START_TIMEOUT = 60.0
APP_STOP_TIMEOUT = 30.0
# Settings of this process the app does not get: its own agent endpoint is set
# below, and SSL_ROOT_CERT is the rotation function's (this process plays it).
NOT_INHERITED = ("ROTATING_POOL_AGENT_ENDPOINT", "SSL_ROOT_CERT")


@dataclass
class App:
    """The gunicorn process serving app.py."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workers: int


def app_environment(
    agent: LocalAgent, token_path: Path, args: argparse.Namespace, *, database_url: str
) -> dict[str, str]:
    """The app's environment: as in the task definition, and nothing of AWS but the token.

    AWS_* settings of this process (the local Secrets Manager's endpoint and keys)
    are left out, so the app cannot reach Secrets Manager itself: every read
    goes through the agent.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AWS_") and name not in NOT_INHERITED
    }
    env.update(
        {
            "DB_SECRET_ID": SECRET_NAME,
            "DATABASE_URL": database_url,
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

