"""The token the Secrets Manager Agent expects, found as the agent itself finds it.

From the ``token`` argument, else ``$AWS_TOKEN`` (the token, or
``file:///path`` to a file holding it), else ``$AWS_SESSION_TOKEN``. Neither a
variable nor a file is trusted to be tidy or harmless:

- surrounding whitespace is stripped (``echo`` and Kubernetes/ECS secret files
  often end in a newline), as the agent strips its token file;
- any other control or non-ASCII character is a `ConfigurationError` that does
  not contain the token (http.client would refuse the header with the whole
  value in its message);
- a ``file://`` path is read only when it names a regular file (symlinks to
  one are followed, as secret volumes use them): a FIFO, a device or a directory
  is refused without being read, so nothing blocks, and the file is read up to
  `MAX_TOKEN_BYTES`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import NamedTuple

from rotating_pool.errors import ConfigurationError

__all__ = ["MAX_TOKEN_BYTES", "TOKEN_ENV_VARS", "AgentToken", "check_token", "resolve_token"]

TOKEN_ENV_VARS = ("AWS_TOKEN", "AWS_SESSION_TOKEN")
"""Where the token is looked for, in order: the variables the agent itself reads."""

MAX_TOKEN_BYTES = 16 * 1024
"""The largest token file read (the agent's tokens are tens of characters; an
STS session token is under 2 KB)."""

_FILE_PREFIX = "file://"
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)


class AgentToken(NamedTuple):
    """A token and where it came from.

    Attributes:
        value: the token (never printed: `origin` is what messages name).
        origin: ``the token argument``, ``$AWS_TOKEN``, ``$AWS_TOKEN (file /path)``...
    """

    value: str
    origin: str

    def __repr__(self) -> str:
        return f"AgentToken(origin={self.origin!r})"


def resolve_token(
    given: str | None, *, endpoint: str, environ: Mapping[str, str] = os.environ
) -> AgentToken:
    """The token to send, from `given` or the environment (see the module docstring).

    Raises:
        ConfigurationError: no token, an unusable token file, or a token with
            a control or non-ASCII character; the message names where it came
            from, never the token.
    """
    if given is not None:
        return check_token(given, "the token argument")
    for name in TOKEN_ENV_VARS:
        value = environ.get(name, "").strip()
        if not value:
            continue
        if not value.startswith(_FILE_PREFIX):
            return check_token(value, f"${name}")
        path = value[len(_FILE_PREFIX) :]
        return check_token(_read_token_file(path, name), f"${name} (file {path})")
    raise ConfigurationError(
        f"no token for the Secrets Manager Agent at {endpoint}: set AWS_TOKEN (the "
        "token, or file:///path/to/token-file) or AWS_SESSION_TOKEN, as for the agent "
        "itself, or pass token= to AgentSource"
    )


def check_token(value: str, origin: str) -> AgentToken:
    """`value` stripped of surrounding whitespace, as an `AgentToken` from `origin`.

    Raises:
        ConfigurationError: empty, or holding a control or non-ASCII character
            (the message says where, never what).
    """
    token = value.strip()
    if not token:
        raise ConfigurationError(
            f"the Secrets Manager Agent token from {origin} is empty"
            + (": the agent may still be starting" if "file" in origin else "")
        )
    for position, char in enumerate(token):
        if not " " <= char <= "~":
            code = ord(char)
            control = code < 0x20 or 0x7F <= code < 0xA0
            what = "a control character" if control else "a non-ASCII character"
            raise ConfigurationError(
                f"the Secrets Manager Agent token from {origin} holds {what} (at position "
                f"{position + 1} of {len(token)}), which an HTTP header cannot carry: write "
                "the token alone, as the agent wrote it"
            )
    return AgentToken(token, origin)


def _read_token_file(path: str, variable: str) -> str:
    def refuse(problem: str) -> ConfigurationError:
        return ConfigurationError(
            f"${variable} names the token file {path!r}, which {problem}: the agent writes it "
            "at start-up (check the shared volume and that the agent started first)"
        )

    try:
        # stat before open: opening a FIFO or a device may block or act.
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(f"is not a regular file ({_kind(mode)})")
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        raise refuse(f"cannot be read ({error.strerror or type(error).__name__})") from None
    try:
        info = os.fstat(fd)  # what was opened, should the name have moved meanwhile
        if not stat.S_ISREG(info.st_mode):
            raise refuse(f"is not a regular file ({_kind(info.st_mode)})")
        if info.st_size > MAX_TOKEN_BYTES:
            raise refuse(f"is larger than {MAX_TOKEN_BYTES} bytes")
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    except OSError as error:
        raise refuse(f"cannot be read ({error.strerror or type(error).__name__})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_BYTES:
        raise refuse(f"is larger than {MAX_TOKEN_BYTES} bytes")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise refuse("holds a non-ASCII byte (is it the agent's token file?)") from None


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"
