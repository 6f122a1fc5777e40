"""moto's Secrets Manager over HTTP, in a child process, patched to behave like AWS.

>>> with LocalSecretsManager() as sm:  # doctest: +SKIP
...     sm.client().create_secret(Name="demo", SecretString="{}")["Name"]
'demo'
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from rotating_pool.testing._process import (
    POLL_INTERVAL,
    START_TIMEOUT,
    LocalService,
    end_process,
    free_port,
    log_tail,
)

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["LocalSecretsManager"]

logger = logging.getLogger("rotating_pool.testing")

REGION = "us-east-1"
# moto accepts any credentials; boto3 needs some to sign requests.
DUMMY_KEY = "testing"
_STOP_TIMEOUT = 10.0


class LocalSecretsManager(LocalService):
    """moto's Secrets Manager served over HTTP by a child process on 127.0.0.1.

    The same server answers moto's RDS API (`rds_client`, ``AWS_ENDPOINT_URL_RDS``
    in `env`): ``CreateDBInstance`` / ``CreateDBCluster`` give fake
    ``*.rds.amazonaws.com`` endpoints (never resolve them), and
    ``ManageMasterUserPassword=True`` makes the master secret with its
    ``aws:rds:primaryDBInstanceArn`` tag. Unlike AWS, moto 5.2 also lets a user
    put ``aws:``-prefixed tags on a secret, so tests can tag a secret as RDS would.

    The child (`rotating_pool.testing._moto_main`) patches moto where it departs
    from AWS: moving AWSCURRENT changes what GetSecretValue returns;
    RotateSecret with a `rotating-pool-local*` Lambda ARN stages the rotation
    and invokes nothing; PutSecretValue refuses to change an existing version.

    Args:
        port: the TCP port; by default a free one, chosen at `start()`.
    """

    def __init__(self, *, port: int | None = None) -> None:
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: Path | None = None

    @property
    def endpoint_url(self) -> str:
        """The URL to give boto3 as `endpoint_url`."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The child's log file (stdout and stderr)."""
        if self._directory is None:
            raise RuntimeError("LocalSecretsManager has no log yet: call start() first")
        return self._directory / "moto.log"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and AWS SDKs) at this server."""
        return {
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.endpoint_url,
            "AWS_ENDPOINT_URL_RDS": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": DUMMY_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
        }

    def client(
        self, endpoint_url: str | None = None, *, config: Config | None = None
    ) -> SecretsManagerClient:
        """Make a boto3 `secretsmanager` client for this server (or for `endpoint_url`).

        Pass a proxy's `endpoint_url` to go through a `FaultProxy`.
        """
        # A session of its own: boto3's default session is not thread-safe.
        return boto3.session.Session().client(
            "secretsmanager",
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=DUMMY_KEY,
            aws_secret_access_key=DUMMY_KEY,
            config=config,
        )

    def rds_client(self, endpoint_url: str | None = None) -> RDSClient:
        """Make a boto3 `rds` client for this server (moto's RDS API), or for `endpoint_url`."""
        return boto3.session.Session().client(
            "rds",
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=DUMMY_KEY,
            aws_secret_access_key=DUMMY_KEY,
        )

    def start(self) -> LocalSecretsManager:
        """Launch the child process and wait until it answers Secrets Manager calls."""
        if self._process is not None:
            raise RuntimeError("LocalSecretsManager is already started")
        started = time.monotonic()
        try:
            self._launch()
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        logger.info(
            "moto Secrets Manager started at %s in %.2f s",
            self.endpoint_url,
            time.monotonic() - started,
        )
        return self

    def stop(self) -> None:
        """Stop the child process and remove its log."""
        process, self._process = self._process, None
        if process is not None:
            end_process(process, signal.SIGTERM, _STOP_TIMEOUT)
            logger.info("moto Secrets Manager at port %s stopped", self._port)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def _launch(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="rotating-pool-moto-"))
        if self._port is None:
            self._port = free_port(self.host)
        # The child must import this package even when it is not installed.
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            path for path in (package_root, env.get("PYTHONPATH")) if path
        )
        command = [
            sys.executable,
            "-m",
            "rotating_pool.testing._moto_main",
            "--host",
            self.host,
            "--port",
            str(self._port),
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        probe = self.client(
            config=Config(connect_timeout=1, read_timeout=10, retries={"total_max_attempts": 1})
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(
                    f"moto exited with code {code} while starting; "
                    f"end of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                probe.list_secrets()
                return
            except BotoCoreError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto did not answer at {self.endpoint_url} within "
                        f"{START_TIMEOUT:.0f} s (last error: {exc}); "
                        f"end of {self.log_path}:\n{log_tail(self.log_path)}"
                    ) from None
            time.sleep(POLL_INTERVAL)
