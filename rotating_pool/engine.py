"""SQLAlchemy integration: `create_engine` and `attach`.

rotating_pool hooks SQLAlchemy's documented ``do_connect`` event, the place
SQLAlchemy's docs give for per-connect credentials, so the engine stays a plain
`sqlalchemy.Engine`: its pool, options and events work as always, and a pooled
connection never waits on Secrets Manager (the hook runs only when the pool
opens a new DBAPI connection).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine

from rotating_pool.agent import AgentSource
from rotating_pool.connect import login as login_through
from rotating_pool.core.plan import RetryBudget
from rotating_pool.errors import AlreadyAttachedError, ConfigurationError
from rotating_pool.iam import POLL_INTERVAL, IamAuth, IamTokenSource, check_url_tls, tls_params
from rotating_pool.retire import Retirement, record_login, validate_retire_after
from rotating_pool.secret import Credentials
from rotating_pool.sources import SecretsManagerSource, SecretSource
from rotating_pool.store import CredentialStore, Stats
from rotating_pool.telemetry import instrument_client, telemetry
from rotating_pool.waiting import BlockingWaits, GreenletWaits, Waits

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import ConnectionPoolEntry

__all__ = [
    "attach",
    "create_async_engine",
    "create_engine",
    "credential_store",
    "stats",
]

logger = logging.getLogger("rotating_pool")

T = TypeVar("T")

SourceName = Literal["secretsmanager", "agent"]
"""The sources `source=` accepts by name: ``"secretsmanager"`` (the default) and
``"agent"`` (`rotating_pool.agent.AgentSource` with its defaults)."""

DEFAULT_REFRESH_INTERVAL = 3600.0
"""Seconds between steady-state refreshes. A rotated secret is picked up at a
rejected login anyway; the refresh only lets alternating-users rotations go
unnoticed (the new user is adopted before the old one's password changes, as
long as rotations are further apart than this). One hour costs about one
DescribeSecret per hour per process, as aws-secretsmanager-caching's default."""

# Dialect -> its hook; a dialect is shared by an engine and its option copies.
_hooks: weakref.WeakKeyDictionary[Dialect, _ConnectHook] = weakref.WeakKeyDictionary()
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
# (secret, how it is read, options) -> the store every such engine shares.
_stores: weakref.WeakValueDictionary[tuple[object, ...], CredentialStore] = (
    weakref.WeakValueDictionary()
)
_stores_lock = threading.Lock()


def create_engine(
    url: str | sqlalchemy.URL,
    *,
    secret_id: str | None = None,
    client: SecretsManagerClient | None = None,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    retry: RetryBudget | None = None,
    use_pending: bool = True,
    source: SecretSource | SourceName | None = None,
    retire_after: float | None = None,
    iam: IamAuth | bool | None = None,
    **engine_kwargs: Any,
) -> Engine:
    """A drop-in for `sqlalchemy.create_engine` whose logins come from a secret.

    At every new DBAPI connection the username and password come from the
    secret's AWSCURRENT version (through a cache), and host, port and dbname
    from the secret where the URL leaves them out. As in SQLAlchemy, nothing is
    fetched until the first connection. Every other keyword (pool_size,
    pool_recycle, pool_pre_ping, echo, connect_args, ...) goes to SQLAlchemy.

    Args:
        url: the database URL; its driver must be a PostgreSQL one
            (``postgresql+psycopg://`` with no user, password or host is typical).
        secret_id: the secret's name or ARN (optional with `iam`).
        client, refresh_interval, retry, use_pending, source, retire_after, iam: see `attach`.

    >>> import rotating_pool
    >>> engine = rotating_pool.create_engine(
    ...     "postgresql+psycopg://", secret_id="prod/app/db", pool_recycle=3600)
    """
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    return attach(
        engine,
        secret_id=secret_id,
        client=client,
        refresh_interval=refresh_interval,
        retry=retry,
        use_pending=use_pending,
        source=source,
        retire_after=retire_after,
        iam=iam,
    )


