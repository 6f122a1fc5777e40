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

Which stage to ask, and when with ``refreshNow``, is decided in
`rotating_pool.reads` (`AGENT_LOAD`, `next_agent_ask`); this module carries it out.

The agent does not coalesce requests that miss its cache at the same moment:
each makes its own Secrets Manager read. So the worker processes of one task
(gunicorn, uvicorn workers) take turns (`rotating_pool.turns`: a file lock in a
directory private to the user) across a first read and across a refused
login's reads. The first worker's reads fill the agent's cache; the next one
finds the fresh value there and costs Secrets Manager nothing.

Nothing local is trusted blindly (docs/guides/agent-trust.md): each call ends
within `timeout` in all, turn and reads together, and the endpoint is loopback
unless the application opts in (`rotating_pool.agent_http`); an answer must be
GetSecretValue's JSON for the secret asked for (`rotating_pool.agent_answers`);
the token is checked (`rotating_pool.agent_token`).

>>> source = AgentSource("prod/app/db")  # nothing is read, not even the token
>>> engine = rotating_pool.create_engine(  # doctest: +SKIP
...     "postgresql+psycopg://", secret_id="prod/app/db", source="agent")
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from rotating_pool.agent_answers import (
    credentials_from,
    error_for,
    not_the_agent,
    says_not_found,
)
from rotating_pool.agent_http import (
    DEFAULT_ENDPOINT,
    ENDPOINT_ENV,
    Endpoint,
    ExchangeFailed,
    Reply,
    get,
    is_loopback,
    parse_endpoint,
)
from rotating_pool.agent_token import TOKEN_ENV_VARS, AgentToken, check_token, resolve_token
from rotating_pool.errors import (
    AgentAnswerError,
    ConfigurationError,
    SecretsManagerUnavailableError,
)
from rotating_pool.reads import AGENT_LOAD, AgentAsk, next_agent_ask
from rotating_pool.secret import AWSCURRENT, Credentials
from rotating_pool.turns import TurnFile

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "TOKEN_ENV_VARS",
    "TOKEN_HEADER",
    "AgentSource",
]

logger = logging.getLogger("rotating_pool")

TOKEN_HEADER = "X-Aws-Parameters-Secrets-Token"  # noqa: S105  (a header name)
"""The request header that carries the token (the agent's SSRF protection)."""

# The share of a call's time a process waits for another's turn; the rest is
# for its own reads should it give up waiting.
_TURN_SHARE = 0.5

_T = TypeVar("_T")


class _TokenRefused(Exception):
    """The agent refused the token (401/403): perhaps a newer one is on disk."""

    def __init__(self, reply: Reply, what: str) -> None:
        super().__init__(what)
        self.reply = reply
        self.what = what


