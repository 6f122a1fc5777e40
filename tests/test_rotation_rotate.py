"""The rotation steps, against a real PostgreSQL and Secrets Manager over HTTP.

Each test deploys its own roles, database and secrets (`deploy`), rotates,
and checks the database and the secret's labels, the way an operator would.
The server serves TLS only and every rotation login verifies it (verify-full
against the bed's CA): the secrets carry no ``ssl`` key.
"""

from __future__ import annotations

import itertools
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import sqlalchemy

import rotating_pool
from rotating_pool.rotation import (
    STEPS,
    DatabaseLoginError,
    RoleSetupError,
    RotationConfigError,
    RotationNotEnabledError,
    Rotator,
    SecuritySettings,
    StepOutcome,
    TokenNotFoundError,
    TokenNotPendingError,
    lambda_handler,
)
from rotating_pool.testing import AppSchema, LocalPostgres
from tests.rotation_env import invoke, set_lambda_env

LOCAL_LAMBDA_ARN = "arn:aws:lambda:us-east-1:123456789012:function:rotating-pool-local-rotation"
HOSTILE_ROLE = 'We\'re "The" App'
HOSTILE_USERS = ("Ünïcode \"A\" 'x'", "user B $1 %s {}")

_counter = itertools.count()


@dataclass(frozen=True)
class Deployment:
    """An app secret on a database, ready to rotate."""

    secret_id: str
    schema: AppSchema
    admin_arn: str
    strategy: str


@pytest.fixture
def postgres(tls_postgres: LocalPostgres) -> LocalPostgres:
    """Here the server is the TLS bed."""
    return tls_postgres


@pytest.fixture
def deploy(postgres: LocalPostgres, sm_client: Any) -> Callable[..., Deployment]:
    """Factory: roles and database as the seed has them, an admin secret, an app secret."""

    def make(
        strategy: str,
        *,
        role: str | None = None,
        users: tuple[str, str] | None = None,
        server: LocalPostgres | None = None,
    ) -> Deployment:
        server = server or postgres
        n = f"{next(_counter)}_{uuid.uuid4().hex[:6]}"
        role = role or f"app_{n}"
        users = users or (f"{role}_a", f"{role}_b")
        schema = server.create_app_schema(role=role, users=users, dbname=f"{role} db {n}")
        admin_arn = sm_client.create_secret(
            Name=f"rotation-tests/admin-{n}", SecretString=json.dumps(server.admin_document())
        )["ARN"]
        document = schema.secret_document(strategy, admin_arn)
        secret_arn = sm_client.create_secret(
            Name=f"rotation-tests/app-{n}", SecretString=json.dumps(document)
        )["ARN"]
        return Deployment(secret_arn, schema, admin_arn, strategy)

    return make


@pytest.fixture
def rotator(sm_client: Any, tls_postgres: LocalPostgres) -> Rotator:
    return Rotator(sm_client, security=SecuritySettings(ssl_root_cert=str(tls_postgres.ca_path)))


# -- helpers -------------------------------------------------------------------


def labels(sm_client: Any, secret_id: str) -> dict[str, list[str]]:
    """Version id -> labels, labelled versions only."""
    stages = sm_client.describe_secret(SecretId=secret_id)["VersionIdsToStages"]
    return {version: sorted(s) for version, s in stages.items() if s}


def version_count(sm_client: Any, secret_id: str) -> int:
    answer = sm_client.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)
    return len(answer["Versions"])


def read(sm_client: Any, secret_id: str, stage: str = "AWSCURRENT", **kw: str) -> dict[str, Any]:
    answer = sm_client.get_secret_value(SecretId=secret_id, VersionStage=stage, **kw)
    return dict(json.loads(answer["SecretString"]))


def all_passwords(sm_client: Any, secret_id: str) -> set[str]:
    found = set()
    for version in sm_client.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)[
        "Versions"
    ]:
        try:
            answer = sm_client.get_secret_value(SecretId=secret_id, VersionId=version["VersionId"])
        except sm_client.exceptions.ResourceNotFoundException:
            continue
        found.add(json.loads(answer["SecretString"])["password"])
    return found


def connect(document: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=document["host"],
        port=document["port"],
        dbname=document["dbname"],
        user=document["username"],
        password=document["password"],
        autocommit=True,
        connect_timeout=5,
    )


def logs_in(document: dict[str, Any]) -> bool:
    try:
        connect(document).close()
    except psycopg.OperationalError:
        return False
    return True


