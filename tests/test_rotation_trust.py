"""Rotation trust: whoever may write the app secret gains no database role by it.

The app secret's content is the attacker's here: they know AWSCURRENT's
password (they may write the secret) and rewrite its rotation keys so that
the next rotation would give another role a password they can read. Against
the TLS bed (PostgreSQL 15), with a superuser admin and with a CREATEROLE-only
admin shaped as RDS's master user, driven as Secrets Manager drives the
Lambda (moto over HTTP). Also: the three guards of the steps, the pin, the
Unix-socket case.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rotating_pool.errors import RotatingPoolError
from rotating_pool.rotation import (
    STEPS,
    BootstrapPlan,
    DatabaseLoginError,
    RoleRefusedError,
    RotationConfigError,
    RotationStateError,
    Rotator,
    SecretStatus,
    SecuritySettings,
    Strategy,
    TLSSetupError,
    UserStatus,
    VersionStatus,
    bootstrap,
    lambda_handler,
    rotator_from_environment,
)
from rotating_pool.rotation.cli import main
from rotating_pool.rotation.database import LoginOptions
from rotating_pool.rotation.deadline import Deadline
from rotating_pool.rotation.pin import RolePin
from rotating_pool.rotation.status import CredentialSessions
from rotating_pool.testing import AppSchema, HostileServer, LocalPostgres, LocalSecretsManager
from tests.rotation_env import invoke, set_lambda_env

LOCAL_LAMBDA_ARN = "arn:aws:lambda:us-east-1:123456789012:function:rotating-pool-local-trust"
_counter = itertools.count()


def unique() -> str:
    return f"{next(_counter)}_{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class App:
    """An alternating app on the bed, its admin and its secrets."""

    schema: AppSchema
    admin: dict[str, Any]
    admin_id: str
    secret_id: str
    n: str


@pytest.fixture(params=["superuser", "createrole"], ids=["superuser-admin", "createrole-admin"])
def admin_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def lambda_env(
    secretsmanager: LocalSecretsManager,
    tls_postgres: LocalPostgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_lambda_env(monkeypatch, secretsmanager, tls_postgres)


def make_app(
    sm_client: Any, server: LocalPostgres, admin_kind: str, strategy: str = "alternating"
) -> App:
    n = unique()
    schema = server.create_app_schema(role=f"tr_{n}", users=(f"tr_{n}_a", f"tr_{n}_b"))
    admin = (
        server.admin_document()
        if admin_kind == "superuser"
        else server.create_createrole_admin(f"tr_master_{n}")
    )
    admin_id = sm_client.create_secret(Name=f"trust/admin-{n}", SecretString=json.dumps(admin))[
        "ARN"
    ]
    document = schema.secret_document(strategy, admin_id)
    secret_id = sm_client.create_secret(Name=f"trust/app-{n}", SecretString=json.dumps(document))[
        "ARN"
    ]
    return App(schema, admin, admin_id, secret_id, n)


def security(server: LocalPostgres, **kwargs: Any) -> SecuritySettings:
    return SecuritySettings(ssl_root_cert=str(server.ca_path), **kwargs)


def logs_in(server: LocalPostgres, user: str, password: str, dbname: str) -> bool:
    try:
        conn = psycopg.connect(
            host=server.host,
            port=server.port,
            user=user,
            password=password,
            dbname=dbname,
            connect_timeout=5,
            **server.tls_params(),
        )
    except psycopg.OperationalError:
        return False
    conn.close()
    return True


def documents(sm_client: Any, secret_id: str) -> list[dict[str, Any]]:
    """Every version's document that has a value."""
    found = []
    listed = sm_client.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)
    for version in listed["Versions"]:
        try:
            value = sm_client.get_secret_value(SecretId=secret_id, VersionId=version["VersionId"])
        except sm_client.exceptions.ResourceNotFoundException:
            continue  # staged by RotateSecret, no value yet
        found.append(json.loads(value["SecretString"]))
    return found


def current_document(sm_client: Any, secret_id: str) -> dict[str, Any]:
    value = sm_client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    return dict(json.loads(value["SecretString"]))


def put_current(sm_client: Any, secret_id: str, document: dict[str, Any]) -> None:
    """What the secret's writer does: PutSecretValue, AWSCURRENT by default."""
    sm_client.put_secret_value(SecretId=secret_id, SecretString=json.dumps(document))


