"""Application engines verify the server's certificate, through each driver.

Against the TLS bed (TLS only; certificate for 127.0.0.1 signed by the bed's
CA), with the settings docs/guides/rotation.md documents: libpq's
``sslmode=verify-full`` and ``sslrootcert`` in the URL for psycopg and psycopg2,
an ``ssl.SSLContext`` in ``connect_args`` for pg8000 (``ssl_context``) and
asyncpg (``ssl``). A context
with another CA is refused, so verification really is on.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

import rotating_pool
from rotating_pool.testing import CertificateAuthority, LocalPostgres

# As the login user (its `SET role` default would hide its own pg_stat_ssl row).
RESET_ROLE = sqlalchemy.text("SET ROLE NONE")
TLS_IN_USE = sqlalchemy.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")


@pytest.fixture
def tls_secret(tls_postgres: LocalPostgres, sm_client: Any) -> str:
    n = uuid.uuid4().hex[:8]
    schema = tls_postgres.create_app_schema(role=f"drv_{n}", users=(f"drv_{n}_a", f"drv_{n}_b"))
    return str(
        sm_client.create_secret(
            Name=f"tls-drivers/{n}", SecretString=json.dumps(schema.secret_document("single"))
        )["ARN"]
    )


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    return CertificateAuthority.create("not the bed's CA").write_cert(tmp_path / "other.pem")


def sync_engine(driver: str, ca: Path, secret_id: str) -> sqlalchemy.Engine:
    """The engine as docs/guides/rotation.md writes it for `driver`."""
    if driver in ("psycopg", "psycopg2"):
        url = f"postgresql+{driver}://?sslmode=verify-full&sslrootcert={ca}"
        return rotating_pool.create_engine(url, secret_id=secret_id)
    context = ssl.create_default_context(cafile=str(ca))  # checks the host name too
    return rotating_pool.create_engine(
        "postgresql+pg8000://", secret_id=secret_id, connect_args={"ssl_context": context}
    )


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "pg8000"])
def test_sync_engines_connect_with_verified_tls(
    driver: str, tls_postgres: LocalPostgres, tls_secret: str, other_ca: Path
) -> None:
    engine = sync_engine(driver, tls_postgres.ca_path, tls_secret)
    try:
        with engine.connect() as conn:
            conn.execute(RESET_ROLE)
            assert conn.execute(TLS_IN_USE).scalar() is True
    finally:
        engine.dispose()

    refused = sync_engine(driver, other_ca, tls_secret)
    # pg8000 lets the ssl module's error through; the others wrap theirs.
    with pytest.raises(
        (sqlalchemy.exc.DBAPIError, ssl.SSLError), match="certificate verify failed"
    ):
        refused.connect()
    refused.dispose()


@pytest.mark.parametrize("driver", ["psycopg_async", "asyncpg"])
def test_async_engines_connect_with_verified_tls(
    driver: str, tls_postgres: LocalPostgres, tls_secret: str, other_ca: Path
) -> None:
    def engine(ca: Path) -> Any:
        if driver == "psycopg_async":
            url = f"postgresql+psycopg_async://?sslmode=verify-full&sslrootcert={ca}"
            return rotating_pool.create_async_engine(url, secret_id=tls_secret)
        context = ssl.create_default_context(cafile=str(ca))
        return rotating_pool.create_async_engine(
            "postgresql+asyncpg://", secret_id=tls_secret, connect_args={"ssl": context}
        )

    async def tls_in_use(ca: Path) -> Any:
        async_engine = engine(ca)
        try:
            async with async_engine.connect() as conn:
                await conn.execute(RESET_ROLE)
                return (await conn.execute(TLS_IN_USE)).scalar()
        finally:
            await async_engine.dispose()

    assert asyncio.run(tls_in_use(tls_postgres.ca_path)) is True
    with pytest.raises(
        (sqlalchemy.exc.DBAPIError, ssl.SSLError), match="certificate verify failed"
    ):
        asyncio.run(tls_in_use(other_ca))
