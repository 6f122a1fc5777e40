"""IAM database authentication through the local RDS IAM stand-in (rotating_pool.testing.iam).

Tokens are signed by botocore for real (SigV4, no mock); the AWS keys are
test values in the environment, the ones the stand-in accepts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text

import rotating_pool
from rotating_pool import LoginRejectedError, RetryBudget
from rotating_pool.connect import login
from rotating_pool.engine import credential_store
from rotating_pool.iam import IamAuth, IamCredentialsError, IamPlaintextError, IamTokenSource
from rotating_pool.redact import _BOTOCORE_LOGGERS
from rotating_pool.secret import Credentials
from rotating_pool.store import CredentialStore
from rotating_pool.testing import LocalPostgres
from rotating_pool.testing.iam import LocalIamAuth
from tests.support import set_password

REGION = "us-east-1"
KEY = ("AKIDIAMTESTKEY000001", "iam-test-secret-key-1")
NEW_KEY = ("AKIDIAMTESTKEY000002", "iam-test-secret-key-2")
_users = itertools.count(1)


def use_key(monkeypatch: pytest.MonkeyPatch, key: tuple[str, str]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key[1])


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the test keys: no profile, no files, no instance metadata."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    use_key(monkeypatch, KEY)


@pytest.fixture
def iam_user(postgres: LocalPostgres) -> tuple[str, str]:
    """A login role and its real password (which only the stand-in knows)."""
    user = f"iam_person_{next(_users)}"
    password = secrets.token_urlsafe(16)
    with postgres.admin_connect() as conn:
        conn.execute(f'CREATE ROLE "{user}" LOGIN')
    set_password(postgres, user, password)
    return user, password


@pytest.fixture
def rds(
    postgres: LocalPostgres, iam_user: tuple[str, str], aws_env: None
) -> Iterator[LocalIamAuth]:
    with LocalIamAuth(
        (postgres.host, postgres.port), {iam_user[0]: iam_user[1]}, keys=dict([KEY]), region=REGION
    ) as stand_in:
        yield stand_in


def url(rds: LocalIamAuth, user: str, driver: str = "psycopg", query: str = "") -> str:
    return f"postgresql+{driver}://{user}@{rds.host}:{rds.port}/postgres{query}"


def ca_args(rds: LocalIamAuth, driver: str) -> dict[str, object]:
    """How each driver is told to trust the stand-in's CA (verify-full is rotating_pool's)."""
    if driver in ("pg8000", "asyncpg"):
        context = ssl.create_default_context(cafile=str(rds.ca_path))  # checks the host too
        return {"ssl_context" if driver == "pg8000" else "ssl": context}
    return {"sslrootcert": str(rds.ca_path)}


def iam_engine(rds: LocalIamAuth, user: str, **options: object) -> sqlalchemy.Engine:
    """An IAM engine through the stand-in, psycopg, no pooling (every connect logs in)."""
    options.setdefault("poolclass", sqlalchemy.pool.NullPool)
    return rotating_pool.create_engine(
        url(rds, user), iam=True, connect_args=ca_args(rds, "psycopg"), **options
    )


def sign(user: str, host: str, port: int, key: tuple[str, str] = KEY) -> str:
    session = boto3.session.Session(
        aws_access_key_id=key[0], aws_secret_access_key=key[1], region_name=REGION
    )
    return session.client("rds").generate_db_auth_token(host, port, user)


def connect_raw(rds: LocalIamAuth, user: str, password: str) -> psycopg.Connection:
    return psycopg.connect(
        host=rds.host,
        port=rds.port,
        user=user,
        password=password,
        dbname="postgres",
        connect_timeout=5,
        **rds.tls_params(),
    )


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "pg8000"])
def test_a_valid_token_logs_in_with_each_sync_driver(rds, iam_user, driver):
    user = iam_user[0]
    engine = rotating_pool.create_engine(
        url(rds, user, driver), iam=IamAuth(region=REGION), connect_args=ca_args(rds, driver)
    )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == user
    assert rds.accepted[user] == 1
    engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg_async", "asyncpg"])
def test_a_valid_token_logs_in_with_each_async_driver(rds, iam_user, driver):
    user = iam_user[0]

    async def main() -> str:
        engine = rotating_pool.create_async_engine(
            url(rds, user, driver), iam=True, connect_args=ca_args(rds, driver)
        )
        try:
            async with engine.connect() as conn:
                return str((await conn.execute(text("SELECT current_user"))).scalar())
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == user
    assert rds.accepted[user] == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("signature", "bad signature"),
        ("user", "wrong user"),
        ("host", "wrong host"),
        ("expiry", "expired"),
        ("key", "unknown key"),
    ],
)
def test_the_stand_in_refuses_a_wrong_token_as_rds_words_it(rds, iam_user, case, reason):
    user = iam_user[0]
    if case == "signature":
        token = sign(user, rds.host, rds.port, (KEY[0], "not-the-secret-key"))
    elif case == "user":
        token = sign("someone_else", rds.host, rds.port)
    elif case == "host":
        token = sign(user, "localhost", rds.port)
    elif case == "key":
        token = sign(user, rds.host, rds.port, NEW_KEY)
    else:
        token = sign(user, rds.host, rds.port)
        rds.expire_tokens_signed_before(time.time() + 3600)
    with pytest.raises(
        psycopg.OperationalError, match=f'PAM authentication failed for user "{user}"'
    ):
        connect_raw(rds, user, token)
    assert rds.refusals == {reason: 1}
    assert rds.accepted[user] == 0


def test_the_stand_in_refuses_a_token_past_its_15_minutes(postgres, iam_user, aws_env):
    user, password = iam_user
    later = [0.0]
    with LocalIamAuth(
        (postgres.host, postgres.port),
        {user: password},
        keys=dict([KEY]),
        clock=lambda: time.time() + later[0],
    ) as rds:
        token = sign(user, rds.host, rds.port)
        later[0] = 890.0
        connect_raw(rds, user, token).close()
        later[0] = 905.0
        with pytest.raises(psycopg.OperationalError, match="PAM authentication failed"):
            connect_raw(rds, user, token)
    assert rds.refusals == {"expired": 1}


def test_the_stand_in_refuses_a_plaintext_login_before_asking_for_a_token(rds, iam_user):
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba.conf entry.*no encryption"):
        psycopg.connect(
            host=rds.host, port=rds.port, user=iam_user[0], password="x", sslmode="disable"
        )
    assert rds.refusals == {"no TLS": 1}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def next_second() -> None:
    """Tokens are dated to the second: wait for the next one, so that two
    tokens signed across it differ (a wall-clock condition, not a sync point)."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def test_a_token_is_renewed_ahead_of_expiry_without_making_a_connect_wait(rds, iam_user):
    user = iam_user[0]
    clock = FakeClock()
    source = IamTokenSource(user, rds.host, rds.port, "postgres", auth=IamAuth(), clock=clock)
    store = CredentialStore(source, refresh_interval=30.0, clock=clock)
    renewed = threading.Event()
    store.subscribe(lambda previous, new: previous is not None and renewed.set())

    def connect(credentials: Credentials, timeout: int) -> psycopg.Connection:
        return psycopg.connect(
            host=rds.host,
            port=rds.port,
            user=credentials.username,
            password=credentials.password,
            dbname="postgres",
            connect_timeout=timeout,
            **rds.tls_params(),
        )

    login(store, RetryBudget(), connect).close()
    clock.now += 300  # the store polls, the token is young: nothing signed
    login(store, RetryBudget(), connect).close()
    assert source.tokens_signed == 1
    clock.now += 301  # past renew_after (600 s): the next poll signs in the background
    next_second()
    # Starts the refresh and logs in with whatever is held: the store never
    # waits for a refresh (the old token is still valid for 5 minutes).
    login(store, RetryBudget(), connect).close()
    assert renewed.wait(10), "the background refresh did not sign a new token"
    login(store, RetryBudget(), connect).close()
    assert source.tokens_signed == 2
    assert store.stats().background_refreshes == 2
    times = rds.signing_times
    assert times[0] == times[1] < times[3]
    assert store.stats().rejected_logins == 0