def create_role(server: LocalPostgres, name: str, options: str, *grants: str) -> str:
    """A role with a password; `grants` are roles granted to it. Returns the password."""
    password = f"pw-{uuid.uuid4().hex}"
    with server.admin_connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} " + options + " PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        for group in grants:
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name))
            )
    return password


# -- the hostile secrets -----------------------------------------------------------


@dataclass(frozen=True)
class Victim:
    """The role the tampered secret names, its password, and the check that refuses it."""

    name: str
    password: str
    dbname: str
    changes: dict[str, Any]
    check: str


def superuser_victim(server: LocalPostgres, app: App) -> Victim:
    name = f"tr_{app.n}_root"
    # A member of the group too: only the privilege test stands in the way.
    password = create_role(server, name, "LOGIN SUPERUSER", app.schema.role)
    users = [app.schema.users[0], name]
    return Victim(name, password, "postgres", {"rotation_users": users}, "attribute")


def admin_victim(server: LocalPostgres, app: App) -> Victim:
    name = str(app.admin["username"])
    users = [app.schema.users[0], name]
    return Victim(
        name, str(app.admin["password"]), "postgres", {"rotation_users": users}, "is_admin"
    )


def outsider_victim(server: LocalPostgres, app: App) -> Victim:
    name = f"tr_{app.n}_outsider"
    password = create_role(server, name, "LOGIN")
    users = [app.schema.users[0], name]
    return Victim(name, password, "postgres", {"rotation_users": users}, "user_not_in_group")


def other_app_victim(server: LocalPostgres, app: App) -> Victim:
    other = server.create_app_schema(
        role=f"tr_{app.n}_other", users=(f"tr_{app.n}_other_a", f"tr_{app.n}_other_b")
    )
    name = other.users[0]
    changes = {"rotation_role": other.role, "rotation_users": [app.schema.users[0], name]}
    return Victim(name, other.passwords[name], other.dbname, changes, "current_not_in_group")


def predefined_member_victim(server: LocalPostgres, app: App) -> Victim:
    name = f"tr_{app.n}_reader"
    password = create_role(server, name, "LOGIN", app.schema.role, "pg_read_all_data")
    users = [app.schema.users[0], name]
    return Victim(
        name, password, "postgres", {"rotation_users": users}, "member_of_privileged_role"
    )


VICTIMS: dict[str, Callable[[LocalPostgres, App], Victim]] = {
    "superuser": superuser_victim,
    "the-admin": admin_victim,
    "login-role-outside-the-app": outsider_victim,
    "user-of-another-apps-group": other_app_victim,
    "member-of-a-pg-role": predefined_member_victim,
}