def create_async_engine(
    url: str | sqlalchemy.URL,
    *,
    secret_id: str | None = None,
    client: SecretsManagerClient | None = None,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    retry: RetryBudget | None = None,
    use_pending: bool = True,
    source: SecretSource | SourceName | None = None,
    retire_after: float | None = None,
    iam: IamAuth | bool | None = None,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """A drop-in for `sqlalchemy.ext.asyncio.create_async_engine`; see `create_engine`.

    Same options, secret format and recovery as the sync engines. The event
    loop is never blocked: Secrets Manager is read in a worker thread and
    backoff awaits the loop's sleep. Needs the ``asyncio`` extra (greenlet).

    >>> import rotating_pool
    >>> engine = rotating_pool.create_async_engine(
    ...     "postgresql+psycopg_async://", secret_id="prod/app/db")
    """
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine  # noqa: PLC0415

    engine = sa_create_async_engine(url, **engine_kwargs)
    return attach(
        engine,
        secret_id=secret_id,
        client=client,
        refresh_interval=refresh_interval,
        retry=retry,
        use_pending=use_pending,
        source=source,
        retire_after=retire_after,
        iam=iam,
    )


def attach(
    engine: T,
    *,
    secret_id: str | None = None,
    client: SecretsManagerClient | None = None,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    retry: RetryBudget | None = None,
    use_pending: bool = True,
    source: SecretSource | SourceName | None = None,
    retire_after: float | None = None,
    iam: IamAuth | bool | None = None,
) -> T:
    """Make an existing engine take its logins from a secret; returns it.

    For engines made by a framework (Flask-SQLAlchemy) or by
    `sqlalchemy.create_engine`: existing `Session` and `sessionmaker` code is
    untouched. Connections already in the pool are kept.

    Engines of one process that read the same secret from the same source
    share their credentials, whatever their `retry`, `refresh_interval` or
    `retire_after`: a rotation costs one refetch per process, however many
    engines (writer and reader, sync and async) use the secret, the secret is
    refreshed at the smallest interval any of them asks for, and `stats`
    counts for all of them together.

    Args:
        engine: a `sqlalchemy.Engine` (or `AsyncEngine`) with a PostgreSQL dialect.
        secret_id: the secret's name or ARN.
        client: the boto3 ``secretsmanager`` client to use. Default: one made
            from boto3's default chain (honours ``AWS_ENDPOINT_URL_SECRETS_MANAGER``,
            region and credentials as usual), remade in forked children.
        refresh_interval: seconds between background refreshes (default one
            hour; see `DEFAULT_REFRESH_INTERVAL`).
        retry: the budget of one connection's login (default `RetryBudget()`:
            12 rounds after a refusal, at most 20 s in all, Secrets Manager
            calls and waits included).
        use_pending: try AWSPENDING when a login is refused and AWSCURRENT has
            not moved (single-user rotation between setSecret and finishSecret).
            On by default: it is what makes single-user rotation seamless.
        source: where the secret is read. ``"secretsmanager"`` (or None, the
            default): Secrets Manager's API, with `client`. ``"agent"``: through
            the Secrets Manager Agent sidecar or Lambda's Parameters and Secrets
            extension on localhost:2773 (`AgentSource` with its defaults: the
            token from ``AWS_TOKEN`` or ``AWS_SESSION_TOKEN``, the endpoint from
            ``ROTATING_POOL_AGENT_ENDPOINT``). Or any `SecretSource`, e.g.
            ``AgentSource(secret_id, endpoint=..., token=...)``. `client` is
            used only by the default.
        retire_after: close pooled connections made with superseded
            credentials within this many seconds (at least 5) of a rotation,
            each at its own random moment and never while checked out; the
            background refresh then runs every tenth of it (at least 1 s) so
            that a busy pool notices. None (the default): connections live as
            long as the pool keeps them. See `rotating_pool.retire`.
        iam: log in with IAM database authentication instead of a password:
            True, or an `IamAuth` (region, profile, allow_plaintext). The user,
            host and port come from the URL, or from the secret's non-password
            fields when `secret_id` is given too. TLS is ``verify-full`` unless
            the URL says otherwise. See `rotating_pool.iam`.

    Raises:
        AlreadyAttachedError: rotating_pool already manages this engine.
        ConfigurationError: an option is invalid, or the engine is not PostgreSQL.
    """
    sync_engine = _sync_engine_of(engine)
    dialect = sync_engine.dialect
    if dialect.name != "postgresql":
        raise ConfigurationError(
            f"rotating_pool manages PostgreSQL engines; this one's dialect is {dialect.name!r}: "
            "use a postgresql+psycopg:// URL"
        )
    if dialect in _hooks:
        raise AlreadyAttachedError(
            f"this engine already takes its logins from secret "
            f"{_hooks[dialect].store.secret_id!r}: attach once per engine "
            "(make a second engine for a second secret)"
        )
    retire_after = validate_retire_after(retire_after)
    auth = IamAuth.from_option(iam)
    if auth is not None:
        if retire_after is not None:  # every renewal would retire the whole pool
            raise ConfigurationError(
                "retire_after does not apply to iam=: a session outlives its token, and "
                "tokens are renewed every few minutes; leave retire_after out"
            )
        store = _iam_store(sync_engine, auth, secret_id, client, source)
    elif secret_id is None:
        raise ConfigurationError("secret_id is required (the secret's name or ARN), or pass iam=")
    else:
        store = store_for(secret_id, client, refresh_interval, use_pending, source)
    if retry is None:
        retry = RetryBudget()
    elif not isinstance(retry, RetryBudget):
        raise ConfigurationError(f"retry must be a RetryBudget, not {type(retry).__name__}")
    hook = _ConnectHook(store, retry, dialect)
    hook.iam = auth
    event.listen(sync_engine, "do_connect", hook)
    if retire_after is not None:
        secret = store.secret_id
        hook.retirement = Retirement(
            sync_engine,
            store,
            retire_after,
            on_retired=lambda login: telemetry().connection_retired(secret, login),
        )
    _hooks[dialect] = hook
    _engines.add(sync_engine)
    return engine


def stats(engine: Any) -> Stats:
    """The login and secret-read counters of an engine rotating_pool manages."""
    return credential_store(engine).stats()


def credential_store(engine: Any) -> CredentialStore:
    """The `CredentialStore` behind an engine rotating_pool manages.

    Raises:
        ConfigurationError: the engine is not managed by rotating_pool.
    """
    hook = _hooks.get(_sync_engine_of(engine).dialect)
    if hook is None:
        raise ConfigurationError(
            "this engine is not managed by rotating_pool: make it with "
            "rotating_pool.create_engine or rotating_pool.attach"
        )
    return hook.store


def _sync_engine_of(engine: Any) -> Engine:
    sync_engine = getattr(engine, "sync_engine", engine)  # AsyncEngine -> its Engine
    if not isinstance(sync_engine, Engine):
        raise ConfigurationError(
            f"expected a SQLAlchemy Engine or AsyncEngine, not {type(engine).__name__}"
        )
    return sync_engine


def store_for(
    secret_id: str,
    client: SecretsManagerClient | None,
    refresh_interval: float,
    use_pending: bool,
    source: SecretSource | SourceName | None,
) -> CredentialStore:
    """The process's store for this secret read from this source, made on first use.

    Engines that read the same secret from the same source (a writer and a
    reader engine, say) share one store whatever their other settings, so a
    rotation costs one refetch per process however many engines there are. The
    store refreshes at the smallest interval any of them asks for; retry
    budgets and retirement stay each engine's own (on its hook). A client or
    source you pass is part of the key by identity: the store keeps it alive,
    so the identity stays unique.
    """
    if isinstance(refresh_interval, bool) or not isinstance(refresh_interval, int | float):
        raise ConfigurationError(
            f"refresh_interval must be a number of seconds, not {refresh_interval!r}"
        )
    if not math.isfinite(refresh_interval) or refresh_interval < 1:
        raise ConfigurationError(
            f"refresh_interval must be a finite number of seconds >= 1, not {refresh_interval!r}"
        )
    if not isinstance(use_pending, bool):
        raise ConfigurationError(f"use_pending must be True or False, not {use_pending!r}")
    made = _make_source(secret_id, client, source)  # validates; cheap
    how: tuple[object, ...]
    if made is source:
        how = ("source", id(made))
    elif isinstance(made, AgentSource):
        how = ("agent", made.endpoint)
    else:
        how = ("secretsmanager", id(client))
    key = (secret_id, how, use_pending)
    with _stores_lock:
        store = _stores.get(key)
        if store is not None:
            store.refresh_at_least_every(float(refresh_interval))
        else:
            store = CredentialStore(
                made, refresh_interval=refresh_interval, use_pending=use_pending
            )
            if isinstance(made, SecretsManagerSource):
                made.add_client_hook(instrument_client)  # metrics, with OpenTelemetry
            _stores[key] = store
        return store


def _iam_store(
    engine: Engine,
    auth: IamAuth,
    secret_id: str | None,
    client: SecretsManagerClient | None,
    source: SecretSource | SourceName | None,
) -> CredentialStore:
    """The store of an IAM engine: its own token source, polled every `POLL_INTERVAL`."""
    if source is not None:
        raise ConfigurationError("iam= and source= exclude each other: a token source signs")
    url = engine.url
    check_url_tls(engine.dialect.create_connect_args(url)[1], engine.dialect.driver, auth)
    base = None if secret_id is None else _make_source(secret_id, client, None)
    made = IamTokenSource(url.username, url.host, url.port, url.database, auth=auth, base=base)
    return store_for(made.secret_id, None, POLL_INTERVAL, False, made)


def _make_source(
    secret_id: str,
    client: SecretsManagerClient | None,
    source: SecretSource | SourceName | None,
) -> SecretSource:
    if source is not None and not isinstance(source, str):
        if not isinstance(source, SecretSource):
            raise ConfigurationError(
                f"source must be a rotating_pool SecretSource, not {type(source).__name__}"
            )
        if source.secret_id != secret_id:
            raise ConfigurationError(
                f"source reads secret {source.secret_id!r} but secret_id is {secret_id!r}"
            )
        return source
    if source not in (None, "secretsmanager", "agent"):
        raise ConfigurationError(
            f"source must be 'secretsmanager', 'agent' or a rotating_pool SecretSource, "
            f"not {source!r}"
        )
    if not isinstance(secret_id, str) or not secret_id.strip():
        raise ConfigurationError("secret_id must be the secret's name or ARN (a non-empty string)")
    if source == "agent":
        return AgentSource(secret_id)
    return SecretsManagerSource(secret_id, client=client)


# Drivers whose connect() calls the database "database" rather than libpq's
# "dbname", and the login time-out "timeout" rather than "connect_timeout".
_DATABASE_KEY = {"asyncpg": "database", "pg8000": "database"}
_TIMEOUT_KEY = {"asyncpg": "timeout", "pg8000": "timeout"}


class _ConnectHook:
    """The ``do_connect`` listener: log in with the store's credentials, and
    recover when the login is rejected."""

    def __init__(self, store: CredentialStore, budget: RetryBudget, dialect: Dialect) -> None:
        self.store = store
        self.budget = budget
        self.driver: str = dialect.driver
        self.dbname_key = _DATABASE_KEY.get(dialect.driver, "dbname")
        self.timeout_key = _TIMEOUT_KEY.get(dialect.driver, "connect_timeout")
        self.waits: Waits = GreenletWaits() if dialect.is_async else BlockingWaits()
        self.retirement: Retirement | None = None
        self._prepared: tuple[Credentials, int, dict[str, Any], dict[str, Any]] | None = None
        self.iam: IamAuth | None = None

    def __repr__(self) -> str:
        return f"<rotating_pool hook for secret {self.store.secret_id!r}>"

    def _params(
        self, cparams: dict[str, Any], credentials: Credentials, timeout: int
    ) -> dict[str, Any]:
        """`connect_params`, built once per credentials change (and per change
        of the engine's own parameters or the login's time-out), not per connect.

        The dict is shared by every connect that uses it and never written:
        ``dialect.connect(**params)`` hands the driver a copy.
        """
        prepared = self._prepared
        if (
            prepared is not None
            and prepared[0] is credentials
            and prepared[1] == timeout
            and prepared[2] == cparams
        ):
            return prepared[3]
        params = connect_params(cparams, credentials, self.dbname_key, (self.timeout_key, timeout))
        if self.iam is not None:  # the token is a bearer credential: TLS
            params.update(
                tls_params(params, self.driver, allow_plaintext=self.iam.allow_plaintext)
            )
        # One tuple: a racing thread sees the old or the new one whole.
        self._prepared = (credentials, timeout, dict(cparams), params)
        return params

    def __call__(
        self,
        dialect: Dialect,
        conn_rec: ConnectionPoolEntry,
        cargs: list[Any],
        cparams: dict[str, Any],
    ) -> DBAPIConnection:
        # SQLAlchemy 2.0 hands every connect of an engine the same cparams
        # dict (2.1 a copy): it is read here, never written, so concurrent
        # logins cannot mix one user with another's password.

        def connect(credentials: Credentials, timeout: int) -> DBAPIConnection:
            connection = dialect.connect(*cargs, **self._params(cparams, credentials, timeout))
            if dialect.driver == "pg8000":
                _keep_pg8000_timeout(connection, cparams.get("timeout"))
            record_login(conn_rec, credentials)  # for retirement; never the password
            return connection

        return login_through(self.store, self.budget, connect, waits=self.waits)


def connect_params(
    given: dict[str, Any],
    credentials: Credentials,
    dbname_key: str = "dbname",
    timeout: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """A driver's connect parameters: `given` (URL, connect_args) with `credentials`.

    The user and password always come from the secret; host, port and dbname
    only where the URL left them out (RDS Proxy and reader endpoints differ from
    the secret's host). `timeout`, (the driver's key, whole seconds), caps a
    time-out the application gave, so that a login fits the time left.
    """
    params = dict(given)
    params["user"] = credentials.username
    params["password"] = credentials.password
    for key, value in (
        ("host", credentials.host),
        ("port", credentials.port),
        (dbname_key, credentials.dbname),
    ):
        if value is not None and key not in given:
            params[key] = value
    if timeout is not None:
        key, seconds = timeout
        mine = _seconds(given.get(key))
        if mine is None or mine <= 0 or mine > seconds:
            params[key] = seconds  # libpq: 0 means "wait forever"
    return params


def _keep_pg8000_timeout(connection: Any, given: object) -> None:
    """Give a pg8000 connection back the socket time-out the application chose.

    pg8000's ``timeout`` is its socket's time-out for the connection's whole
    life, not only the login's: left at the login's bound, any statement
    running longer would fail. psycopg's, psycopg2's (libpq's
    ``connect_timeout``) and asyncpg's ``timeout`` apply to the login only.
    """
    sock = getattr(connection, "_usock", None)
    if sock is not None:
        sock.settimeout(_seconds(given))


def _seconds(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def connect_with_recovery(
    store: CredentialStore,
    budget: RetryBudget,
    login: Callable[[Credentials, int], T],
    waits: Waits | None = None,
) -> T:
    """Kept for existing callers: `rotating_pool.connect.login`."""
    return login_through(store, budget, login, waits=waits)


def _dispose_after_fork() -> None:
    global _stores_lock
    _stores_lock = threading.Lock()
    # SQLAlchemy's advice for pools that cross a fork: drop the parent's
    # connections without closing them (they still belong to the parent).
    for engine in list(_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_after_fork)
