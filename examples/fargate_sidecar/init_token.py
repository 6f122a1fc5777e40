"""Write the Secrets Manager Agent's SSRF token: a random value in a file both containers read.

The agent refuses every request that lacks the header
``X-Aws-Parameters-Secrets-Token`` with the right value, and reads that value
once, at start-up, from the first of ``AWS_TOKEN``, ``AWS_SESSION_TOKEN`` and
``AWS_CONTAINER_AUTHORIZATION_TOKEN`` that is set; ``AWS_TOKEN`` may name a file
(``file:///path``). On Fargate none of the last two is set for an ECS task (its
credentials come from the container credentials endpoint), so the task gives
both containers ``AWS_TOKEN=file:///var/run/awssmatoken/token`` and this script,
run by a short-lived init container before either starts, writes a fresh random
token there. The token never leaves the task: it is not in the task definition,
in an environment variable, or in any log.

Run as root in the init container::

    python init_token.py /var/run/awssmatoken/token --group 10001

The file is made readable by its group only (mode 0440); the app (uid 10001) and
the agent (uid 10002) both run with group 10001. Running it again keeps the
token already written: the agent read it at start-up and would refuse any other.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

# 32 random bytes, hex: 256 bits, and only characters that are safe in an
# HTTP header and in a file read with `.strip()`.
TOKEN_BYTES = 32


def write_token(path: Path, *, group: int | None = None) -> bool:
    """Create `path` holding a new random token, unless it exists.

    Args:
        path: the token file; its directory must exist (the shared volume).
        group: the group id to give the file (needs root); None keeps the caller's.

    Returns:
        True when a token was written, False when the file already existed.
    """
    try:
        # O_EXCL: never overwrite a token a running agent already holds.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o440)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(TOKEN_BYTES))
    if group is not None:
        os.chown(path, -1, group)
    # The umask may have taken bits away from 0440; set it exactly.
    os.chmod(path, 0o440)
    return True


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints what it did, never the token."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="the token file to create")
    parser.add_argument("--group", type=int, help="group id that may read the file")
    args = parser.parse_args(argv)
    written = write_token(args.path, group=args.group)
    print(f"{'wrote a new' if written else 'kept the existing'} agent token in {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