@pytest.mark.parametrize("case", list(VICTIMS))
def test_a_tampered_secret_gets_no_password_for_a_role_outside_the_app(
    sm_client: Any,
    tls_postgres: LocalPostgres,
    lambda_env: None,
    admin_kind: str,
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(sm_client, tls_postgres, admin_kind)
    victim = VICTIMS[case](tls_postgres, app)
    put_current(
        sm_client, app.secret_id, {**current_document(sm_client, app.secret_id), **victim.changes}
    )

    token = sm_client.rotate_secret(SecretId=app.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]
    refusals: dict[str, Exception] = {}
    with caplog.at_level(logging.DEBUG, logger="rotating_pool"):
        for step in STEPS:
            try:
                invoke(app.secret_id, token, step)
            except RotatingPoolError as error:  # typed, or this test errors
                refusals[step] = error
            # After each step, the role's password is what it was.
            assert logs_in(tls_postgres, victim.name, victim.password, victim.dbname), step

    refused = refusals.get("setSecret")
    assert isinstance(refused, RoleRefusedError), refusals
    assert victim.check in refused.checks and refused.role == victim.name
    assert victim.name in str(refused) and "Nothing was changed" in str(refused)
    # No version of the secret holds a password that logs in as the victim.
    for document in documents(sm_client, app.secret_id):
        if document["username"] == victim.name:
            assert not logs_in(tls_postgres, victim.name, document["password"], victim.dbname)
    # The refusal names the checks, never a password.
    for document in documents(sm_client, app.secret_id):
        assert document["password"] not in caplog.text
        assert document["password"] not in str(refused)
    assert victim.password not in caplog.text


def test_rotate_and_the_cli_refuse_the_tampered_secret_too(
    sm_client: Any,
    tls_postgres: LocalPostgres,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = make_app(sm_client, tls_postgres, "createrole")
    victim = superuser_victim(tls_postgres, app)
    put_current(
        sm_client, app.secret_id, {**current_document(sm_client, app.secret_id), **victim.changes}
    )
    with pytest.raises(RoleRefusedError, match="SUPERUSER"):
        Rotator(sm_client, security=security(tls_postgres)).rotate(app.secret_id)
    code = main(
        ["rotate", "--secret-id", app.secret_id, "--ssl-root-cert", str(tls_postgres.ca_path)]
    )
    out = capsys.readouterr()
    assert code == 2 and "refusing to change the password" in out.err
    assert logs_in(tls_postgres, victim.name, victim.password, "postgres")


@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_legitimate_rotations_pass_the_check(
    sm_client: Any, tls_postgres: LocalPostgres, admin_kind: str, strategy: str
) -> None:
    """Both users in turn (the second starts NOLOGIN), twice, with either admin."""
    app = make_app(sm_client, tls_postgres, admin_kind, strategy)
    rotator = Rotator(sm_client, security=security(tls_postgres))
    for _ in range(2 if strategy == "alternating" else 1):
        result = rotator.rotate(app.secret_id)
        document = current_document(sm_client, app.secret_id)
        assert result.username == document["username"]
        assert logs_in(tls_postgres, document["username"], document["password"], app.schema.dbname)


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


# Each: strategy, statements that make the app's own roles unfit, the check
# expected to refuse.
UNFIT_SETUPS: dict[str, tuple[str, Callable[[App], list[sql.Composed]], str]] = {
    # A NOLOGIN role with a member is a group: LOGIN would let one log in as it.
    "nologin-second-user-with-a-member": (
        "alternating",
        lambda app: [
            sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(f"tr_{app.n}_m")),
            sql.SQL("GRANT {} TO {}").format(ident(app.schema.users[1]), ident(f"tr_{app.n}_m")),
        ],
        "not_login_capable",
    ),
    "nologin-second-user-owning-a-database": (
        "alternating",
        lambda app: [
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                ident(f"tr_{app.n}_db"), ident(app.schema.users[1])
            )
        ],
        "not_login_capable",
    ),
    "group-role-that-can-log-in": (
        "alternating",
        lambda app: [sql.SQL("ALTER ROLE {} LOGIN").format(ident(app.schema.role))],
        "group_can_log_in",
    ),
    "group-role-member-of-a-pg-role": (
        "alternating",
        lambda app: [sql.SQL("GRANT pg_monitor TO {}").format(ident(app.schema.role))],
        "member_of_privileged_role",
    ),
    "user-holding-admin-option": (
        "alternating",
        lambda app: [
            sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(f"tr_{app.n}_g")),
            sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                ident(f"tr_{app.n}_g"), ident(app.schema.users[1])
            ),
        ],
        "admin_option",
    ),
    "user-member-of-a-createdb-role-through-another": (
        "alternating",
        lambda app: [
            sql.SQL("CREATE ROLE {} NOLOGIN CREATEDB").format(ident(f"tr_{app.n}_top")),
            sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(f"tr_{app.n}_mid")),
            sql.SQL("GRANT {} TO {}").format(ident(f"tr_{app.n}_top"), ident(f"tr_{app.n}_mid")),
            sql.SQL("GRANT {} TO {}").format(ident(f"tr_{app.n}_mid"), ident(app.schema.users[1])),
        ],
        "member_of_privileged_role",
    ),
    "single-user-member-of-a-pg-role": (
        "single",
        lambda app: [sql.SQL("GRANT pg_read_all_data TO {}").format(ident(app.schema.users[0]))],
        "member_of_privileged_role",
    ),
}


@pytest.mark.parametrize("case", list(UNFIT_SETUPS))
def test_an_unfit_app_role_is_refused_naming_the_check(
    sm_client: Any, tls_postgres: LocalPostgres, case: str
) -> None:
    strategy, statements, check = UNFIT_SETUPS[case]
    app = make_app(sm_client, tls_postgres, "superuser", strategy)
    with tls_postgres.admin_connect() as conn:
        for statement in statements(app):
            conn.execute(statement)
    with pytest.raises(RoleRefusedError) as refused:
        Rotator(sm_client, security=security(tls_postgres)).rotate(app.secret_id)
    assert refused.value.checks == (check,)
    if strategy == "single":
        user = app.schema.users[0]
        assert logs_in(tls_postgres, user, app.schema.passwords[user], app.schema.dbname)
    else:
        with tls_postgres.admin_connect() as conn:
            row = conn.execute(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", [app.schema.users[1]]
            ).fetchone()
        assert row == (False,)  # the second user was not given LOGIN