def session_users_through_engine(sm_client: Any, secret_id: str) -> tuple[str, str]:
    """(session_user, current_user) of a login made by the core client."""
    engine = rotating_pool.create_engine(
        "postgresql+psycopg://", secret_id=secret_id, client=sm_client
    )
    try:
        with engine.connect() as conn:
            row = conn.execute(sqlalchemy.text("SELECT session_user, current_user")).one()
        return str(row[0]), str(row[1])
    finally:
        engine.dispose()


class Crash(Exception):
    """Stands for a Lambda dying after a step."""


def crash_after(step: str) -> Callable[[str, float], None]:
    def on_step(name: str, seconds: float) -> None:
        if name == step:
            raise Crash(step)

    return on_step


# -- end to end ------------------------------------------------------------------


def test_single_rotation_changes_the_users_own_password(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any
) -> None:
    d = deploy("single")
    before = read(sm_client, d.secret_id)

    result = rotator.rotate(d.secret_id)

    after = read(sm_client, d.secret_id)
    assert result.username == after["username"] == before["username"]
    assert after["password"] != before["password"]
    assert logs_in(after) and not logs_in(before)
    assert labels(sm_client, d.secret_id)[result.token] == ["AWSCURRENT"]
    assert all(outcome is StepOutcome.PERFORMED for outcome in result.outcomes.values())
    assert session_users_through_engine(sm_client, d.secret_id)[0] == before["username"]


def test_alternating_rotation_hands_over_to_the_other_user(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any
) -> None:
    d = deploy("alternating")
    first, second = d.schema.users

    result = rotator.rotate(d.secret_id)

    current = read(sm_client, d.secret_id)
    previous = read(sm_client, d.secret_id, "AWSPREVIOUS")
    assert (result.username, current["username"], previous["username"]) == (second, second, first)
    # The old user is untouched: its sessions and logins keep working.
    assert logs_in(current) and logs_in(previous)
    assert session_users_through_engine(sm_client, d.secret_id) == (second, d.schema.role)

    again = rotator.rotate(d.secret_id)
    assert again.username == first
    assert read(sm_client, d.secret_id, "AWSPREVIOUS")["username"] == second
    assert logs_in(read(sm_client, d.secret_id))


def test_alternating_users_share_objects_through_the_group_role(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any, postgres: LocalPostgres
) -> None:
    d = deploy("alternating")
    rotator.rotate(d.secret_id)
    old, new = read(sm_client, d.secret_id, "AWSPREVIOUS"), read(sm_client, d.secret_id)

    with connect(old) as conn:
        conn.execute("CREATE TABLE made_by_old (x int)")
        conn.execute("INSERT INTO made_by_old VALUES (1)")
    with connect(new) as conn:
        conn.execute("CREATE TABLE made_by_new (x int)")
        conn.execute("INSERT INTO made_by_old VALUES (2)")
        assert conn.execute("SELECT count(*) FROM made_by_old").fetchone() == (2,)
    with connect(old) as conn:
        conn.execute("INSERT INTO made_by_new VALUES (3)")
        conn.execute("DROP TABLE made_by_new")  # only an owner may drop

    with postgres.admin_connect(d.schema.dbname) as admin:
        owners = admin.execute(
            "SELECT tablename, tableowner FROM pg_tables WHERE tablename LIKE 'made_by_%'"
        ).fetchall()
    assert owners == [("made_by_old", d.schema.role)]


def test_rotation_durations_are_reported_per_step(
    deploy: Callable[..., Deployment], rotator: Rotator
) -> None:
    d = deploy("alternating")
    seen: list[tuple[str, float]] = []

    result = rotator.rotate(d.secret_id, on_step=lambda step, s: seen.append((step, s)))

    assert [step for step, _ in seen] == list(STEPS) == list(result.durations)
    assert all(0 < seconds < 5 for _, seconds in seen)
    assert result.total == pytest.approx(sum(s for _, s in seen))


# -- crashes and retries -----------------------------------------------------------


@pytest.mark.parametrize("strategy", ["single", "alternating"])
@pytest.mark.parametrize("step", STEPS)
def test_rerun_with_the_same_token_after_a_crash_ends_correct(
    deploy: Callable[..., Deployment],
    rotator: Rotator,
    sm_client: Any,
    strategy: str,
    step: str,
) -> None:
    d = deploy(strategy)
    versions_before = version_count(sm_client, d.secret_id)
    token = str(uuid.uuid4())
    with pytest.raises(Crash):
        rotator.rotate(d.secret_id, token=token, on_step=crash_after(step))

    result = rotator.rotate(d.secret_id, token=token)

    assert result.token == token
    assert labels(sm_client, d.secret_id)[token] == ["AWSCURRENT"]
    assert version_count(sm_client, d.secret_id) == versions_before + 1
    assert logs_in(read(sm_client, d.secret_id))
    expected_user = d.schema.users[0 if strategy == "single" else 1]
    assert result.username == expected_user
    done = STEPS[: STEPS.index(step) + 1]
    if step == "finishSecret":
        assert set(result.outcomes.values()) == {StepOutcome.SKIPPED}
    else:
        assert result.outcomes["createSecret"] is StepOutcome.ALREADY_DONE
        assert result.outcomes["setSecret"] is (
            StepOutcome.ALREADY_DONE if "setSecret" in done else StepOutcome.PERFORMED
        )
        assert result.outcomes["finishSecret"] is StepOutcome.PERFORMED


