"""The engines compared: rotating_pool, its baseline, and its peers.

- ``static``: a plain `sqlalchemy.create_engine` whose URL holds the
  credentials read once from AWSCURRENT (what most applications do).
- ``rotating_pool``: `rotating_pool.create_engine`, reading through a proxy
  that counts its calls, with the same botocore settings as its default client.
- ``wrapper``: aws-advanced-python-wrapper's SQLAlchemy dialect with only its
  ``aws_secrets_manager`` plugin, reading through a counting proxy too.
- ``caching``: aws-secretsmanager-caching's `SecretCache` behind a
  ``do_connect`` listener that, when a login is refused, calls
  `SecretCache.refresh_secret_now` (the library's only way to force a read)
  and logs in again.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import sqlalchemy
from aws_secretsmanager_caching import SecretCache, SecretCacheConfig
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

import rotating_pool
from benchmarks.bed import Bed, Secret
from rotating_pool.sources import DEFAULT_CLIENT_CONFIG as ROTATING_POOL_CLIENT_CONFIG
from rotating_pool.testing import FaultProxy

__all__ = [
    "CLIENT_LABELS",
    "caching_engine",
    "rotating_pool_engine",
    "static_engine",
    "wrapper_engine",
    "wrapper_unavailable",
]

CLIENT_LABELS = {
    "static": "engine built once from AWSCURRENT",
    "wrapper": "aws-advanced-python-wrapper (aws_secrets_manager plugin)",
    "caching": "aws-secretsmanager-caching + refresh_secret_now",
    "rotating_pool": "rotating_pool",
}


def static_engine(
    bed: Bed, secret: Secret, proxy: FaultProxy | None = None, **engine_kwargs: Any
) -> Engine:
    """An engine whose URL holds AWSCURRENT's credentials as they are now.

    The one read goes through `proxy` when given, so that it is counted.
    """
    document = bed.current_document(secret, None if proxy is None else proxy.endpoint_url)
    return sqlalchemy.create_engine(bed.static_url(document), **engine_kwargs)


def rotating_pool_engine(
    bed: Bed, secret: Secret, proxy: FaultProxy, **engine_kwargs: Any
) -> Engine:
    """`rotating_pool.create_engine` reading through `proxy`.

    The client is made as rotating_pool makes its default one (same timeouts
    and retries), only pointed at the proxy: the environment variable that the
    default client honours is process-wide, and several engines run here.
    """
    client = bed.secretsmanager.client(proxy.endpoint_url, config=ROTATING_POOL_CLIENT_CONFIG)
    return rotating_pool.create_engine(
        "postgresql+psycopg://", secret_id=secret.arn, client=client, **engine_kwargs
    )


def wrapper_unavailable() -> str | None:
    """Why aws-advanced-python-wrapper cannot be measured here, or None when it can."""
    if importlib.util.find_spec("aws_advanced_python_wrapper") is None:
        return (
            "aws-advanced-python-wrapper is not installed (pip install -e '.[bench]' installs it)"
        )
    return None


def wrapper_engine(bed: Bed, secret: Secret, proxy: FaultProxy, **engine_kwargs: Any) -> Engine:
    """aws-advanced-python-wrapper's engine with its aws_secrets_manager plugin, via `proxy`."""
    return sqlalchemy.create_engine(bed.wrapper_url(secret, proxy.endpoint_url), **engine_kwargs)


class _CachingLogin:
    """A ``do_connect`` listener built on aws-secretsmanager-caching.

    It is the best that library offers for a refused login: its getters serve
    the cached value until the TTL passes, and `refresh_secret_now` is the only
    way to make it read again (it sleeps 2.5-5 s first, by design).
    """

    def __init__(self, cache: SecretCache, secret_id: str) -> None:
        self.cache = cache
        self.secret_id = secret_id

    def _apply(self, cparams: dict[str, Any]) -> None:
        document = json.loads(self.cache.get_secret_string(self.secret_id))
        cparams["user"] = document["username"]
        cparams["password"] = document["password"]

    def __call__(
        self, dialect: Any, _conn_rec: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> Any:
        self._apply(cparams)
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as error:
            if not rotating_pool.is_login_rejection(error):
                raise
        self.cache.refresh_secret_now(self.secret_id)
        self._apply(cparams)
        return dialect.connect(*cargs, **cparams)


def caching_engine(bed: Bed, secret: Secret, proxy: FaultProxy, **engine_kwargs: Any) -> Engine:
    """A plain engine that logs in through aws-secretsmanager-caching (default TTL 1 h)."""
    cache = SecretCache(
        config=SecretCacheConfig(), client=bed.secretsmanager.client(proxy.endpoint_url)
    )
    url = URL.create(
        "postgresql+psycopg",
        host=secret.schema.host,
        port=secret.schema.port,
        database=secret.schema.dbname,
    )
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    event.listen(engine, "do_connect", _CachingLogin(cache, secret.arn))
    return engine