# -- the pin -------------------------------------------------------------------


def test_the_pin_reads_names_and_prefixes() -> None:
    pin = RolePin.from_entries(["orders_a, orders_b", "billing_*", ""])
    assert pin.allows("orders_a") and pin.allows("billing_x") and not pin.allows("orders_c")
    assert RolePin().allows("anything") and not RolePin().active
    for bad in ("*", "a*b", "**"):
        with pytest.raises(ValueError, match="prefix followed by"):
            RolePin.from_entries([bad])


@pytest.mark.parametrize("pinned", [True, False], ids=["inside-the-pin", "outside-the-pin"])
def test_the_lambdas_pin_limits_the_roles_it_rotates(
    sm_client: Any,
    tls_postgres: LocalPostgres,
    lambda_env: None,
    monkeypatch: pytest.MonkeyPatch,
    pinned: bool,
) -> None:
    app = make_app(sm_client, tls_postgres, "superuser")
    monkeypatch.setenv("ALLOWED_ROLES", f"{app.schema.role}_*" if pinned else "someone_else_*")
    token = sm_client.rotate_secret(SecretId=app.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]
    if pinned:
        for step in STEPS:
            invoke(app.secret_id, token, step)
        assert current_document(sm_client, app.secret_id)["username"] == app.schema.users[1]
        return
    with pytest.raises(RoleRefusedError, match="ALLOWED_ROLES: someone_else_") as refused:
        invoke(app.secret_id, token, "createSecret")
    assert refused.value.checks == ("pin",)
    # Nothing was staged for the token.
    with pytest.raises(sm_client.exceptions.ResourceNotFoundException):
        sm_client.get_secret_value(SecretId=app.secret_id, VersionId=token)


def test_the_cli_pin_refuses_rotate_and_bootstrap(
    sm_client: Any, tls_postgres: LocalPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(sm_client, tls_postgres, "superuser")
    ca = str(tls_postgres.ca_path)
    code = main(
        ["rotate", "--secret-id", app.secret_id, "--ssl-root-cert", ca, "--allowed-role", "x_*"]
    )
    assert code == 2 and "--allowed-role: x_*" in capsys.readouterr().err
    role = f"tr_{app.n}_new"
    code = main(
        [
            "bootstrap", "--secret-name", f"trust/boot-{app.n}", "--admin-secret-id",
            app.admin_id, "--role", role, "--ssl-root-cert", ca, "--allowed-role", "x_*",
        ]
    )  # fmt: skip
    assert code == 2 and "--allowed-role" in capsys.readouterr().err
    with tls_postgres.admin_connect() as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None


def test_bootstrap_runs_the_role_check_before_it_sets_a_password(
    sm_client: Any, tls_postgres: LocalPostgres
) -> None:
    """A user that is fine for bootstrap's own check but holds ADMIN OPTION."""
    app = make_app(sm_client, tls_postgres, "superuser")
    role, user = f"tr_{app.n}_bg", f"tr_{app.n}_bu"
    create_role(tls_postgres, user, "LOGIN")
    with tls_postgres.admin_connect() as conn:
        conn.execute(
            sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(app.schema.role), sql.Identifier(user)
            )
        )
    plan = BootstrapPlan(
        secret_name=f"trust/boot-{app.n}",
        admin_secret_id=app.admin_id,
        strategy=Strategy.ALTERNATING,
        role=role,
        users=(user, f"tr_{app.n}_bv"),
    )
    with pytest.raises(RoleRefusedError) as refused:
        bootstrap(plan, sm_client, security=security(tls_postgres))
    assert refused.value.checks == ("admin_option",)
    with pytest.raises(sm_client.exceptions.ResourceNotFoundException):
        sm_client.describe_secret(SecretId=plan.secret_name)


# -- the three guards of the steps --------------------------------------------------


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer("cleartext") as server:
        yield server