class AgentSource:
    """A secret read through the Secrets Manager Agent's HTTP protocol on localhost.

    Works with the Secrets Manager Agent sidecar and Lambda's "Parameters and
    Secrets" extension. Nothing is read at construction, the token included (a
    sidecar may write its token file after the application starts): the first
    connection reads both, and a problem surfaces there as a typed error.

    Args:
        secret_id: the secret's name or ARN. Every answer must be for it (its
            ``ARN``, or its ``Name`` for a name), else `AgentAnswerError`.
        endpoint: the agent's base URL. Default: ``$ROTATING_POOL_AGENT_ENDPOINT``,
            else ``http://localhost:2773``. Loopback only (127.0.0.0/8, ``::1``,
            ``localhost``) unless `allow_remote_endpoint`.
        token: the token the agent expects. Default: ``$AWS_TOKEN`` (the token,
            or ``file:///path`` to a regular file holding it), else
            ``$AWS_SESSION_TOKEN``, as the agent itself resolves it; stripped of
            surrounding whitespace. A token from a file is read again when the
            agent refuses it, since a restarted sidecar may have written a new one.
        timeout: seconds one call (`load`, `poll`, `newer`, `fetch`) may take in
            all: waiting for another process's turn, connecting and every
            answer. A call that runs out of time stops reading and raises
            `SecretsManagerUnavailableError`.
        lock_dir: where the processes behind one agent take turns (a lock file
            per agent and secret, see `rotating_pool.turns`): True (default) a
            directory private to this user (under ``$XDG_RUNTIME_DIR``, else
            ``rotating_pool-<uid>`` in the temporary directory), a path another
            directory of this user's that no one else may write to, False not
            at all. A process waits for another's turn at most half of
            `timeout`, then reads anyway.
        allow_remote_endpoint: accept an endpoint that is not loopback (logged
            as a warning): the token and the secret then cross a network in clear.

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
        allow_remote_endpoint: bool = False,
    ) -> None:
        if not isinstance(secret_id, str) or not secret_id.strip():
            raise ConfigurationError(
                "secret_id must be the secret's name or ARN (a non-empty string)"
            )
        if token is not None and not isinstance(token, str):
            raise ConfigurationError("token must be a string (or None for AWS_TOKEN)")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, not {timeout!r}"
            )
        if not isinstance(lock_dir, bool | str | os.PathLike):
            raise ConfigurationError(
                f"lock_dir must be True, False or a directory, not {type(lock_dir).__name__}"
            )
        if endpoint is None:
            endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
        self._endpoint: Endpoint = parse_endpoint(
            endpoint, allow_remote=bool(allow_remote_endpoint)
        )
        if allow_remote_endpoint and not is_loopback(self._endpoint.host):
            logger.warning(
                "secret %r: the Secrets Manager Agent endpoint %s is not on this host "
                "(allow_remote_endpoint=True): the token and the secret cross the network "
                "in clear",
                secret_id,
                self._endpoint.url,
            )
        self._secret_id = secret_id
        self._given_token = None if token is None else check_token(token, "the token argument")
        self._timeout = float(timeout)
        self._turns = TurnFile(lock_dir, f"{self._endpoint.url}\0{secret_id}")
        self._token: AgentToken | None = self._given_token
        self._lock = threading.Lock()

    @property
    def secret_id(self) -> str:
        """The secret's id or ARN."""
        return self._secret_id

    @property
    def endpoint(self) -> str:
        """The agent's base URL."""
        return self._endpoint.url

    def __repr__(self) -> str:
        return f"AgentSource(secret_id={self._secret_id!r}, endpoint={self._endpoint.url!r})"

    def fetch(self, stage: str, *, refresh: bool = True) -> Credentials | None:
        """Read one stage; None when no version has it (only for a stage other
        than AWSCURRENT). One call, within `timeout`; no turn is taken.

        With `refresh` (``refreshNow=true``) the agent reads Secrets Manager at
        once and keeps the fresh value for every process behind it; without,
        it answers from its cache. AWSCURRENT is asked without ``versionStage``,
        the query every process's cached reads use, so a refreshed value
        replaces what they are all served.
        """
        ask = AgentAsk(stage, refresh)
        return self._call(lambda token, deadline: self._ask(ask, token, deadline), turn=False)

    def load(self) -> Credentials:
        """The first read: through the agent's cache, which a whole fleet of
        processes behind one agent shares; see `SecretSource.load`."""
        credentials = self._call(
            lambda token, deadline: self._ask(AGENT_LOAD, token, deadline), turn=True
        )
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

        Asks in the order `rotating_pool.reads.next_agent_ask` gives (the
        agent's cache first, then ``refreshNow``), in one turn and one `timeout`.
        """

        def recover(token: AgentToken, deadline: float) -> Credentials | None:
            asked: list[AgentAsk] = []
            missing: set[str] = set()
            while (ask := next_agent_ask(asked, missing, use_pending=use_pending)) is not None:
                asked.append(ask)
                credentials = self._ask(ask, token, deadline)
                if credentials is None:
                    missing.add(ask.stage)
                elif credentials != rejected and credentials.version_id not in refused:
                    return credentials
            return None

        return self._call(recover, turn=True)

    def after_fork(self) -> None:
        """Replace the lock (a thread of the parent may have held it); nothing else
        crosses a fork: every read opens its own connection."""
        self._lock = threading.Lock()

    # -- one call: a token, a deadline, maybe a turn --------------------------

    def _call(self, run: Callable[[AgentToken, float], _T], *, turn: bool) -> _T:
        deadline = time.monotonic() + self._timeout
        # The token is read before the turn: a slow token file never holds up
        # the processes waiting for it.
        token = self._current_token()
        reread = False
        while True:
            try:
                with self._turn(deadline) if turn else contextlib.nullcontext():
                    return run(token, deadline)
            except _TokenRefused as refused:
                refusal = refused
            # Outside the except clause: the error raised has no context to quote.
            newer = None if reread else self._reread_token(token)
            if newer is None:
                raise error_for(
                    refusal.reply,
                    secret_id=self._secret_id,
                    url=self._endpoint.url,
                    token=token,
                    what=refusal.what,
                )
            token, reread = newer, True

    @contextlib.contextmanager
    def _turn(self, deadline: float) -> Iterator[None]:
        """Hold the turn of the processes behind this agent for this secret,
        waiting for it at most half of the time left."""
        patience = max(deadline - time.monotonic(), 0.0) * _TURN_SHARE
        with self._turns.turn(patience) as held:
            if held is False:
                logger.warning(
                    "secret %r: another process kept its turn with the Secrets Manager Agent "
                    "longer than %.1f s; reading the agent without waiting for it",
                    self._secret_id,
                    patience,
                )
            yield

    # -- one question --------------------------------------------------------

    def _ask(self, ask: AgentAsk, token: AgentToken, deadline: float) -> Credentials | None:
        query = {"refreshNow": "true"} if ask.refresh else {}
        if ask.stage != AWSCURRENT:
            query["versionStage"] = ask.stage
        what = f"{'refreshNow' if ask.refresh else 'cached'} read of {ask.stage}"
        path = "/secretsmanager/get?" + urllib.parse.urlencode(
            {"secretId": self._secret_id, **query}
        )
        reply = self._get(path, token, deadline, what)
        if reply.status in (401, 403):
            raise _TokenRefused(reply, what)
        if reply.status == 200:
            return credentials_from(
                reply.body,
                secret_id=self._secret_id,
                url=self._endpoint.url,
                stage=ask.stage,
                what=what,
            )
        if ask.stage != AWSCURRENT and says_not_found(reply.body):
            return None  # no version has that label (no rotation in progress)
        raise error_for(
            reply, secret_id=self._secret_id, url=self._endpoint.url, token=token, what=what
        )

    def _get(self, path: str, token: AgentToken, deadline: float, what: str) -> Reply:
        try:
            reply = get(self._endpoint, path, {TOKEN_HEADER: token.value}, deadline)
        except ExchangeFailed as failed:
            failure = failed
        else:
            logger.debug(
                "secret %r: %s through the agent at %s: HTTP %d",
                self._secret_id,
                what,
                self._endpoint.url,
                reply.status,
            )
            return reply
        # Outside the except clause, so that the error carries no context.
        raise self._failed(failure, what)

    def _failed(self, failure: ExchangeFailed, what: str) -> SecretsManagerUnavailableError:
        url = self._endpoint.url
        if failure.kind == "refused":
            return self._unavailable(
                f"no Secrets Manager Agent listening on {url} (connection refused, {what}): "
                "start the agent (a sidecar container, or Lambda's Parameters and Secrets "
                f"extension) or point {ENDPOINT_ENV} at it"
            )
        if failure.kind == "timeout":
            return self._unavailable(
                f"the Secrets Manager Agent at {url} did not answer within {self._timeout:g} s "
                f"({what}, the timeout of one call)"
            )
        if failure.kind == "too large":
            return self._not_the_agent(f"answered {failure.detail} ({what})")
        if failure.kind == "not loopback":
            return self._not_the_agent(
                f"is not on this host ({failure.detail}, {what}): pass "
                "allow_remote_endpoint=True if that is really meant"
            )
        return self._unavailable(
            f"the Secrets Manager Agent at {url} could not be read ({what}): {failure.detail}"
        )

    # -- the token -----------------------------------------------------------

    def _current_token(self) -> AgentToken:
        token = self._token
        if token is None:
            # Resolved outside the lock (a token file read never holds other
            # threads); a race only means two threads read the same file.
            token = resolve_token(None, endpoint=self._endpoint.url)
            with self._lock:
                if self._token is None:
                    self._token = token
                token = self._token
        return token

    def _reread_token(self, refused: AgentToken) -> AgentToken | None:
        """A token different from `refused`, or None when there is no other."""
        if self._given_token is not None:
            return None  # the application's own; nothing to re-read
        current = self._token
        if current is not None and current.value != refused.value:
            return current  # another thread re-read it already
        try:
            token = resolve_token(None, endpoint=self._endpoint.url)
        except ConfigurationError:
            return None  # the refusal is the clearer error
        with self._lock:
            self._token = token
        if token.value == refused.value:
            return None
        logger.info(
            "secret %r: the agent refused the token; %s now holds another one",
            self._secret_id,
            token.origin,
        )
        return token

    # -- errors --------------------------------------------------------------

    def _unavailable(self, message: str) -> SecretsManagerUnavailableError:
        return SecretsManagerUnavailableError(message, secret_id=self._secret_id)

    def _not_the_agent(self, problem: str) -> AgentAnswerError:
        return not_the_agent(self._secret_id, self._endpoint.url, problem)
