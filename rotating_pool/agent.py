"""A secret read through the AWS Secrets Manager Agent (a sidecar) or Lambda's extension.

On ECS Fargate, EKS and EC2 the Secrets Manager Agent, and on Lambda the
"Parameters and Secrets" extension, cache secrets for the processes beside
them and serve them on ``localhost:2773``::

    GET /secretsmanager/get?secretId=ID[&versionStage=S|&versionId=V][&refreshNow=true]
    X-Aws-Parameters-Secrets-Token: <the token the agent was started with>

and answer with GetSecretValue's JSON. `AgentSource` reads the secret that way
instead of calling Secrets Manager itself, so the process needs no IAM
permission of its own and a fleet of processes costs Secrets Manager one read
per agent per TTL:

- `load()` and `poll()`, the first read and the steady-state refresh, take
  what the agent's cache holds (its TTL, 300 s by default);
- `newer()`, the refused-login path, asks the agent's cache first (another
  process behind the same agent may have refreshed it already) and only then
  adds ``refreshNow=true``, so that the agent reads Secrets Manager at once: a
  rotated password must not be answered from the agent's cache for up to five
  minutes.

The agent does not coalesce requests that miss its cache at the same moment:
each makes its own Secrets Manager read. So the worker processes of one task
(gunicorn, uvicorn workers) take turns: a file lock in the temporary directory
(`fcntl.flock`, one file per agent and secret) is held across a first read and
across a refused login's reads. The first worker's reads fill the agent's
cache; the next one finds the fresh value there and costs Secrets Manager
nothing.

>>> source = AgentSource("prod/app/db")  # nothing is read, not even the token
>>> engine = rotating_pool.create_engine(  # doctest: +SKIP
...     "postgresql+psycopg://", secret_id="prod/app/db", source="agent")
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

try:
    import fcntl
except ImportError:  # not on Windows: reads there are not coordinated across processes
    fcntl = None  # type: ignore[assignment]

from rotating_pool.errors import (
    ConfigurationError,
    SecretAccessDeniedError,
    SecretNotFoundError,
    SecretsManagerUnavailableError,
)
from rotating_pool.secret import AWSCURRENT, AWSPENDING, Credentials, parse_credentials
from rotating_pool.sources import ACCESS_DENIED_CODES

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "TOKEN_ENV_VARS",
    "TOKEN_HEADER",
    "AgentSource",
]

logger = logging.getLogger("rotating_pool")

DEFAULT_ENDPOINT = "http://localhost:2773"
"""Where the agent and the Lambda extension listen unless configured otherwise."""

ENDPOINT_ENV = "ROTATING_POOL_AGENT_ENDPOINT"
"""Environment variable that overrides `DEFAULT_ENDPOINT` (e.g. ``http://127.0.0.1:2775``)."""

TOKEN_ENV_VARS = ("AWS_TOKEN", "AWS_SESSION_TOKEN")
"""Where the token is looked for, in order: the variables the agent itself reads."""

TOKEN_HEADER = "X-Aws-Parameters-Secrets-Token"  # noqa: S105  (a header name)
"""The request header that carries the token (the agent's SSRF protection)."""

_FILE_PREFIX = "file://"
# Secrets are at most 64 KiB; an answer much larger than that is not the agent's.
_MAX_ANSWER_BYTES = 1 << 20
# Enough of an error answer to say what it was; AWS's messages name the secret,
# never its value, and the agent's own are short fixed texts.
_MAX_DETAIL_CHARS = 200

_NOT_FOUND = "ResourceNotFoundException"
# How long a worker waits for another's turn (a multiple of the agent timeout:
# a refused login asks the agent up to four times), and how often it looks.
_TURN_WAITS = 5
_TURN_POLL = (0.002, 0.02)


class _Token(NamedTuple):
    value: str
    origin: str  # where it came from, for messages: never the value itself


class _Answer(NamedTuple):
    status: int
    body: bytes


class AgentSource:
    """A secret read through the Secrets Manager Agent's HTTP protocol on localhost.

    Works with the Secrets Manager Agent sidecar and Lambda's "Parameters and
    Secrets" extension. Nothing is read at construction, the token included (a
    sidecar may write its token file after the application starts): the first
    connection reads both, and a problem surfaces there as a typed error.

    Args:
        secret_id: the secret's name or ARN.
        endpoint: the agent's base URL. Default: ``$ROTATING_POOL_AGENT_ENDPOINT``,
            else ``http://localhost:2773``.
        token: the token the agent expects. Default: ``$AWS_TOKEN`` (the token,
            or ``file:///path`` to a file holding it), else ``$AWS_SESSION_TOKEN``,
            as the agent itself resolves it. A token from a file is read again
            when the agent refuses it, since a restarted sidecar may have
            written a new one.
        timeout: seconds allowed for connecting to the agent and for its answer.
        lock_dir: where the processes behind one agent take turns (a lock file
            per agent and secret, see the module docstring): True (default) the
            temporary directory, a path another directory the processes share,
            False not at all. A worker waits for another's turn at most five
            times `timeout`, then reads anyway.

    Raises:
        ConfigurationError: an argument (or ``$ROTATING_POOL_AGENT_ENDPOINT``) is invalid.

    >>> AgentSource("prod/app/db", endpoint="http://127.0.0.1:2775")
    AgentSource(secret_id='prod/app/db', endpoint='http://127.0.0.1:2775')
    """

    def __init__(
        self,
        secret_id: str,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        timeout: float = 2.0,
        lock_dir: bool | str | os.PathLike[str] = True,
    ) -> None:
        if not isinstance(secret_id, str) or not secret_id.strip():
            raise ConfigurationError(
                "secret_id must be the secret's name or ARN (a non-empty string)"
            )
        if token is not None and (not isinstance(token, str) or not token):
            raise ConfigurationError("token must be a non-empty string (or None for AWS_TOKEN)")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, not {timeout!r}"
            )
        if not isinstance(lock_dir, bool | str | os.PathLike):
            raise ConfigurationError(
                f"lock_dir must be True, False or a directory, not {type(lock_dir).__name__}"
            )
        if endpoint is None:
            endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
        self._secret_id = secret_id
        self._endpoint = endpoint.rstrip("/")
        self._lock_path = _lock_path(lock_dir, self._endpoint, secret_id)
        self._host, self._port = _parse_endpoint(self._endpoint)
        self._given_token = token
        self._timeout = float(timeout)
        self._token: _Token | None = None
        self._lock = threading.Lock()

    @property
    def secret_id(self) -> str:
        """The secret's id or ARN."""
        return self._secret_id

    @property
    def endpoint(self) -> str:
        """The agent's base URL."""
        return self._endpoint

    def __repr__(self) -> str:
        return f"AgentSource(secret_id={self._secret_id!r}, endpoint={self._endpoint!r})"

    def fetch(self, stage: str, *, refresh: bool = True) -> Credentials | None:
        """Read one stage; None when no version has it (only for a stage other
        than AWSCURRENT).

        With `refresh` (``refreshNow=true``) the agent reads Secrets Manager at
        once and keeps the fresh value for every process behind it; without,
        it answers from its cache. AWSCURRENT is asked without ``versionStage``,
        the query every process's cached reads use, so a refreshed value
        replaces what they are all served.
        """
        query = {"refreshNow": "true"} if refresh else {}
        if stage != AWSCURRENT:
            query["versionStage"] = stage
        what = f"{'refreshNow' if refresh else 'cached'} read of {stage}"
        return self._read(query, stage, what)

    def load(self) -> Credentials:
        """The first read: through the agent's cache, which a whole fleet of
        processes behind one agent shares; see `SecretSource.load`."""
        with self._turn():
            credentials = self.fetch(AWSCURRENT, refresh=False)
        assert credentials is not None  # only a stage other than AWSCURRENT may be missing
        return credentials

    def poll(self, held: Credentials) -> Credentials | None:
        """AWSCURRENT as the agent's cache holds it, if not `held`; see `SecretSource.poll`.

        Free for Secrets Manager: the agent refreshes its cache on its own TTL.
        """
        cached = self.load()
        return None if cached == held else cached

    def newer(
        self, rejected: Credentials, refused: Sequence[str | None], *, use_pending: bool
    ) -> Credentials | None:
        """Other credentials after a refusal; see `SecretSource.newer`.

        The agent's cache first, AWSCURRENT then AWSPENDING: another process
        behind the agent may have refreshed them already, and then this costs
        Secrets Manager nothing. Then ``refreshNow`` reads, whose answers the
        agent keeps for every process behind it: AWSPENDING first, since a
        refusal comes from setSecret on, while AWSPENDING names the password
        the database has (single user, and the user an alternating rotation is
        changing), then AWSCURRENT (a rotation already finished). The
        processes behind the agent take turns (see the module docstring).
        """
        asks = [(AWSCURRENT, False), (AWSPENDING, False), (AWSPENDING, True), (AWSCURRENT, True)]
        pending_checked = not use_pending
        with self._turn():
            for stage, refresh in asks:
                if stage == AWSPENDING and pending_checked:
                    continue
                credentials = self.fetch(stage, refresh=refresh)
                if credentials is None:
                    # The agent caches no error: "no such version" came from
                    # Secrets Manager just now, and asking again would cost a read.
                    pending_checked = True
                elif credentials != rejected and credentials.version_id not in refused:
                    return credentials
        return None

    def after_fork(self) -> None:
        """Replace the lock (a thread of the parent may have held it); nothing else
        crosses a fork: every read opens its own connection."""
        self._lock = threading.Lock()

    # -- taking turns ----------------------------------------------------------

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """Hold the lock file shared by the processes behind this agent for this
        secret; after waiting five agent timeouts for it, go on without."""
        if self._lock_path is None:
            yield
            return
        try:
            fd = _open_turn(self._lock_path)
        except OSError as error:
            logger.debug(
                "secret %r: no turn-taking with other processes (%s: %s)",
                self._secret_id,
                self._lock_path,
                error.strerror,
            )
            yield
            return
        try:
            if not _lock(fd, self._timeout * _TURN_WAITS):
                logger.warning(
                    "secret %r: another process held %s longer than %g s; reading the agent "
                    "without waiting for it",
                    self._secret_id,
                    self._lock_path,
                    self._timeout * _TURN_WAITS,
                )
            yield
        finally:
            _close_turn(fd)  # releases the lock

    # -- one read ------------------------------------------------------------

    def _read(self, query: dict[str, str], stage: str, what: str) -> Credentials | None:
        path = "/secretsmanager/get?" + urllib.parse.urlencode(
            {"secretId": self._secret_id, **query}
        )
        token = self._current_token()
        answer = self._get(path, token, what)
        if answer.status in (401, 403):
            # The token may have changed under us (a restarted sidecar writes a
            # new token file): read it again, and try once more if it did.
            newer = self._reread_token(token)
            if newer is not None:
                token = newer
                answer = self._get(path, token, what)
        if answer.status == 200:
            return self._credentials(answer.body, stage, what)
        error_type = _error_type(answer.body)
        if stage != AWSCURRENT and error_type == _NOT_FOUND:
            return None  # no version has that label (no rotation in progress)
        raise self._translate(answer, error_type, token, what)

    def _get(self, path: str, token: _Token, what: str) -> _Answer:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            connection.request("GET", path, headers={TOKEN_HEADER: token.value})
            response = connection.getresponse()
            body = response.read(_MAX_ANSWER_BYTES)
        except ConnectionRefusedError:
            raise self._unavailable(
                f"no Secrets Manager Agent listening on {self._endpoint} (connection refused, "
                f"{what}): start the agent (a sidecar container, or Lambda's Parameters and "
                f"Secrets extension) or point {ENDPOINT_ENV} at it"
            ) from None
        except TimeoutError:
            raise self._unavailable(
                f"the Secrets Manager Agent at {self._endpoint} did not answer within "
                f"{self._timeout:g} s ({what})"
            ) from None
        except (OSError, http.client.HTTPException) as error:
            # Not chained: an http.client error may quote what the server sent.
            detail = error.strerror if isinstance(error, OSError) and error.strerror else None
            raise self._unavailable(
                f"the Secrets Manager Agent at {self._endpoint} could not be read ({what}): "
                f"{type(error).__name__}" + (f" ({detail})" if detail else "")
            ) from None
        finally:
            connection.close()
        logger.debug(
            "secret %r: %s through the agent at %s: HTTP %d",
            self._secret_id,
            what,
            self._endpoint,
            response.status,
        )
        return _Answer(response.status, body)

    def _credentials(self, body: bytes, stage: str, what: str) -> Credentials:
        try:
            document = json.loads(body)
        except ValueError:
            document = None  # the body may hold the secret: never quoted, never chained
        if not isinstance(document, dict):
            raise self._unavailable(
                f"the Secrets Manager Agent at {self._endpoint} answered HTTP 200 ({what}) "
                "with something that is not GetSecretValue's JSON: is it the agent?"
            )
        version_id = document.get("VersionId")
        return parse_credentials(
            self._secret_id,
            document.get("SecretString"),
            version_id=version_id if isinstance(version_id, str) else None,
            stage=stage,
        )

    # -- the token -----------------------------------------------------------

    def _current_token(self) -> _Token:
        token = self._token
        if token is None:
            with self._lock:
                if self._token is None:
                    self._token = self._resolve_token()
                token = self._token
        return token

    def _reread_token(self, refused: _Token) -> _Token | None:
        """A token different from `refused`, or None when there is no other."""
        if self._given_token is not None:
            return None  # the application's own; nothing to re-read
        with self._lock:
            if self._token is not None and self._token.value != refused.value:
                return self._token  # another thread re-read it already
            try:
                token = self._resolve_token()
            except ConfigurationError:
                return None  # the refusal is the clearer error
            self._token = token
        if token.value == refused.value:
            return None
        logger.info(
            "secret %r: the agent refused the token; %s now holds another one",
            self._secret_id,
            token.origin,
        )
        return token

    def _resolve_token(self) -> _Token:
        if self._given_token is not None:
            return _Token(self._given_token, "the token argument")
        for name in TOKEN_ENV_VARS:
            value = os.environ.get(name)
            if not value:
                continue
            if not value.startswith(_FILE_PREFIX):
                return _Token(value, f"${name}")
            path = value[len(_FILE_PREFIX) :]
            try:
                text = Path(path).read_text().strip()
            except OSError as error:
                raise ConfigurationError(
                    f"${name} names the token file {path!r}, which cannot be read "
                    f"({error.strerror or type(error).__name__}): the agent writes it at start-up "
                    "(check the shared volume and that the agent started first)"
                ) from None
            if not text:
                raise ConfigurationError(
                    f"the token file {path!r} named by ${name} is empty: the agent may still "
                    "be starting"
                )
            return _Token(text, f"${name} (file {path})")
        raise ConfigurationError(
            f"no token for the Secrets Manager Agent at {self._endpoint}: set AWS_TOKEN (the "
            "token, or file:///path/to/token-file) or AWS_SESSION_TOKEN, as for the agent "
            "itself, or pass token= to AgentSource"
        )

    # -- errors --------------------------------------------------------------

    def _translate(
        self, answer: _Answer, error_type: str | None, token: _Token, what: str
    ) -> Exception:
        secret_id = self._secret_id
        status = answer.status
        detail = _error_detail(answer.body, token.value)
        said = f"HTTP {status}" + (f" {detail}" if detail else "")
        where = f"the Secrets Manager Agent at {self._endpoint}"
        if error_type == _NOT_FOUND or (status == 404 and error_type is None):
            return SecretNotFoundError(
                f"{where} found no secret {secret_id!r} ({what}: {said}): check the id or ARN "
                "and the agent's region" + ("" if error_type else f", and that {where} is one"),
                secret_id=secret_id,
            )
        if error_type == "InvalidRequestException":
            return SecretNotFoundError(
                f"secret {secret_id!r} cannot be read ({what}: {said})", secret_id=secret_id
            )
        if error_type in ACCESS_DENIED_CODES:
            return SecretAccessDeniedError(
                f"{where} may not read secret {secret_id!r} ({what}: {said}): grant "
                "secretsmanager:GetSecretValue and secretsmanager:DescribeSecret on it (and "
                "kms:Decrypt on its key) to the agent's AWS identity (the task role)",
                secret_id=secret_id,
            )
        if status in (401, 403):
            return SecretAccessDeniedError(
                f"{where} refused the token from {token.origin} ({what}: {said}): the "
                "application and the agent must share one token (AWS_TOKEN, often "
                "file:///var/run/awssmatoken on a volume both mount)",
                secret_id=secret_id,
            )
        return self._unavailable(f"{where} could not read secret {secret_id!r} ({what}: {said})")

    def _unavailable(self, message: str) -> SecretsManagerUnavailableError:
        return SecretsManagerUnavailableError(message, secret_id=self._secret_id)