def test_the_admin_acts_only_once_awscurrent_logs_in(
    sm_client: Any, tls_postgres: LocalPostgres
) -> None:
    app = make_app(sm_client, tls_postgres, "superuser")
    put_current(
        sm_client,
        app.secret_id,
        {**current_document(sm_client, app.secret_id), "password": "x" * 20},
    )
    with pytest.raises(DatabaseLoginError, match="AWSCURRENT does not log in"):
        Rotator(sm_client, security=security(tls_postgres)).rotate(app.secret_id)
    second = app.schema.users[1]
    with tls_postgres.admin_connect() as conn:
        row = conn.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", [second]
        ).fetchone()
    assert row == (False,)  # the admin did not touch it


def stage_pending(sm_client: Any, secret_id: str, changes: dict[str, Any]) -> str:
    """An AWSPENDING version made from AWSCURRENT by createSecret, then edited."""
    rotator_token = str(uuid.uuid4())
    document = {**current_document(sm_client, secret_id), **changes}
    sm_client.put_secret_value(
        SecretId=secret_id,
        ClientRequestToken=rotator_token,
        SecretString=json.dumps(document),
        VersionStages=["AWSPENDING"],
    )
    return rotator_token


@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_a_pending_version_naming_another_server_is_refused_before_any_login(
    sm_client: Any, tls_postgres: LocalPostgres, hostile: HostileServer, strategy: str
) -> None:
    app = make_app(sm_client, tls_postgres, "superuser", strategy)
    user = app.schema.users[1 if strategy == "alternating" else 0]
    token = stage_pending(
        sm_client,
        app.secret_id,
        {"host": hostile.host, "port": hostile.port, "username": user, "password": "p" * 32},
    )
    rotator = Rotator(sm_client, security=security(tls_postgres))
    with pytest.raises(RotationStateError, match="does not move a secret to another server"):
        rotator.run_step(app.secret_id, token, "setSecret", check_enabled=False)
    assert hostile.connections == 0


def test_single_never_tries_an_older_version_naming_another_server(
    sm_client: Any, tls_postgres: LocalPostgres, hostile: HostileServer
) -> None:
    app = make_app(sm_client, tls_postgres, "superuser", "single")
    good = current_document(sm_client, app.secret_id)
    # AWSCURRENT no longer logs in; AWSPREVIOUS names the attacker's server;
    # the first version, now unlabelled, still logs in.
    put_current(sm_client, app.secret_id, {**good, "password": "x" * 20})
    sm_client.put_secret_value(
        SecretId=app.secret_id,
        SecretString=json.dumps({**good, "host": hostile.host, "port": hostile.port}),
        VersionStages=["AWSPREVIOUS"],
    )
    result = Rotator(sm_client, security=security(tls_postgres)).rotate(app.secret_id)
    assert result.username == good["username"]
    assert hostile.connections == 0


# -- Unix sockets -----------------------------------------------------------------


@pytest.mark.parametrize("host", ["socket-directory", "no-host"])
def test_a_socket_host_is_refused_without_ssl_false(
    sm_client: Any, tls_postgres: LocalPostgres, host: str
) -> None:
    """A socket directory, or no host at all (libpq's default socket)."""
    app = make_app(sm_client, tls_postgres, "superuser", "single")
    document = current_document(sm_client, app.secret_id)
    if host == "no-host":
        del document["host"]
    else:
        document["host"] = str(tls_postgres.directory)
    put_current(sm_client, app.secret_id, document)
    with pytest.raises(TLSSetupError, match="Unix-domain socket"):
        Rotator(sm_client, security=security(tls_postgres)).rotate(app.secret_id)
    user = app.schema.users[0]
    assert logs_in(tls_postgres, user, app.schema.passwords[user], app.schema.dbname)


def test_a_socket_host_with_ssl_false_rotates_and_says_tls_is_off(
    sm_client: Any, tls_postgres: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(sm_client, tls_postgres, "superuser", "single")
    document = {**current_document(sm_client, app.secret_id), "host": str(tls_postgres.directory)}
    put_current(sm_client, app.secret_id, {**document, "ssl": False})
    with caplog.at_level(logging.INFO, logger="rotating_pool.rotation"):
        Rotator(sm_client, security=security(tls_postgres)).rotate(app.secret_id)
    assert 'login ("ssl": false in the secret)' in caplog.text and "TLS is off" in caplog.text
    new = current_document(sm_client, app.secret_id)
    assert logs_in(tls_postgres, new["username"], new["password"], app.schema.dbname)


# -- typed errors for bad input ---------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        ["SecretId", "ClientRequestToken", "Step"],
        None,
        "createSecret",
        {"SecretId": 5, "ClientRequestToken": "t", "Step": "createSecret"},
        {"SecretId": "s", "ClientRequestToken": "t", "Step": ["createSecret"]},
    ],
    ids=["list", "none", "string", "number-secret-id", "list-step"],
)
def test_a_bad_event_shape_is_a_typed_error(lambda_env: None, event: Any) -> None:
    with pytest.raises(RotationConfigError, match="invoked by Secrets Manager with"):
        lambda_handler(event, None)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "0", "-1", "1e9"])