def test_an_expired_token_is_replaced_by_a_freshly_signed_one(rds, iam_user):
    user = iam_user[0]
    engine = iam_engine(rds, user)
    engine.connect().close()
    next_second()
    rds.expire_tokens_signed_before(int(time.time()))  # as if 15 minutes had passed idle
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == user
    assert rds.refusals == {"expired": 1}
    stats = rotating_pool.stats(engine)
    assert (stats.rejected_logins, stats.recovered_logins) == (1, 1)


def test_rotated_aws_keys_are_picked_up_within_the_deadline(rds, iam_user, monkeypatch):
    user = iam_user[0]
    engine = iam_engine(rds, user, retry=RetryBudget(deadline=5))
    engine.connect().close()
    use_key(monkeypatch, NEW_KEY)
    rds.accept_only(dict([NEW_KEY]))
    started = time.monotonic()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == user
    assert time.monotonic() - started < 5
    assert rds.refusals == {"unknown key": 1}
    assert rotating_pool.stats(engine).recovered_logins == 1


def test_keys_the_database_never_accepts_end_in_a_typed_error_at_the_deadline(rds, iam_user):
    user = iam_user[0]
    engine = iam_engine(rds, user, retry=RetryBudget(deadline=4))
    rds.accept_only(dict([NEW_KEY]))  # and the process keeps signing with KEY
    started = time.monotonic()
    with pytest.raises(LoginRejectedError) as caught:
        engine.connect()
    assert time.monotonic() - started < 4 + 1.5
    assert caught.value.username == user
    assert rds.accepted[user] == 0