def _lock_path(
    lock_dir: bool | str | os.PathLike[str], endpoint: str, secret_id: str
) -> str | None:
    """The lock file the processes behind one agent share for one secret."""
    if lock_dir is False or fcntl is None:
        return None
    directory = tempfile.gettempdir() if lock_dir is True else os.fspath(lock_dir)
    # A digest: the secret id may hold characters a file name cannot.
    digest = hashlib.sha256(f"{endpoint}\0{secret_id}".encode()).hexdigest()[:24]
    return os.path.join(directory, f"rotating_pool-agent-{digest}.lock")


# The lock files this process has open, so that a child forked meanwhile (a
# pre-forking server's new worker) closes its copies: a flock belongs to the
# open file, which the child shares, and the child never runs the code that
# would close it, so it would hold the turn for its whole life.
_turns_open: set[int] = set()
_turns_lock = threading.Lock()


def _open_turn(path: str) -> int:
    # Opened and noted under the lock that fork() takes first (below): a
    # child never gets a lock file's descriptor that is not in the set.
    with _turns_lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        _turns_open.add(fd)
    return fd


def _close_turn(fd: int) -> None:
    with _turns_lock:
        _turns_open.discard(fd)
        os.close(fd)


def _close_turns_in_child() -> None:
    for fd in _turns_open:
        with contextlib.suppress(OSError):
            os.close(fd)
    _turns_open.clear()
    _turns_lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_turns_lock.acquire,
        after_in_parent=_turns_lock.release,
        after_in_child=_close_turns_in_child,
    )