def test_rotate_without_a_token_finishes_an_interrupted_rotation(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any
) -> None:
    d = deploy("single")
    token = str(uuid.uuid4())
    with pytest.raises(Crash):
        rotator.rotate(d.secret_id, token=token, on_step=crash_after("setSecret"))
    # The user's password has changed, AWSCURRENT still has the old one.
    assert not logs_in(read(sm_client, d.secret_id))

    result = rotator.rotate(d.secret_id)

    assert (result.token, result.resumed) == (token, True)
    assert logs_in(read(sm_client, d.secret_id))


def test_a_pending_label_left_on_an_old_version_is_not_taken_for_a_rotation(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any
) -> None:
    """AWSPENDING beside AWSPREVIOUS is what AWS's templates leave once another
    value is put after them: a marker, not an unfinished rotation."""
    d = deploy("alternating")
    first = rotator.rotate(d.secret_id)
    rotator.rotate(d.secret_id)
    sm_client.update_secret_version_stage(
        SecretId=d.secret_id, VersionStage="AWSPENDING", MoveToVersionId=first.token
    )

    result = rotator.rotate(d.secret_id)

    assert result.token != first.token and not result.resumed
    assert "AWSPENDING" not in labels(sm_client, d.secret_id).get(first.token, [])
    assert logs_in(read(sm_client, d.secret_id))


def test_a_stale_pending_version_is_replaced_by_a_new_token(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any
) -> None:
    d = deploy("alternating")
    stale = str(uuid.uuid4())
    with pytest.raises(Crash):
        rotator.rotate(d.secret_id, token=stale, on_step=crash_after("createSecret"))

    fresh = str(uuid.uuid4())
    result = rotator.rotate(d.secret_id, token=fresh)

    assert result.token == fresh and not result.resumed
    stages = labels(sm_client, d.secret_id)
    assert stale not in stages  # its AWSPENDING label moved to the new token
    assert stages[fresh] == ["AWSCURRENT"]
    assert logs_in(read(sm_client, d.secret_id))


def test_secrets_manager_refuses_a_new_rotation_over_a_stale_pending_one_and_the_retry_works(
    deploy: Callable[..., Deployment], sm_client: Any, lambda_env: None
) -> None:
    d = deploy("alternating")
    token = sm_client.rotate_secret(SecretId=d.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]
    invoke(d.secret_id, token, "createSecret")  # then the Lambda dies

    with pytest.raises(sm_client.exceptions.InvalidRequestException):
        sm_client.rotate_secret(SecretId=d.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)
    for step in STEPS:  # Secrets Manager's retry: the whole rotation, same token
        invoke(d.secret_id, token, step)

    assert labels(sm_client, d.secret_id)[token] == ["AWSCURRENT"]
    assert read(sm_client, d.secret_id)["username"] == d.schema.users[1]


def test_single_password_set_but_never_finished_then_abandoned_is_recovered(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any
) -> None:
    """setSecret ran, finishSecret never did, and an operator removed the
    AWSPENDING label: AWSCURRENT and AWSPREVIOUS no longer log in, the
    password that works is on an unlabelled version."""
    d = deploy("single")
    abandoned = str(uuid.uuid4())
    with pytest.raises(Crash):
        rotator.rotate(d.secret_id, token=abandoned, on_step=crash_after("testSecret"))
    sm_client.update_secret_version_stage(
        SecretId=d.secret_id, VersionStage="AWSPENDING", RemoveFromVersionId=abandoned
    )
    assert not logs_in(read(sm_client, d.secret_id))

    result = rotator.rotate(d.secret_id)

    assert result.token != abandoned and not result.resumed
    assert logs_in(read(sm_client, d.secret_id))


