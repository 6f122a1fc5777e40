"""Run the LOCAL STAND-IN for the Secrets Manager Agent as a process: ``python -m
rotating_pool.testing._agent_main --port 2773`` (see `rotating_pool.testing.agent.LocalAgent`).

Configured as the agent is: the token from ``AWS_TOKEN`` (a value or
``file:///path``) or ``AWS_SESSION_TOKEN``; Secrets Manager through boto3's
default chain (``AWS_ENDPOINT_URL_SECRETS_MANAGER``, region, credentials).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading

from rotating_pool.agent_token import resolve_token
from rotating_pool.errors import ConfigurationError
from rotating_pool.testing.agent import DEFAULT_PORT, DEFAULT_TTL, LocalAgent


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in until SIGTERM or Ctrl-C: the sidecar of the local demo."""
    parser = argparse.ArgumentParser(
        prog="python -m rotating_pool.testing._agent_main",
        description="A LOCAL STAND-IN for the AWS Secrets Manager Agent (not the agent). "
        "Reads Secrets Manager through boto3's default chain "
        "(AWS_ENDPOINT_URL_SECRETS_MANAGER). The token comes from AWS_TOKEN (a value or "
        "file:///path) or AWS_SESSION_TOKEN, as for the agent.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--ttl", type=float, default=DEFAULT_TTL, help="cache TTL in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        # As the client finds it: stripped, checked, a regular file only.
        token = resolve_token(None, endpoint=f"http://{args.host}:{args.port}").value
    except ConfigurationError as error:
        parser.error(str(error))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with (
        LocalAgent(token=token, ttl=args.ttl, host=args.host, port=args.port),
        contextlib.suppress(KeyboardInterrupt),
    ):
        stopped.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