def test_a_non_finite_or_out_of_range_connect_timeout_is_a_typed_error(
    lambda_env: None, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CONNECT_TIMEOUT", value)
    with pytest.raises(RotationConfigError) as refused:
        rotator_from_environment()
    assert refused.value.key == "CONNECT_TIMEOUT"  # the setting to fix


@pytest.mark.parametrize("value", ["nan", "inf", "32.5"])
def test_a_non_integer_password_length_is_a_typed_error(
    lambda_env: None, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PASSWORD_LENGTH", value)
    with pytest.raises(RotationConfigError, match="PASSWORD_LENGTH"):
        rotator_from_environment()


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf, 0.0])
def test_non_finite_seconds_are_refused_everywhere_they_are_taken(seconds: float) -> None:
    with pytest.raises(RotationConfigError):
        Rotator(connect_timeout=seconds)
    with pytest.raises(RotationConfigError):
        LoginOptions(SecuritySettings(), connect_timeout=seconds)
    if seconds != 0.0:
        with pytest.raises(RotationConfigError, match="time_left"):
            Deadline.after(seconds)


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--secret-id", "s", "--connect-timeout", "nan"],
        ["rotate", "--secret-id", "s", "--connect-timeout", "inf"],
        ["rotate", "--secret-id", "s", "--pause-before-finish", "inf"],
        ["rotate", "--secret-id", "s", "--pause-before-finish", "nan"],
    ],
)
def test_the_cli_refuses_non_finite_seconds(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "is not a number of seconds" in capsys.readouterr().err


def test_a_pin_entry_that_pins_nothing_is_a_typed_error(
    lambda_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOWED_ROLES", "app_*, *")
    with pytest.raises(RotationConfigError, match="ALLOWED_ROLES"):
        rotator_from_environment()


# -- status shows names and server messages with control characters escaped ---------

ESCAPES = "\x1b]0;owned\x07\x1b[2J\r\u202e"
CONTROLS = [ch for ch in ESCAPES if not ch.isprintable()]


def test_status_text_escapes_control_characters_and_json_keeps_them() -> None:
    status = SecretStatus(
        secret_id="s",
        arn="arn:x",
        name=f"name{ESCAPES}",
        rotation_enabled=True,
        strategy="alternating",
        role=f"role{ESCAPES}",
        problem=f"problem{ESCAPES}",
        versions=(
            VersionStatus("v1", ("AWSCURRENT",), None, f"user{ESCAPES}", False, f"no{ESCAPES}"),
        ),
        users=(UserStatus(f"user{ESCAPES}", True, True, ("AWSCURRENT",), 1),),
        database_error=f"db{ESCAPES}",
        credential_sessions=(CredentialSessions(f"user{ESCAPES}", 1, 0),),
    )
    text = status.render()
    for ch in CONTROLS:
        assert ch not in text
    assert "\\x1b]0;owned\\x07" in text and "\\u202e" in text
    assert status.to_json()["versions"][0]["username"] == f"user{ESCAPES}"
    assert json.loads(json.dumps(status.to_json()))["role"] == f"role{ESCAPES}"


def test_status_refuses_a_hostile_username_without_echoing_its_escapes(
    sm_client: Any, tls_postgres: LocalPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    # The secret parser refuses control characters in a name (SecretFormatError,
    # naming the key): the escapes never reach a login, a server message or the
    # terminal. The renderer's own escaping is tested above.
    app = make_app(sm_client, tls_postgres, "superuser")
    hostile_user = f"x{ESCAPES}"
    put_current(
        sm_client,
        app.secret_id,
        {**current_document(sm_client, app.secret_id), "username": hostile_user},
    )
    code = main(
        ["status", "--secret-id", app.secret_id, "--ssl-root-cert", str(tls_postgres.ca_path)]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert "key 'username' holds a control character" in captured.err
    for ch in CONTROLS:
        assert ch not in captured.out
        assert ch not in captured.err