def test_alternating_password_set_but_never_finished_keeps_the_current_user_working(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any
) -> None:
    d = deploy("alternating")
    token = str(uuid.uuid4())
    with pytest.raises(Crash):
        rotator.rotate(d.secret_id, token=token, on_step=crash_after("setSecret"))

    assert logs_in(read(sm_client, d.secret_id))  # clients are unaffected meanwhile
    pending = read(sm_client, d.secret_id, "AWSPENDING", VersionId=token)
    assert logs_in(pending)

    result = rotator.rotate(d.secret_id, token=token)
    assert result.outcomes["setSecret"] is StepOutcome.ALREADY_DONE
    assert read(sm_client, d.secret_id) == pending


# -- the label checks -----------------------------------------------------------


def test_a_token_that_is_not_a_version_is_refused(
    deploy: Callable[..., Deployment], rotator: Rotator
) -> None:
    d = deploy("single")
    for step in STEPS:
        with pytest.raises(TokenNotFoundError, match="has no version"):
            rotator.run_step(d.secret_id, str(uuid.uuid4()), step)
    # The local driver may create the version, but only in createSecret.
    with pytest.raises(TokenNotFoundError):
        rotator.run_step(d.secret_id, str(uuid.uuid4()), "setSecret", check_enabled=False)


def test_a_token_that_is_not_pending_is_refused(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any
) -> None:
    d = deploy("single")
    first = rotator.rotate(d.secret_id)
    rotator.rotate(d.secret_id)
    assert labels(sm_client, d.secret_id)[first.token] == ["AWSPREVIOUS"]

    for step in STEPS:
        with pytest.raises(TokenNotPendingError, match="AWSPREVIOUS"):
            rotator.run_step(d.secret_id, first.token, step)


def test_a_token_already_current_means_nothing_to_do(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any
) -> None:
    d = deploy("alternating")
    current_version = next(iter(labels(sm_client, d.secret_id)))
    before = read(sm_client, d.secret_id)

    outcomes = [rotator.run_step(d.secret_id, current_version, step) for step in STEPS]

    assert outcomes == [StepOutcome.SKIPPED] * 4
    assert read(sm_client, d.secret_id) == before
    assert version_count(sm_client, d.secret_id) == 1


def test_a_step_for_a_secret_whose_rotation_is_off_is_refused(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any
) -> None:
    d = deploy("single")
    token = sm_client.rotate_secret(SecretId=d.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]
    sm_client.cancel_rotate_secret(SecretId=d.secret_id)

    with pytest.raises(RotationNotEnabledError, match="not enabled for rotation"):
        rotator.run_step(d.secret_id, token, "createSecret")


def test_an_unknown_step_is_refused(deploy: Callable[..., Deployment], rotator: Rotator) -> None:
    d = deploy("single")
    with pytest.raises(RotationConfigError, match="unknown rotation step 'setsecret'"):
        rotator.run_step(d.secret_id, "t", "setsecret")


def test_invalid_rotation_keys_fail_before_anything_changes(
    rotator: Rotator, sm_client: Any, postgres: LocalPostgres
) -> None:
    document = postgres.admin_document() | {
        "rotation_strategy": "alternating",
        "rotation_role": "app",
        "rotation_users": ["app_a"],
        "masterarn": "x",
    }
    name = f"rotation-tests/bad-{uuid.uuid4().hex[:6]}"
    sm_client.create_secret(Name=name, SecretString=json.dumps(document))

    with pytest.raises(RotationConfigError, match="exactly two") as caught:
        rotator.rotate(name)
    assert caught.value.key == "rotation_users"
    assert version_count(sm_client, name) == 1


def test_a_user_that_does_not_act_as_the_group_role_fails_test_secret(
    deploy: Callable[..., Deployment], rotator: Rotator, sm_client: Any, postgres: LocalPostgres
) -> None:
    d = deploy("alternating")
    with postgres.admin_connect() as admin:
        admin.execute(
            psycopg.sql.SQL("ALTER ROLE {} RESET role").format(
                psycopg.sql.Identifier(d.schema.users[1])
            )
        )
    before = read(sm_client, d.secret_id)

    with pytest.raises(RoleSetupError, match="bootstrap"):
        rotator.rotate(d.secret_id)
    assert read(sm_client, d.secret_id) == before  # AWSCURRENT never moved


def test_single_with_no_working_password_says_what_was_tried(
    deploy: Callable[..., Deployment], rotator: Rotator, postgres: LocalPostgres
) -> None:
    d = deploy("single")
    with postgres.admin_connect() as admin:
        admin.execute(
            psycopg.sql.SQL("ALTER ROLE {} PASSWORD NULL").format(
                psycopg.sql.Identifier(d.schema.users[0])
            )
        )

    with pytest.raises(DatabaseLoginError) as caught:
        rotator.rotate(d.secret_id)
    assert [a.source for a in caught.value.attempts] == ["AWSPENDING", "AWSCURRENT"]
    assert "password authentication failed" in str(caught.value)