def _lock(fd: int, patience: float) -> bool:
    """Take an exclusive `flock` on `fd`, waiting at most `patience` seconds.

    flock has no timed wait: it is tried without blocking, at short intervals.
    """
    assert fcntl is not None
    give_up = time.monotonic() + patience
    pause = _TURN_POLL[0]
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= give_up:
                return False
            time.sleep(pause)
            pause = min(pause * 2, _TURN_POLL[1])
        else:
            return True


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    try:
        parts = urllib.parse.urlsplit(endpoint)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or parts.scheme != "http"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.username
    ):
        raise ConfigurationError(
            f"the agent endpoint must be a URL like {DEFAULT_ENDPOINT} (http, a host and a "
            f"port, no path), not {endpoint!r} (from the endpoint argument or {ENDPOINT_ENV})"
        )
    return parts.hostname, port or 80


def _error_document(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _error_type(body: bytes) -> str | None:
    """The AWS error code of an error answer (``__type``), without its namespace."""
    document = _error_document(body)
    error_type = document.get("__type") if document else None
    if not isinstance(error_type, str) or not error_type:
        return None
    return error_type.rpartition("#")[2]


def _error_detail(body: bytes, token: str) -> str:
    """A short, printable account of an error answer, with the token cut out."""
    document = _error_document(body)
    if document is not None:
        parts = [
            str(document[key])
            for key in ("__type", "message", "Message")
            if isinstance(document.get(key), str) and document[key]
        ]
        text = ": ".join(parts)
    else:
        text = body.decode("utf-8", errors="replace").strip()
    text = " ".join(text.split())[:_MAX_DETAIL_CHARS]
    if token:
        text = text.replace(token, "***")
    return f"({text})" if text else ""
