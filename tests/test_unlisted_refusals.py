"""A pooler whose refusal wording no list holds: the stand-in, and rotation under load through it.

The stand-in (`UnlistedRefusalPooler`) relays logins to the bed's PostgreSQL
and, after a user's password changes, refuses a third of the logins with the
new password for a while, at severity ERROR, with no SQLSTATE, in words
rotating_pool does not know (issue 25). The soak: 16 writers through a pool
recycled every 0.2 s, a rotation about every 2 s, both strategies.
"""

from __future__ import annotations

import logging
import time

import psycopg
import pytest

import rotating_pool
from rotating_pool.policy import Failure, classify_login_error
from rotating_pool.rotation import Rotator
from rotating_pool.testing import UnlistedRefusalPooler
from rotating_pool.testing.unlisted import UNLISTED_WORDING
from rotating_pool.testing.workload import WriteLoad
from tests.support import set_password
from tests.test_rotation_under_load import WINDOW, pause_after
from tests.test_stacks import login
from tests.test_stacks_under_load import assert_calls_per_rotation, through

THREADS = 16
ROTATIONS = 12
PERIOD = 2.0  # seconds from one rotation's start to the next one's, at least
UNLISTED = UNLISTED_WORDING.split("{slot}")[0]  # the wording up to the connection number


def refused_login(pooler, schema, password) -> psycopg.OperationalError:
    with pytest.raises(psycopg.OperationalError) as info:
        login(pooler, schema, password=password)
    return info.value


@pytest.fixture
def counted(proxy, monkeypatch):
    """The engine's Secrets Manager calls go through the counting FaultProxy."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    return proxy


@pytest.fixture
def pooler(postgres):
    """Every server connection is stale after a change, for a minute: every login refused."""
    with UnlistedRefusalPooler(
        target=(postgres.host, postgres.port), stale_connections=3, stale_for=60.0, seed=7
    ) as standin:
        yield standin


# -- the stand-in -------------------------------------------------------------------------


def test_the_standin_refuses_a_new_password_at_error_severity_with_no_sqlstate(
    pooler, postgres, app_schema
):
    user = app_schema.users[0]
    with login(pooler, app_schema, password=app_schema.passwords[user]) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (user,)
    set_password(postgres, user, "a-new-password-1")
    error = refused_login(pooler, app_schema, password="a-new-password-1")
    text = str(error)
    assert "ERROR:  " + UNLISTED in text
    assert "FATAL" not in text
    assert error.sqlstate is None
    assert pooler.refusals == {user: 1}
    assert pooler.changes == {user: 1}


def test_the_standin_passes_postgresqls_own_refusal_of_the_old_password(
    pooler, postgres, app_schema
):
    user = app_schema.users[0]
    old = app_schema.passwords[user]
    login(pooler, app_schema, password=old).close()
    set_password(postgres, user, "a-new-password-2")
    error = refused_login(pooler, app_schema, password=old)
    assert "password authentication failed" in str(error)
    assert classify_login_error(error) is Failure.REFUSED
    assert pooler.refusals == {}


def test_the_standin_refuses_about_a_third_while_its_old_connections_live(postgres, app_schema):
    user = app_schema.users[0]
    with UnlistedRefusalPooler(target=(postgres.host, postgres.port), stale_for=60.0) as pooler:
        login(pooler, app_schema, password=app_schema.passwords[user]).close()
        set_password(postgres, user, "a-new-password-3")
        outcomes = []
        for _ in range(60):
            try:
                login(pooler, app_schema, password="a-new-password-3").close()
            except psycopg.OperationalError as error:
                assert UNLISTED in str(error)
                outcomes.append(False)
            else:
                outcomes.append(True)
    refused = outcomes.count(False)
    assert 8 <= refused <= 32, refused  # 1 in 3 of 60: 20 expected
    assert pooler.refusals[user] == refused


def test_the_standin_lets_everything_through_once_its_old_connections_closed(
    postgres, app_schema
):
    user = app_schema.users[0]
    with UnlistedRefusalPooler(
        target=(postgres.host, postgres.port), stale_connections=3, stale_for=0.3
    ) as pooler:
        login(pooler, app_schema, password=app_schema.passwords[user]).close()
        set_password(postgres, user, "a-new-password-4")
        refused_login(pooler, app_schema, password="a-new-password-4")  # sees the change
        time.sleep(0.4)  # outlive the stale connections: the model's own clock, not a sync
        for _ in range(5):
            login(pooler, app_schema, password="a-new-password-4").close()
    assert pooler.refusals == {user: 1}


def test_the_standin_says_what_it_is_and_logs_no_password(pooler, postgres, app_schema, caplog):
    user = app_schema.users[0]
    caplog.set_level(logging.DEBUG, logger="rotating_pool.testing")
    assert "stand-in" in repr(pooler)
    login(pooler, app_schema, password=app_schema.passwords[user]).close()
    set_password(postgres, user, "a-new-password-5")
    refused_login(pooler, app_schema, password="a-new-password-5")
    records = [r for r in caplog.records if r.name.startswith("rotating_pool.testing")]
    assert any("refused" in r.getMessage() for r in records)
    assert all("stand-in" in r.getMessage() for r in records)
    for record in records:
        assert "a-new-password-5" not in record.getMessage()
        assert app_schema.passwords[user] not in record.getMessage()


# -- rotation under load through it ---------------------------------------------------------


def rotate_every(period: float, arn: str, sm_client, rotations: int) -> list[str]:
    """Rotate `rotations` times, starting one every `period` s; the rotations' tokens."""
    rotator = Rotator(sm_client)
    tokens = []
    for _ in range(rotations):
        began = time.monotonic()
        tokens.append(rotator.rotate(arn, on_step=pause_after("testSecret", WINDOW)).token)
        time.sleep(max(0.0, began + period - time.monotonic()))  # the pace, not a sync
    return tokens


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_rotations_under_load_through_a_pooler_with_unlisted_refusals_fail_nothing(
    postgres, make_secret, sm_client, counted, strategy
):
    arn = make_secret(strategy)
    with UnlistedRefusalPooler(target=(postgres.host, postgres.port), seed=25) as pooler:
        engine = rotating_pool.create_engine(
            through(pooler), secret_id=arn, pool_size=THREADS, pool_recycle=0.2
        )
        load = WriteLoad(engine, threads=THREADS)
        load.create_table()
        load.start()
        began = time.monotonic()
        tokens = []
        try:
            tokens = rotate_every(PERIOD, arn, sm_client, ROTATIONS)
            held = rotating_pool.credential_store(engine).held()
        finally:
            result = load.stop()
            refused = sum(pooler.refusals.values())
            print(  # the figures, shown with -s
                f"unlisted-refusal pooler {strategy}: {result.commits} commits, "
                f"{result.failures} failed, {refused} unlisted refusals, "
                f"{sum(pooler.changes.values())} password changes seen, "
                f"{dict(counted.calls)} for {len(tokens)} rotations in "
                f"{time.monotonic() - began:.1f} s, p99 {result.percentile(99):.2f} s, "
                f"longest {result.percentile(100):.2f} s"
            )
        assert result.failures == 0, dict(result.errors)
        assert result.commits > 0
        assert load.count_rows() == result.commits
        assert refused >= ROTATIONS // 2  # the refusals the test is about did happen
        assert held is not None and held.version_id in tokens[-2:]  # it kept up
        assert_calls_per_rotation(counted, ROTATIONS)
        engine.dispose()
