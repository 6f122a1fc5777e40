"""The Django backend (ENGINE "rotating_pool.django") on the real server, in this process.

Django is configured once for the session (the example project's `notes`
app); each test adds a database alias of its own on a secret of its own.
Requests are played as Django plays them: `close_old_connections` at the
start and end of each (the request_started / request_finished handlers).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import OperationalError, close_old_connections, connections, transaction  # noqa: E402

import rotating_pool  # noqa: E402
from rotating_pool import LoginRejectedError  # noqa: E402
from tests.call_load import CallLoad, rotate  # noqa: E402
from tests.support import current_document  # noqa: E402

ROTATIONS = 12
WRITERS = 16


@pytest.fixture(scope="module", autouse=True)
def django_configured() -> None:
    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["examples.django_app.notes"],
            DATABASES={"default": {"ENGINE": "django.db.backends.dummy"}},
            USE_TZ=True,
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        )
        django.setup()


def add_database(arn: str, dbname: str, **conf) -> str:
    """A new alias on the secret `arn`; returns its name."""
    alias = f"db_{uuid.uuid4().hex[:8]}"
    options = {"secret_id": arn, **conf.pop("OPTIONS", {})}
    connections.settings[alias] = {
        "ENGINE": "rotating_pool.django",
        "NAME": dbname,
        "OPTIONS": options,
        **conf,
    }
    connections.configure_settings(connections.settings)
    return alias


def note_model():
    from examples.django_app.notes.models import Note  # noqa: PLC0415  (after setup)

    return Note


def request(alias: str, work) -> None:
    """One request as Django serves it: the connection checks around `work`."""
    close_old_connections()
    try:
        work()
    finally:
        close_old_connections()


def migrate(alias: str) -> None:
    call_command("migrate", "notes", database=alias, verbosity=0)


def test_connections_log_in_with_the_secret_and_psycopg_never_sees_its_options(
    make_secret, app_schema
):
    arn = make_secret("alternating")
    alias = add_database(arn, app_schema.dbname, OPTIONS={"retry": {"deadline": 10}})
    connection = connections[alias]
    params = connection.get_connection_params()
    assert not {"secret_id", "retry", "retire_after"} & params.keys()
    with connection.cursor() as cursor:
        cursor.execute("SELECT session_user")
        (user,) = cursor.fetchone()
    assert user == connection.credential_store.held().username
    connection.close()


def test_bad_options_are_improperly_configured_and_say_what_to_fix(make_secret, app_schema):
    arn = make_secret("alternating")
    conf = {"ENGINE": "rotating_pool.django", "NAME": "x", "OPTIONS": {}}
    from rotating_pool.django.base import DatabaseWrapper  # noqa: PLC0415

    with pytest.raises(ImproperlyConfigured, match="secret_id is missing"):
        DatabaseWrapper(conf, "bad")
    with pytest.raises(ImproperlyConfigured, match="PASSWORD"):
        DatabaseWrapper({**conf, "OPTIONS": {"secret_id": arn}, "PASSWORD": "hunter2"}, "bad")
    with pytest.raises(ImproperlyConfigured, match="rounds, base_delay"):
        DatabaseWrapper({**conf, "OPTIONS": {"secret_id": arn, "retry": {"tries": 3}}}, "bad")
    with pytest.raises(ImproperlyConfigured, match="retire_after"):
        DatabaseWrapper({**conf, "OPTIONS": {"secret_id": arn, "retire_after": 1}}, "bad")


def test_djangos_behaviour_with_credentials_rotating(make_secret, sm_client, app_schema):
    """Migrations, a transaction, select_for_update, a server-side cursor; a
    single-user rotation before each, so each new connection is refused first."""
    arn = make_secret("single")
    alias = add_database(arn, app_schema.dbname)
    connection = connections[alias]
    note = note_model()

    def fresh_rotation() -> None:
        connection.close()
        rotate(sm_client, arn, 1)

    fresh_rotation()
    migrate(alias)
    fresh_rotation()
    with pytest.raises(RuntimeError), transaction.atomic(using=alias):
        note.objects.using(alias).create(worker=1)
        raise RuntimeError("roll back")
    with transaction.atomic(using=alias):
        note.objects.using(alias).create(worker=2)
    assert note.objects.using(alias).count() == 1
    fresh_rotation()
    with transaction.atomic(using=alias):
        locked = list(note.objects.using(alias).select_for_update().filter(worker=2))
    assert len(locked) == 1
    fresh_rotation()
    note.objects.using(alias).bulk_create([note(worker=n) for n in range(100)])
    with transaction.atomic(using=alias):
        rows = note.objects.using(alias).iterator(chunk_size=10)
        streamed = 1 if next(rows) else 0
        with connection.cursor() as cursor:  # the iterator's named (server-side) cursor
            cursor.execute("SELECT count(*) FROM pg_cursors WHERE name LIKE '_django_curs_%%'")
            assert cursor.fetchone()[0] == 1
        streamed += sum(1 for _ in rows)
    assert streamed == 101
    stats = connection.credential_store.stats()
    assert stats.recovered_logins >= 3, stats
    connection.close()


def run_load(alias: str, sm_client, arn: str, rotations: int):
    note = note_model()

    def write(worker: int) -> None:
        def work() -> None:
            with transaction.atomic(using=alias):
                note.objects.using(alias).create(worker=worker)

        request(alias, work)

    with CallLoad(write, threads=WRITERS) as load:
        rotate(sm_client, arn, rotations)
    return load.result


DEPLOYMENTS = {
    # Persistent connections, renewed every 0.3 s: new logins are frequent.
    "persistent": {"CONN_MAX_AGE": 0.3, "CONN_HEALTH_CHECKS": True},
    # Django's psycopg pool, connections living 0.3 s.
    "pool": {"OPTIONS": {"pool": {"min_size": 4, "max_size": 16, "max_lifetime": 0.3}}},
}


@pytest.mark.slow
@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_django_survives_rotations_under_threaded_requests(
    make_secret, sm_client, proxy, monkeypatch, app_schema, strategy, deployment
):
    arn = make_secret(strategy)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    conf = json.loads(json.dumps(DEPLOYMENTS[deployment]))
    alias = add_database(arn, app_schema.dbname, **conf)
    migrate(alias)
    result = run_load(alias, sm_client, arn, ROTATIONS)
    note = note_model()
    rows = note.objects.using(alias).count()
    store = connections[alias].credential_store
    print(
        f"django {deployment} {strategy}: {result.commits} commits, {store.stats()}, "
        f"{dict(proxy.calls)}"
    )
    connections[alias].close()
    connections[alias].close_pool()
    assert result.failures == 0, dict(result.errors)
    assert result.commits > 0
    assert rows == result.commits
    assert store.stats().recovered_logins > 0
    assert proxy.calls["GetSecretValue"] <= 1 + ROTATIONS, dict(proxy.calls)
    assert proxy.calls["DescribeSecret"] <= ROTATIONS, dict(proxy.calls)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_control_django_with_static_credentials_fails(make_secret, sm_client, app_schema, strategy):
    arn = make_secret(strategy)
    doc = current_document(sm_client, arn)
    alias = f"static_{uuid.uuid4().hex[:8]}"
    connections.settings[alias] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": doc["dbname"],
        "USER": doc["username"],
        "PASSWORD": doc["password"],
        "HOST": doc["host"],
        "PORT": doc["port"],
        "CONN_MAX_AGE": 0.3,
    }
    connections.configure_settings(connections.settings)
    migrate(alias)
    result = run_load(alias, sm_client, arn, 4)
    assert result.failures > 0
    assert any("password authentication failed" in error for error in result.errors)


@pytest.mark.slow
def test_a_sqlalchemy_engine_and_django_on_one_secret_read_it_once_per_rotation(
    make_secret, sm_client, proxy, monkeypatch, app_schema
):
    arn = make_secret("single")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    alias = add_database(arn, app_schema.dbname, CONN_MAX_AGE=0.3)
    engine = rotating_pool.create_engine(
        "postgresql+psycopg://", secret_id=arn, pool_size=8, pool_recycle=0.3
    )
    assert rotating_pool.credential_store(engine) is connections[alias].credential_store
    migrate(alias)
    note = note_model()
    insert = rotating_pool_text("INSERT INTO notes_note (worker, written_at) VALUES (-1, now())")

    def write(worker: int) -> None:
        if worker % 2:
            with engine.begin() as conn:
                conn.execute(insert)
        else:
            request(alias, lambda: note.objects.using(alias).create(worker=worker))

    with CallLoad(write, threads=WRITERS) as load:
        rotate(sm_client, arn, ROTATIONS)
    result = load.result
    rows = note.objects.using(alias).count()
    connections[alias].close()
    engine.dispose()
    assert result.failures == 0, dict(result.errors)
    assert rows == result.commits
    # One set of reads per rotation for the process, not one per integration.
    assert proxy.calls["GetSecretValue"] <= 1 + ROTATIONS, dict(proxy.calls)
    assert proxy.calls["DescribeSecret"] <= ROTATIONS, dict(proxy.calls)


def rotating_pool_text(statement: str):
    import sqlalchemy  # noqa: PLC0415

    return sqlalchemy.text(statement)


@pytest.mark.slow
def test_retire_after_closes_a_persistent_connection_on_old_credentials_at_a_request_boundary(
    make_secret, sm_client, app_schema
):
    arn = make_secret("alternating")
    retire_after = 5.0
    alias = add_database(
        arn, app_schema.dbname, CONN_MAX_AGE=None, OPTIONS={"retire_after": retire_after}
    )
    connection = connections[alias]

    def user() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT session_user")
            return cursor.fetchone()[0]

    first = user()
    rotate(sm_client, arn, 1)  # alternating: the other user; nothing is refused
    rotated = time.monotonic()
    seen = first
    while seen == first and time.monotonic() - rotated < retire_after + 2.0:
        request(alias, user)  # request boundaries, as Django's signals run them
        seen = user()
        time.sleep(0.1)  # the pace of requests; retirement happens at their boundaries
    assert seen != first
    assert time.monotonic() - rotated < retire_after + 2.0
    connection.close()


def test_a_refused_login_fails_within_the_deadline_as_operational_error(
    make_secret, sm_client, app_schema, caplog
):
    arn = make_secret("alternating")
    doc = current_document(sm_client, arn)
    wrong = "wrong-" + doc["password"]
    sm_client.put_secret_value(SecretId=arn, SecretString=json.dumps({**doc, "password": wrong}))
    alias = add_database(arn, app_schema.dbname, OPTIONS={"retry": {"deadline": 4}})
    caplog.set_level("DEBUG", logger="rotating_pool")
    caplog.set_level("DEBUG", logger="django.db")
    began = time.monotonic()
    with pytest.raises(OperationalError) as raised:
        connections[alias].ensure_connection()
    assert time.monotonic() - began < 4 + 1.0
    assert isinstance(raised.value.__cause__, LoginRejectedError)
    assert wrong not in str(raised.value)
    assert all(wrong not in record.getMessage() for record in caplog.records)


def sessions_of(postgres, user: str) -> int:
    with postgres.admin_connect() as admin:
        return admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (user,)
        ).fetchone()[0]


@pytest.mark.slow
def test_retire_after_drains_djangos_pool_of_connections_on_old_credentials(
    make_secret, sm_client, app_schema, postgres
):
    arn = make_secret("alternating")
    retire_after = 5.0
    alias = add_database(
        arn,
        app_schema.dbname,
        OPTIONS={"retire_after": retire_after, "pool": {"min_size": 4, "max_lifetime": 3600}},
    )
    connection = connections[alias]
    connection.pool.open()
    connection.pool.wait()  # its 4 connections logged in
    first = connection.credential_store.held().username
    assert sessions_of(postgres, first) == 4
    rotate(sm_client, arn, 1)  # alternating: the other user; nothing is refused
    rotated = time.monotonic()
    while sessions_of(postgres, first) and time.monotonic() - rotated < retire_after + 2.0:
        time.sleep(0.1)  # polling the server's view; there is no event to wait on
    assert sessions_of(postgres, first) == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT session_user")
        assert cursor.fetchone()[0] != first
    connection.close()
    connection.close_pool()