# -- names, logs and secrets ---------------------------------------------------------


@pytest.mark.parametrize("strategy", ["single", "alternating"])
def test_hostile_role_and_user_names_work(
    deploy: Callable[..., Deployment],
    rotator: Rotator,
    sm_client: Any,
    postgres: LocalPostgres,
    strategy: str,
) -> None:
    role = f"{HOSTILE_ROLE} {strategy}"
    users = (f"{HOSTILE_USERS[0]} {strategy}", f"{HOSTILE_USERS[1]} {strategy}")
    d = deploy(strategy, role=role, users=users)

    for _ in range(2):
        rotator.rotate(d.secret_id)

    current = read(sm_client, d.secret_id)
    assert current["username"] == users[0]
    assert session_users_through_engine(sm_client, d.secret_id) == (users[0], role)
    if strategy == "alternating":
        assert logs_in(read(sm_client, d.secret_id, "AWSPREVIOUS"))


@pytest.fixture(scope="module")
def logging_postgres() -> Iterator[LocalPostgres]:
    with LocalPostgres(settings={"log_statement": "all"}) as server:
        yield server


@pytest.mark.parametrize("strategy", ["single", "alternating"])
def test_no_plaintext_password_reaches_the_server_log(
    deploy: Callable[..., Deployment],
    rotator: Rotator,
    sm_client: Any,
    logging_postgres: LocalPostgres,
    caplog: pytest.LogCaptureFixture,
    strategy: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="rotating_pool")
    d = deploy(strategy, server=logging_postgres)

    for _ in range(3):
        rotator.rotate(d.secret_id)

    server_log = logging_postgres.log_path.read_text(errors="replace")
    assert "SCRAM-SHA-256$4096:" in server_log  # the statements were logged, as verifiers
    passwords = all_passwords(sm_client, d.secret_id)
    assert len(passwords) == 4
    ours = "\n".join(record.getMessage() for record in caplog.records)
    for password in passwords:
        assert password not in server_log
        assert password not in ours


# -- the Lambda entry point -------------------------------------------------------


@pytest.fixture
def lambda_env(
    secretsmanager: Any, tls_postgres: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment a deployed function would have, pointed at the test bed."""
    set_lambda_env(monkeypatch, secretsmanager, tls_postgres)


@pytest.mark.parametrize("strategy", ["single", "alternating"])
def test_lambda_handler_rotates_as_secrets_manager_drives_it(
    deploy: Callable[..., Deployment], sm_client: Any, lambda_env: None, strategy: str
) -> None:
    d = deploy(strategy)
    for n in range(2):
        token = sm_client.rotate_secret(SecretId=d.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
            "VersionId"
        ]
        assert labels(sm_client, d.secret_id)[token] == ["AWSPENDING"]  # staged, empty
        for step in STEPS:
            invoke(d.secret_id, token, step)
        assert labels(sm_client, d.secret_id)[token] == ["AWSCURRENT"]
        current = read(sm_client, d.secret_id)
        assert logs_in(current)
        if strategy == "alternating":
            assert current["username"] == d.schema.users[(n + 1) % 2]
    # Secrets Manager retrying a finished rotation changes nothing.
    for step in STEPS:
        invoke(d.secret_id, token, step)
    assert read(sm_client, d.secret_id) == current


def test_lambda_handler_takes_password_settings_from_the_environment(
    deploy: Callable[..., Deployment],
    sm_client: Any,
    lambda_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PASSWORD_LENGTH", "20")
    monkeypatch.setenv("EXCLUDE_CHARACTERS", "abcdefABCDEF01234:;!")
    d = deploy("single")
    token = sm_client.rotate_secret(SecretId=d.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]

    invoke(d.secret_id, token, "createSecret")

    password = read(sm_client, d.secret_id, "AWSPENDING")["password"]
    assert len(password) == 20
    assert not set(password) & set("abcdefABCDEF01234:;!")


def test_lambda_handler_refuses_an_incomplete_event(lambda_env: None) -> None:
    with pytest.raises(RotationConfigError, match="ClientRequestToken"):
        lambda_handler({"SecretId": "x", "Step": "createSecret"}, None)


def test_lambda_handler_refuses_a_bad_number_in_the_environment(
    lambda_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PASSWORD_LENGTH", "long")
    with pytest.raises(RotationConfigError, match="PASSWORD_LENGTH"):
        invoke("x", "t", "createSecret")