def test_plaintext_is_refused_unless_allowed(rds, iam_user):
    user = iam_user[0]
    for query in ("?sslmode=disable", "?sslmode=prefer", "?sslmode=allow"):
        with pytest.raises(IamPlaintextError, match="allow_plaintext=True"):
            rotating_pool.create_engine(url(rds, user, query=query), iam=True)
    engine = rotating_pool.create_engine(
        url(rds, user), iam=True, connect_args={"sslmode": "disable"}
    )
    with pytest.raises(IamPlaintextError):
        engine.connect()
    assert rds.refusals == {}  # refused before a token left the process
    allowed = rotating_pool.create_engine(
        url(rds, user, query="?sslmode=disable"), iam=IamAuth(allow_plaintext=True)
    )
    with pytest.raises(sqlalchemy.exc.OperationalError, match="no encryption"):
        allowed.connect()
    assert rds.refusals == {"no TLS": 1}


def test_an_expired_sso_session_is_a_typed_error_naming_aws_sso_login(
    rds, iam_user, monkeypatch, tmp_path
):
    config = tmp_path / "aws-config"
    config.write_text(
        "[profile people]\nsso_session = corp\nsso_account_id = 123456789012\n"
        "sso_role_name = Analyst\nregion = us-east-1\n\n[sso-session corp]\n"
        "sso_start_url = https://example.awsapps.com/start\nsso_region = us-east-1\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/sso/cache: not signed in
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    engine = rotating_pool.create_engine(url(rds, iam_user[0]), iam=IamAuth(profile="people"))
    with pytest.raises(IamCredentialsError, match=r"aws sso login --profile people"):
        engine.connect()


def test_no_aws_credentials_is_a_typed_error(rds, iam_user, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    engine = rotating_pool.create_engine(url(rds, iam_user[0]), iam=True)
    with pytest.raises(IamCredentialsError, match="no AWS credentials"):
        engine.connect()


def test_the_token_is_in_no_log_record_exception_or_repr(rds, iam_user, caplog):
    user = iam_user[0]
    caplog.set_level(logging.DEBUG)
    for name in ("rotating_pool", "sqlalchemy", "psycopg"):
        caplog.set_level(logging.DEBUG, logger=name)
    engine = iam_engine(rds, user, echo="debug", echo_pool="debug", retry=RetryBudget(deadline=4))
    store = credential_store(engine)
    tokens: list[str] = []
    store.subscribe(lambda previous, new: tokens.append(new.password))
    texts = []
    engine.connect().close()
    rds.accept_only({})  # every login refused from here: errors and their logs
    # Which typed error ends it depends on where the deadline falls (a refused
    # login, or a re-signing cut short); either must be free of the token.
    with pytest.raises(rotating_pool.RotatingPoolError) as caught:
        engine.connect()
    error: BaseException | None = caught.value
    while error is not None:
        texts += [str(error), repr(error)]
        error = error.__cause__ or error.__context__
    held = store.held()
    assert held is not None
    texts += [repr(engine), repr(store), repr(store.source), repr(held), str(held)]
    ours = [
        r
        for r in caplog.records
        if r.name.split(".")[0] in ("rotating_pool", "sqlalchemy", "psycopg")
    ]
    texts += [record.getMessage() for record in ours]
    signatures = [token.rsplit("X-Amz-Signature=", 1)[1] for token in tokens]
    assert tokens and all(len(signature) == 64 for signature in signatures)
    assert ours
    for blob in texts:
        for signature in signatures:
            assert signature not in blob


def test_botocore_logs_the_signature_at_debug_unless_redacted(rds, iam_user, caplog):
    """botocore.auth at DEBUG writes the signature it computed, which is the
    secret part of a token: `rotating_pool.redact_botocore_logs()` cuts it."""
    caplog.set_level(logging.DEBUG, logger="botocore")
    source = IamTokenSource(iam_user[0], rds.host, rds.port)
    token = source.load().password
    signature = token.rsplit("X-Amz-Signature=", 1)[1]
    assert any(signature in record.getMessage() for record in caplog.records)
    caplog.clear()
    log_filter = rotating_pool.redact_botocore_logs()
    try:
        token = source.load().password
    finally:
        for name in _BOTOCORE_LOGGERS:
            logging.getLogger(name).removeFilter(log_filter)
    signature = token.rsplit("X-Amz-Signature=", 1)[1]
    assert any("Signature:" in record.getMessage() for record in caplog.records)
    assert not any(signature in record.getMessage() for record in caplog.records)


def test_verify_full_is_the_default_so_an_unverified_server_never_gets_the_token(rds, iam_user):
    engine = rotating_pool.create_engine(url(rds, iam_user[0]), iam=True)  # no CA given
    with pytest.raises(sqlalchemy.exc.OperationalError, match="root certificate"):
        engine.connect()
    assert rds.accepted == {} and rds.refusals == {}  # no token reached the server


def test_iam_options_are_checked_when_the_engine_is_made():
    with pytest.raises(rotating_pool.ConfigurationError, match="user and host"):
        rotating_pool.create_engine("postgresql+psycopg:///app", iam=True)
    with pytest.raises(rotating_pool.ConfigurationError, match="iam must be True or an IamAuth"):
        rotating_pool.create_engine("postgresql+psycopg://u@h/app", iam="yes")
    with pytest.raises(rotating_pool.ConfigurationError, match="renew_after"):
        IamAuth(renew_after=900)
    with pytest.raises(rotating_pool.ConfigurationError, match="secret_id is required"):
        rotating_pool.create_engine("postgresql+psycopg://u@h/app")
    with pytest.raises(rotating_pool.ConfigurationError, match="retire_after does not apply"):
        rotating_pool.create_engine("postgresql+psycopg://u@h/app", iam=True, retire_after=60)


@pytest.mark.parametrize("driver", ["psycopg_async", "asyncpg"])
def test_async_engines_recover_from_rotated_aws_keys_within_the_deadline(
    rds, iam_user, monkeypatch, driver
):
    user = iam_user[0]

    async def main() -> tuple[str, float]:
        engine = rotating_pool.create_async_engine(
            url(rds, user, driver),
            iam=True,
            connect_args=ca_args(rds, driver),
            poolclass=sqlalchemy.pool.NullPool,
            retry=RetryBudget(deadline=5),
        )
        try:
            async with engine.connect():
                pass
            use_key(monkeypatch, NEW_KEY)
            rds.accept_only(dict([NEW_KEY]))
            started = time.monotonic()
            async with engine.connect() as conn:
                who = str((await conn.execute(text("SELECT current_user"))).scalar())
            return who, time.monotonic() - started
        finally:
            await engine.dispose()

    who, took = asyncio.run(main())
    assert who == user
    assert took < 5
    assert rds.refusals == {"unknown key": 1}
    assert rds.accepted[user] == 2
