"""`DatabaseWrapper`: Django's PostgreSQL backend, logging in through a secret.

Each new connection Django opens, persistent (``CONN_MAX_AGE``) or not, logs
in through `rotating_pool.connect.login` in `get_new_connection`; with
Django's pool (``OPTIONS["pool"]``, Django 5.1+) the pool's
``connection_class`` is `rotating_pool.pool.connection_class`'s, so the pool's
workers log in the same way. rotating_pool's keys (`OPTION_NAMES`: secret_id,
source, retry, use_pending, refresh_interval, client, retire_after) are taken
out of ``OPTIONS`` before psycopg sees them. The store is the process's one
for the secret and source, shared with any SQLAlchemy engine or psycopg pool
on it.

``retire_after``: with Django's pool, the pool is drained once the
credentials change (`rotating_pool.pool.retire_superseded`). Without a pool,
a persistent connection on superseded credentials gets a closing time (Django's
own ``close_at``, which ``CONN_MAX_AGE`` sets) at a random moment within the
window; Django closes it at the next request boundary after that moment, never
inside a transaction. A thread that serves no request keeps its connection
until its next one, as with ``CONN_MAX_AGE``.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.db import DEFAULT_DB_ALIAS, OperationalError  # type: ignore[import-untyped]
from django.db.backends.postgresql import base as postgresql  # type: ignore[import-untyped]

from rotating_pool.connect import login
from rotating_pool.core.retirement import poll_interval, retirement_times, retirement_window
from rotating_pool.engine import connect_params
from rotating_pool.errors import ConfigurationError, RotatingPoolError
from rotating_pool.login_options import OPTION_NAMES, LoginOptions
from rotating_pool.pool import PoolRetirement, RotatingConnection, connection_class_for
from rotating_pool.pool import retire_superseded as retire_pool
from rotating_pool.secret import Credentials

__all__ = ["OPTION_NAMES", "DatabaseWrapper"]

# Pool -> its retirement, made once per pool (Django makes one pool per alias).
_pool_retirements: weakref.WeakKeyDictionary[Any, PoolRetirement] = weakref.WeakKeyDictionary()


class DatabaseWrapper(postgresql.DatabaseWrapper):  # type: ignore[misc]
    """Django's PostgreSQL `DatabaseWrapper` with logins from a secret; see the module."""

    def __init__(self, settings_dict: dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> None:
        options = dict(settings_dict.get("OPTIONS") or {})
        try:
            self.login_options = LoginOptions.pop_from(dict(options))
        except ConfigurationError as error:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['OPTIONS'] for rotating_pool.django: {error}"
            ) from None
        if settings_dict.get("PASSWORD"):
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['PASSWORD'] must be empty with rotating_pool.django: "
                "the password comes from the secret"
            )
        self.credential_store = self.login_options.store()
        pool = options.get("pool")
        if pool:
            pool = {} if pool is True else dict(pool)
            if not issubclass(pool.get("connection_class", object), RotatingConnection):
                pool["connection_class"] = connection_class_for(self.login_options)
            options["pool"] = pool
        elif self.login_options.retire_after is not None:
            self.credential_store.refresh_at_least_every(
                poll_interval(self.login_options.retire_after)
            )
        # A copy: Django's own copies (the no-database connection, the test
        # database's) keep rotating_pool's keys; get_connection_params drops them.
        super().__init__({**settings_dict, "OPTIONS": options}, alias)
        self._login: Credentials | None = None

    @property
    def pool(self) -> Any:
        """Django's psycopg pool (``OPTIONS["pool"]``), retired on rotation if asked."""
        pool = super().pool
        retire_after = self.login_options.retire_after
        if pool is not None and retire_after is not None and pool not in _pool_retirements:
            _pool_retirements.setdefault(pool, retire_pool(pool, retire_after))
        return pool

    def get_connection_params(self) -> dict[str, Any]:
        """Django's connection parameters less rotating_pool's own options."""
        params: dict[str, Any] = super().get_connection_params()
        for name in OPTION_NAMES:
            params.pop(name, None)
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        """Open a connection logged in with the secret's credentials (or take
        one from Django's pool, whose workers log in the same way)."""
        if self.pool:
            return super().get_new_connection(conn_params)
        parent: Any = super()

        def attempt(credentials: Credentials, timeout: int) -> Any:
            params = connect_params(
                conn_params, credentials, "dbname", ("connect_timeout", timeout)
            )
            connection = parent.get_new_connection(params)
            self._login = credentials
            return connection

        try:
            return login(self.credential_store, self.login_options.retry, attempt)
        except RotatingPoolError as error:
            # Django's own code (migrate's checks, health checks, the test
            # runner) handles a database it cannot reach as OperationalError;
            # the cause stays rotating_pool's typed error.
            raise OperationalError(str(error)) from error

    def close_if_unusable_or_obsolete(self) -> None:
        """Django's check at each request boundary, plus retirement: a
        connection on superseded credentials gets a closing moment in the window."""
        retire_after = self.login_options.retire_after
        if retire_after is not None and self.connection is not None and not self.pool:
            current = self.credential_store.held()  # starts a refresh when one is due
            if current is not None and self._login is not None and current != self._login:
                now = time.monotonic()
                (moment,) = retirement_times(1, now, retirement_window(retire_after))
                close_at: float | None = getattr(self, "close_at", None)  # Django's: CONN_MAX_AGE
                if close_at is None or close_at > moment:
                    self.close_at = moment
                self._login = current  # its closing is planned: once per change
        super().close_if_unusable_or_obsolete()
