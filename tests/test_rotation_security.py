"""Rotation security: a password goes only to the right server, over verified TLS.

Against the TLS bed (PostgreSQL serving TLS only, its own CA), a plain server,
a hostile server stand-in (`HostileServer`: asks for a cleartext password and
records what it gets, or never answers) and moto's Secrets Manager and RDS APIs.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rotating_pool.rotation import (
    AdminHostError,
    AuthenticationMethodError,
    BootstrapPlan,
    PrivilegedRoleError,
    RoleSetupError,
    RotationConfigError,
    RotationTakenOverError,
    Rotator,
    SecuritySettings,
    SettingsMismatchError,
    StepDeadlineError,
    TLSSetupError,
    bootstrap,
    rotator_from_environment,
    secret_status,
)
from rotating_pool.rotation.cli import main
from rotating_pool.rotation.hosts import admin_login
from rotating_pool.rotation.security import check_libpq
from rotating_pool.testing import (
    AppSchema,
    CertificateAuthority,
    FaultProxy,
    HostileServer,
    LocalPostgres,
    LocalSecretsManager,
)
from tests.rotation_env import invoke, set_lambda_env

LOCAL_LAMBDA_ARN = "arn:aws:lambda:us-east-1:123456789012:function:rotating-pool-local-security"
_counter = itertools.count()


@dataclass(frozen=True)
class App:
    """An app secret and its admin secret."""

    secret_id: str
    admin_id: str
    schema: AppSchema


def unique() -> str:
    return f"{next(_counter)}_{uuid.uuid4().hex[:6]}"


def create(sm_client: Any, name: str, document: dict[str, Any], **kwargs: Any) -> str:
    return str(
        sm_client.create_secret(Name=name, SecretString=json.dumps(document), **kwargs)["ARN"]
    )


def make_app(
    sm_client: Any,
    server: LocalPostgres,
    strategy: str = "alternating",
    *,
    admin: dict[str, Any] | None = None,
    app: dict[str, Any] | None = None,
    admin_tags: list[dict[str, str]] | None = None,
) -> App:
    """Roles on `server`, an admin secret (its document updated with `admin`, a
    None value removing a key) and an app secret (updated with `app`)."""
    n = unique()
    schema = server.create_app_schema(role=f"sec_{n}", users=(f"sec_{n}_a", f"sec_{n}_b"))
    admin_doc = without_nones({**server.admin_document(), **(admin or {})})
    admin_id = create(sm_client, f"security/admin-{n}", admin_doc, Tags=admin_tags or [])
    app_doc = without_nones({**schema.secret_document(strategy, admin_id), **(app or {})})
    return App(create(sm_client, f"security/app-{n}", app_doc), admin_id, schema)


def without_nones(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if v is not None}


def tls_security(server: LocalPostgres, **kwargs: Any) -> SecuritySettings:
    return SecuritySettings(ssl_root_cert=str(server.ca_path), **kwargs)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


class LambdaContext:
    """A fake Lambda context: only the remaining time."""

    def __init__(self, seconds: float) -> None:
        self._until = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._until - time.monotonic()) * 1000))


@pytest.fixture
def lambda_env(
    secretsmanager: LocalSecretsManager,
    tls_postgres: LocalPostgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_lambda_env(monkeypatch, secretsmanager, tls_postgres)


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer("cleartext") as server:
        yield server


# -- the admin password goes only to the admin's server ------------------------------


@pytest.mark.parametrize("ssl", [None, False], ids=["tls", "ssl-false"])
@pytest.mark.parametrize("admin_host", [None, "127.0.0.2"], ids=["no-host", "other-host"])
def test_a_hostile_app_host_never_gets_the_admin_password(
    sm_client: Any,
    tls_postgres: LocalPostgres,
    lambda_env: None,
    hostile: HostileServer,
    capsys: pytest.CaptureFixture[str],
    ssl: bool | None,
    admin_host: str | None,
) -> None:
    """The app secret names an attacker's server; the admin secret names no
    host (as an RDS master secret without its tag), or another host."""
    app = make_app(
        sm_client,
        tls_postgres,
        admin={"host": admin_host, "port": None, "dbname": None},
        app={"host": hostile.host, "port": hostile.port, "ssl": ssl},
    )
    expected = "has no 'host'" if admin_host is None else "the admin secret is for 127.0.0.2:5432"
    ca = str(tls_postgres.ca_path)

    token = sm_client.rotate_secret(SecretId=app.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]
    with pytest.raises(AdminHostError, match=expected) as refused:
        invoke(app.secret_id, token, "createSecret")
    assert refused.value.secret_id == app.secret_id
    # As if createSecret had run before the app secret was tampered with.
    current = json.loads(sm_client.get_secret_value(SecretId=app.secret_id)["SecretString"])
    pending = {**current, "username": app.schema.users[1], "password": "new-password"}
    sm_client.put_secret_value(
        SecretId=app.secret_id, ClientRequestToken=token, SecretString=json.dumps(pending),
        VersionStages=["AWSPENDING"],
    )  # fmt: skip
    with pytest.raises(AdminHostError, match=expected):
        invoke(app.secret_id, token, "setSecret")
    sm_client.update_secret_version_stage(
        SecretId=app.secret_id, VersionStage="AWSPENDING", RemoveFromVersionId=token
    )
    with pytest.raises(AdminHostError, match=expected):
        Rotator(sm_client, security=tls_security(tls_postgres)).rotate(app.secret_id)
    code, rotate_out = run_cli(
        capsys, "rotate", "--secret-id", app.secret_id, "--ssl-root-cert", ca
    )
    assert code == 2 and "AdminHostError" not in rotate_out and expected in rotate_out
    code, status_out = run_cli(
        capsys, "status", "--secret-id", app.secret_id, "--ssl-root-cert", ca
    )
    assert code == 0

    # No step, `rotate` or `status` logged in to it as the admin; nothing sent a password.
    assert [s.user for s in hostile.startups if s.user == "postgres"] == []
    assert hostile.passwords == []
    if ssl is False:  # the app users' own logins reached it, and refused cleartext
        assert {s.user for s in hostile.startups} <= set(app.schema.users)
        assert "server requested a cleartext password" in status_out
    else:
        assert hostile.startups == []  # verify-full: no TLS, no StartupMessage
    for text in (rotate_out, status_out):
        assert tls_postgres.admin_password not in text


def test_status_does_not_log_in_as_the_admin_on_another_server(
    sm_client: Any, tls_postgres: LocalPostgres, postgres: LocalPostgres
) -> None:
    """No version logs in (a wrong password on the plain server the app secret
    names), so status falls back to the admin session: the admin secret is for
    the TLS bed, so it refuses, and says why."""
    app = make_app(
        sm_client,
        tls_postgres,
        app={"port": postgres.port, "ssl": False, "password": "wrong"},
    )
    status = secret_status(sm_client, app.secret_id, security=tls_security(tls_postgres))
    assert [v.logs_in for v in status.versions] == [False]
    assert status.database_error is not None
    assert f"names the server 127.0.0.1:{postgres.port}" in status.database_error
    assert all(u.exists is None for u in status.users)  # no admin session was opened


def test_a_single_user_login_refuses_to_send_a_cleartext_password(
    sm_client: Any, tls_postgres: LocalPostgres, hostile: HostileServer
) -> None:
    app = make_app(
        sm_client,
        tls_postgres,
        "single",
        app={"host": hostile.host, "port": hostile.port, "ssl": False},
    )
    with pytest.raises(AuthenticationMethodError, match="no password was sent"):
        Rotator(sm_client, security=tls_security(tls_postgres)).rotate(app.secret_id)
    assert hostile.startups and hostile.passwords == []


def test_the_allow_list_admits_another_name_for_the_admins_server(
    sm_client: Any, tls_postgres: LocalPostgres
) -> None:
    """`localhost` is the bed's server by another name; it is allowed only when
    listed, and then TLS still refuses it: the certificate is for 127.0.0.1."""
    app = make_app(sm_client, tls_postgres, app={"host": "localhost"})
    with pytest.raises(AdminHostError, match="names the server localhost:"):
        Rotator(sm_client, security=tls_security(tls_postgres)).rotate(app.secret_id)
    allowing = tls_security(tls_postgres, allowed_hosts=frozenset({"LOCALHOST."}))
    with pytest.raises(TLSSetupError, match='does not match host name "localhost"'):
        Rotator(sm_client, security=allowing).rotate(app.secret_id)


def test_host_names_compare_without_case_trailing_dot_or_default_port(
    sm_client: Any, tls_postgres: LocalPostgres
) -> None:
    app = make_app(sm_client, tls_postgres)
    admin = admin_login(sm_client, app.admin_id, rds=None, secret_id="x", dbname=None)
    security = SecuritySettings()
    admin.server.check_app_host("x", "127.0.0.1.", tls_postgres.port, security, what="t")
    with pytest.raises(AdminHostError, match=r"127\.0\.0\.1:5432"):
        admin.server.check_app_host("x", "127.0.0.1", None, security, what="t")


# -- RDS-managed admin secrets (moto's RDS API; the fake endpoints are never resolved) --


@pytest.fixture
def rds(secretsmanager: LocalSecretsManager) -> Any:
    return secretsmanager.rds_client()


def rds_instance(rds: Any, identifier: str, **password: Any) -> dict[str, Any]:
    """A moto RDS PostgreSQL instance (its endpoint is a fake name: never resolved)."""
    return dict(
        rds.create_db_instance(
            DBInstanceIdentifier=identifier, Engine="postgres", DBInstanceClass="db.t3.micro",
            MasterUsername="postgres", AllocatedStorage=20, **password,
        )["DBInstance"]
    )  # fmt: skip


def test_an_rds_master_secret_is_found_through_its_instance_tag(
    sm_client: Any, rds: Any, tls_postgres: LocalPostgres
) -> None:
    n = unique().replace("_", "-")
    instance = rds_instance(rds, f"db-{n}", ManageMasterUserPassword=True)
    replica = rds.create_db_instance_read_replica(
        DBInstanceIdentifier=f"db-{n}-replica", SourceDBInstanceIdentifier=f"db-{n}"
    )["DBInstance"]
    # The master secret RDS made carries only its tags for a host.
    master_arn = instance["MasterUserSecret"]["SecretArn"]
    tags = sm_client.describe_secret(SecretId=master_arn)["Tags"]
    assert {t["Key"] for t in tags} >= {"aws:rds:primaryDBInstanceArn"}
    sm_client.put_secret_value(
        SecretId=master_arn, SecretString=json.dumps({"username": "postgres", "password": "pw"})
    )

    admin = admin_login(sm_client, master_arn, lambda: rds, secret_id="app", dbname="app")
    endpoint = instance["Endpoint"]["Address"]
    assert (admin.server.address.host, admin.server.address.port) == (endpoint, 5432)
    assert admin.credentials.host == endpoint and admin.use_tls
    security = SecuritySettings()
    admin.server.check_app_host("app", endpoint.upper(), 5432, security, what="t")
    admin.server.check_app_host("app", replica["Endpoint"]["Address"], None, security, what="t")
    with pytest.raises(AdminHostError, match=f"RDS DB instance {instance['DBInstanceArn']}"):
        admin.server.check_app_host("app", "127.0.0.1", tls_postgres.port, security, what="t")


def test_an_rds_cluster_secret_is_found_and_its_reader_endpoint_accepted(
    sm_client: Any, rds: Any
) -> None:
    n = unique().replace("_", "-")
    cluster = rds.create_db_cluster(
        DBClusterIdentifier=f"cl-{n}", Engine="aurora-postgresql",
        MasterUsername="postgres", MasterUserPassword="x" * 12,
    )["DBCluster"]  # fmt: skip
    # A tag key in another case, as AWS compares them case-insensitively.
    master = create(
        sm_client, f"security/cluster-master-{n}", {"username": "postgres", "password": "pw"},
        Tags=[{"Key": "aws:rds:primarydbclusterarn", "Value": cluster["DBClusterArn"]}],
    )  # fmt: skip
    admin = admin_login(sm_client, master, lambda: rds, secret_id="app", dbname=None)
    assert admin.server.address.host == cluster["Endpoint"]
    admin.server.check_app_host(
        "app", cluster["ReaderEndpoint"], 5432, SecuritySettings(), what="t"
    )


def test_a_rotation_whose_app_host_is_not_the_rds_endpoint_is_refused_before_any_login(
    sm_client: Any, rds: Any, tls_postgres: LocalPostgres
) -> None:
    n = unique().replace("_", "-")
    instance = rds_instance(rds, f"db-{n}", MasterUserPassword="x" * 12)
    app = make_app(
        sm_client,
        tls_postgres,
        admin={"host": None, "port": None},
        admin_tags=[{"Key": "aws:rds:primaryDBInstanceArn", "Value": instance["DBInstanceArn"]}],
    )
    rotator = Rotator(sm_client, security=tls_security(tls_postgres), rds_client=rds)
    with pytest.raises(AdminHostError, match=instance["Endpoint"]["Address"]):
        rotator.run_step(app.secret_id, str(uuid.uuid4()), "createSecret", check_enabled=False)
    versions = sm_client.list_secret_version_ids(SecretId=app.secret_id)["Versions"]
    assert len(versions) == 1  # nothing staged


# -- verified TLS ----------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["single", "alternating"])
def test_a_certificate_from_another_ca_is_refused(
    sm_client: Any,
    tls_postgres: LocalPostgres,
    lambda_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
) -> None:
    other = CertificateAuthority.create("another CA").write_cert(tmp_path / "other.pem")
    monkeypatch.setenv("SSL_ROOT_CERT", str(other))
    app = make_app(sm_client, tls_postgres, strategy)
    token = sm_client.rotate_secret(SecretId=app.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]
    invoke(app.secret_id, token, "createSecret")
    with pytest.raises(TLSSetupError, match=r"certificate verify failed.*SSL_ROOT_CERT"):
        invoke(app.secret_id, token, "setSecret")


def test_no_plaintext_fall_back_when_the_secret_has_no_ssl_key(
    sm_client: Any, postgres: LocalPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(sm_client, postgres, "single", app={"ssl": None})

    code, out = run_cli(capsys, "rotate", "--secret-id", app.secret_id)
    assert code == 2
    assert "server does not support SSL" in out and "--ssl-root-cert" in out


def test_ssl_false_works_against_a_plain_server_and_says_tls_is_off(
    sm_client: Any, postgres: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(sm_client, postgres, "alternating")
    caplog.set_level(logging.INFO, logger="rotating_pool.rotation")
    for _ in range(2):
        result = Rotator(sm_client).rotate(app.secret_id)
    assert result.username == app.schema.users[0]
    off = [r for r in caplog.records if "TLS is off" in r.getMessage()]
    assert any("admin login" in r.getMessage() for r in off)
    assert any("AWSPENDING" in r.getMessage() for r in off)
    # Every such login says so; the first of each kind as a WARNING.
    warned = {r.getMessage() for r in off if r.levelno == logging.WARNING}
    assert len(warned) == len({r.getMessage() for r in off}) < len(off)


def test_a_libpq_older_than_16_is_refused_naming_the_binary_wheel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(psycopg.pq, "version", lambda: 150008)
    with pytest.raises(TLSSetupError, match=r"libpq 15\.8 .*psycopg\[binary\]"):
        check_libpq()


# -- inside the Lambda's time ------------------------------------------------------------


@pytest.mark.parametrize("seconds", [2.0, 3.6])
def test_a_step_fails_within_the_lambdas_time_when_the_database_does_not_answer(
    sm_client: Any, tls_postgres: LocalPostgres, lambda_env: None, seconds: float
) -> None:
    """With 2 s left a login cannot fit (psycopg waits at least 2 s): refused
    at once. With 3.6 s left the login waits 3 s, not CONNECT_TIMEOUT's 5."""
    with HostileServer("silent") as silent:
        app = make_app(
            sm_client, tls_postgres, "single", app={"host": silent.host, "port": silent.port}
        )
        token = sm_client.rotate_secret(SecretId=app.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
            "VersionId"
        ]
        invoke(app.secret_id, token, "createSecret")
        context = LambdaContext(seconds)
        started = time.monotonic()
        with pytest.raises(StepDeadlineError, match="Secrets Manager retries"):
            invoke(app.secret_id, token, "setSecret", context)
        elapsed = time.monotonic() - started
        assert elapsed < seconds
        assert (silent.connections > 0) == (seconds > 3)


@pytest.fixture
def lambda_via_proxy(
    lambda_env: None, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> FaultProxy:
    """The Lambda's Secrets Manager calls go through the fault proxy."""
    monkeypatch.setenv("SECRETS_MANAGER_ENDPOINT", proxy.endpoint_url)
    return proxy


def start_rotation(sm_client: Any, app: App) -> str:
    """RotateSecret's token, after the Lambda's createSecret."""
    token = sm_client.rotate_secret(SecretId=app.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]
    invoke(app.secret_id, token, "createSecret")
    return str(token)


def test_a_step_fails_within_the_lambdas_time_when_secrets_manager_does_not_answer(
    sm_client: Any, tls_postgres: LocalPostgres, lambda_via_proxy: FaultProxy
) -> None:
    """The client's own limits (5 s to connect, 10 s to read, 3 attempts) would
    let one hung call outlast a 3 s invocation: the step stops in time instead."""
    app = make_app(sm_client, tls_postgres, "single")
    token = start_rotation(sm_client, app)
    lambda_via_proxy.hang()
    started = time.monotonic()
    with pytest.raises(StepDeadlineError, match="Secrets Manager DescribeSecret did not answer"):
        invoke(app.secret_id, token, "setSecret", LambdaContext(3))
    assert time.monotonic() - started < 3


def finish_held(sm_client: Any, server: LocalPostgres, proxy: FaultProxy) -> tuple[App, str]:
    """A rotation whose finishSecret ran out of time (3 s) on its held
    UpdateSecretVersionStage; the call is still held at the proxy."""
    app = make_app(sm_client, server, "alternating")
    token = start_rotation(sm_client, app)
    for step in ("setSecret", "testSecret"):
        invoke(app.secret_id, token, step)
    proxy.hold("UpdateSecretVersionStage")
    started = time.monotonic()
    with pytest.raises(StepDeadlineError, match="UpdateSecretVersionStage did not answer"):
        invoke(app.secret_id, token, "finishSecret", LambdaContext(3))
    assert time.monotonic() - started < 3
    return app, token


def assert_finished(sm_client: Any, app: App, token: str) -> None:
    stages = {
        v["VersionId"]: set(v.get("VersionStages", []))
        for v in sm_client.list_secret_version_ids(SecretId=app.secret_id)["Versions"]
    }
    assert stages[token] == {"AWSCURRENT"}
    assert sum("AWSPREVIOUS" in s for s in stages.values()) == 1
    assert not any("AWSPENDING" in s for s in stages.values())


def test_a_step_call_that_lands_after_its_deadline_is_finished_by_the_retry(
    sm_client: Any, tls_postgres: LocalPostgres, lambda_via_proxy: FaultProxy
) -> None:
    """The late call moves AWSCURRENT; Secrets Manager's retry takes AWSPENDING off."""
    app, token = finish_held(sm_client, tls_postgres, lambda_via_proxy)
    late = [t for t in threading.enumerate() if t.name == "rotating-pool-step-call"]
    lambda_via_proxy.release()
    for thread in late:
        thread.join(10)
    assert sm_client.get_secret_value(SecretId=app.secret_id)["VersionId"] == token
    invoke(app.secret_id, token, "finishSecret", LambdaContext(30))
    assert_finished(sm_client, app, token)


def test_a_retry_racing_the_late_call_of_a_step_finishes_the_rotation(
    sm_client: Any, tls_postgres: LocalPostgres, lambda_via_proxy: FaultProxy
) -> None:
    """Both moves reach Secrets Manager together; whichever lands second fails,
    and the retry still finishes."""
    app, token = finish_held(sm_client, tls_postgres, lambda_via_proxy)
    errors: list[BaseException] = []

    def retry() -> None:
        try:
            invoke(app.secret_id, token, "finishSecret", LambdaContext(30))
        except BaseException as error:
            errors.append(error)

    retrying = threading.Thread(target=retry)
    retrying.start()
    assert lambda_via_proxy.wait_held(2, timeout=10)
    lambda_via_proxy.release()
    retrying.join(30)
    assert not retrying.is_alive() and not errors
    assert_finished(sm_client, app, token)


def test_a_step_fails_within_its_time_when_the_rds_api_does_not_answer(
    sm_client: Any, secretsmanager: LocalSecretsManager, tls_postgres: LocalPostgres
) -> None:
    """The admin server lookup of an RDS-managed master secret (DescribeDBInstances)."""
    instance_arn = "arn:aws:rds:us-east-1:123456789012:db:hung"
    app = make_app(
        sm_client,
        tls_postgres,
        admin={"host": None, "port": None},
        admin_tags=[{"Key": "aws:rds:primaryDBInstanceArn", "Value": instance_arn}],
    )
    with HostileServer("silent") as silent:
        rds = secretsmanager.rds_client(f"http://{silent.host}:{silent.port}")
        rotator = Rotator(sm_client, security=tls_security(tls_postgres), rds_client=rds)
        started = time.monotonic()
        with pytest.raises(StepDeadlineError, match="RDS DescribeDBInstances did not answer"):
            rotator.run_step(
                app.secret_id, str(uuid.uuid4()), "createSecret", check_enabled=False, time_left=3
            )
        assert time.monotonic() - started < 3
        assert silent.connections == 1


# -- settings from AWSCURRENT, takeovers, hints ----------------------------------------


def test_pending_rotation_keys_that_disagree_with_current_are_refused(
    sm_client: Any, tls_postgres: LocalPostgres, lambda_env: None
) -> None:
    app = make_app(sm_client, tls_postgres)
    other_admin = create(
        sm_client, f"security/other-admin-{unique()}", tls_postgres.admin_document()
    )
    token = sm_client.rotate_secret(SecretId=app.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]
    current = json.loads(sm_client.get_secret_value(SecretId=app.secret_id)["SecretString"])
    staged = {**current, "username": app.schema.users[1], "masterarn": other_admin}
    sm_client.put_secret_value(
        SecretId=app.secret_id, ClientRequestToken=token, SecretString=json.dumps(staged),
        VersionStages=["AWSPENDING"],
    )  # fmt: skip
    invoke(app.secret_id, token, "createSecret")  # keeps the value already there
    for step in ("setSecret", "testSecret"):
        with pytest.raises(SettingsMismatchError, match="'masterarn'"):
            invoke(app.secret_id, token, step)


def test_a_rotation_taken_over_by_another_token_stops_with_a_clear_error(
    sm_client: Any, tls_postgres: LocalPostgres, lambda_env: None
) -> None:
    app = make_app(sm_client, tls_postgres)
    token = sm_client.rotate_secret(SecretId=app.secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]
    invoke(app.secret_id, token, "createSecret")
    # `rotating-pool rotate --token NEW` while the Lambda is between steps.
    Rotator(sm_client, security=tls_security(tls_postgres)).rotate(
        app.secret_id, token=str(uuid.uuid4())
    )
    for step in ("setSecret", "testSecret", "finishSecret"):
        with pytest.raises(RotationTakenOverError, match="another rotation took over"):
            invoke(app.secret_id, token, step)


def test_the_role_setup_hint_quotes_the_names(sm_client: Any, tls_postgres: LocalPostgres) -> None:
    app = make_app(sm_client, tls_postgres)
    user = app.schema.users[1]
    with tls_postgres.admin_connect() as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER ROLE {} RESET role").format(psycopg.sql.Identifier(user))
        )
    with pytest.raises(RoleSetupError) as caught:
        Rotator(sm_client, security=tls_security(tls_postgres)).rotate(app.secret_id)
    role = app.schema.role
    assert f'GRANT "{role}" TO "{user}"' in str(caught.value)
    assert f"ALTER ROLE \"{user}\" SET role TO '{role}'" in str(caught.value)


# -- bootstrap checks existing roles before it changes anything --------------------------


def roles_state(server: LocalPostgres, names: list[str]) -> dict[str, tuple[Any, ...]]:
    """Each existing role's attributes, password verifier and memberships."""
    with server.admin_connect() as conn:
        rows = conn.execute(
            "SELECT r.rolname, r.rolcanlogin, a.rolpassword, r.rolconfig,"
            " ARRAY(SELECT roleid::regrole::text FROM pg_auth_members WHERE member = r.oid)"
            " FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = ANY(%s)",
            [names],
        ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def privileged_setups(n: str) -> dict[str, tuple[list[str], str]]:
    """Case -> (SQL making an existing role `r_<n>` or user `u_<n>` unfit, expected words)."""
    r, u, mid = f'"r_{n}"', f'"u_{n}"', f'"mid_{n}"'
    return {
        "superuser group role": ([f"CREATE ROLE {r} NOLOGIN SUPERUSER"], "is a superuser"),
        "createrole user": ([f"CREATE ROLE {u} LOGIN CREATEROLE"], "has CREATEROLE"),
        "createdb user": ([f"CREATE ROLE {u} LOGIN CREATEDB"], "has CREATEDB"),
        "replication user": ([f"CREATE ROLE {u} LOGIN REPLICATION"], "has REPLICATION"),
        "bypassrls user": ([f"CREATE ROLE {u} LOGIN BYPASSRLS"], "has BYPASSRLS"),
        "member of a privileged role, through another": (
            [
                f"CREATE ROLE {mid} NOLOGIN",
                f"CREATE ROLE priv_{n} NOLOGIN CREATEDB",
                f"GRANT priv_{n} TO {mid}",
                f"CREATE ROLE {u} LOGIN",
                f"GRANT {mid} TO {u}",
            ],
            f"is a member of priv_{n}",
        ),
        "member of rds_superuser": (
            [
                "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_superuser')"
                " THEN CREATE ROLE rds_superuser NOLOGIN; END IF; END$$",
                f"CREATE ROLE {r} NOLOGIN",
                f"GRANT rds_superuser TO {r}",
            ],
            "is a member of rds_superuser",
        ),
        "member of a pg_ role": (
            [f"CREATE ROLE {u} LOGIN", f"GRANT pg_read_all_data TO {u}"],
            "is a member of pg_read_all_data",
        ),
        "group role that can log in": ([f"CREATE ROLE {r} LOGIN"], "can log in"),
    }


@pytest.mark.parametrize("case", list(privileged_setups("x")))
def test_bootstrap_refuses_an_unfit_existing_role_and_changes_nothing(
    sm_client: Any, tls_postgres: LocalPostgres, case: str
) -> None:
    n = unique()
    statements, words = privileged_setups(n)[case]
    with tls_postgres.admin_connect() as conn:
        for statement in statements:
            conn.execute(statement.encode())
    names = [f"r_{n}", f"u_{n}", f"v_{n}"]
    before = roles_state(tls_postgres, names)
    admin = create(sm_client, f"security/boot-admin-{n}", tls_postgres.admin_document())
    plan = BootstrapPlan(
        secret_name=f"security/boot-{n}", admin_secret_id=admin, role=names[0],
        users=(names[1], names[2]), dbname=f"boot_{n}", create_database=True,
    )  # fmt: skip

    with pytest.raises(PrivilegedRoleError, match=words) as refused:
        bootstrap(plan, sm_client, security=tls_security(tls_postgres))

    assert "nothing was changed" in str(refused.value)
    assert roles_state(tls_postgres, names) == before
    with pytest.raises(sm_client.exceptions.ResourceNotFoundException):
        sm_client.describe_secret(SecretId=plan.secret_name)
    with tls_postgres.admin_connect() as conn:
        assert (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [plan.dbname]).fetchone()
            is None
        )


def bootstrap_cli(
    capsys: pytest.CaptureFixture[str], sm_client: Any, server: LocalPostgres, *extra: str
) -> tuple[str, int, str]:
    """`rotating-pool bootstrap` for group role `r_<n>` on the TLS bed: (n, exit code, output)."""
    n = unique()
    admin = create(sm_client, f"security/boot-admin-{n}", server.admin_document())
    code, out = run_cli(
        capsys, "bootstrap", "--secret-name", f"security/boot-{n}", "--admin-secret-id", admin,
        "--role", f"r_{n}", "--dbname", "postgres", "--ssl-root-cert", str(server.ca_path),
        *(arg.replace("{n}", n) for arg in extra),
    )  # fmt: skip
    return n, code, out


def test_bootstrap_refuses_the_admin_as_a_user(
    sm_client: Any, tls_postgres: LocalPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    n, code, out = bootstrap_cli(capsys, sm_client, tls_postgres, "--users", "u_{n}", "postgres")
    assert code == 2
    assert "postgres is the admin running this script" in out
    assert not roles_state(tls_postgres, [f"r_{n}", f"u_{n}"])


def test_bootstrap_print_sql_shows_the_check_and_the_check_refuses_by_hand(
    sm_client: Any, tls_postgres: LocalPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    n, code, out = bootstrap_cli(capsys, sm_client, tls_postgres, "--print-sql")
    assert code == 0 and "rolsuper" in out and "TEMPORARY" not in out
    with tls_postgres.admin_connect() as conn:
        conn.execute(f'CREATE ROLE "r_{n}_a" LOGIN CREATEROLE'.encode())
        # The whole printed script, run by hand, stops at the check.
        with pytest.raises(psycopg.errors.RaiseException, match="has CREATEROLE"):
            conn.execute(out.encode())
    assert not roles_state(tls_postgres, [f"r_{n}"])


def test_bootstrap_host_must_be_the_admins_server(
    sm_client: Any, tls_postgres: LocalPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    n, code, out = bootstrap_cli(capsys, sm_client, tls_postgres, "--host", "127.0.0.2")
    assert code == 2
    assert "--host names the server 127.0.0.2:" in out and "--allowed-host" in out
    assert not roles_state(tls_postgres, [f"r_{n}", f"r_{n}_a"])


def test_a_takeover_in_the_middle_of_a_step_is_told_apart(
    sm_client: Any, tls_postgres: LocalPostgres, secretsmanager: LocalSecretsManager
) -> None:
    """The AWSPENDING label moves to another version between the step's label
    check and its read of the pending value."""
    app = make_app(sm_client, tls_postgres)
    rotator = Rotator(sm_client, security=tls_security(tls_postgres))
    token = str(uuid.uuid4())
    rotator.run_step(app.secret_id, token, "createSecret", check_enabled=False)
    other = secretsmanager.client()  # another rotation's own client
    pending_value = sm_client.get_secret_value(SecretId=app.secret_id, VersionId=token)

    def take_over(params: dict[str, Any], **_: Any) -> None:
        if params.get("VersionStage") == "AWSPENDING" and params.get("VersionId") == token:
            sm_client.meta.events.unregister(
                "before-parameter-build.secrets-manager.GetSecretValue", take_over
            )
            other.put_secret_value(
                SecretId=app.secret_id, SecretString=pending_value["SecretString"],
                VersionStages=["AWSPENDING"],
            )  # fmt: skip

    sm_client.meta.events.register(
        "before-parameter-build.secrets-manager.GetSecretValue", take_over
    )
    with pytest.raises(RotationTakenOverError, match="holds it now"):
        rotator.run_step(app.secret_id, token, "setSecret", check_enabled=False)


def test_a_takeover_during_finish_secret_is_told_apart(
    sm_client: Any, tls_postgres: LocalPostgres, secretsmanager: LocalSecretsManager
) -> None:
    app = make_app(sm_client, tls_postgres)
    rotator = Rotator(sm_client, security=tls_security(tls_postgres))
    token = str(uuid.uuid4())
    for step in ("createSecret", "setSecret", "testSecret"):
        rotator.run_step(app.secret_id, token, step, check_enabled=False)
    other = secretsmanager.client()
    value = sm_client.get_secret_value(SecretId=app.secret_id, VersionId=token)["SecretString"]
    event = "before-parameter-build.secrets-manager.UpdateSecretVersionStage"

    def take_over(params: dict[str, Any], **_: Any) -> None:
        if params.get("VersionStage") == "AWSPENDING":
            sm_client.meta.events.unregister(event, take_over)
            other.put_secret_value(
                SecretId=app.secret_id, SecretString=value, VersionStages=["AWSPENDING"]
            )

    sm_client.meta.events.register(event, take_over)
    with pytest.raises(RotationTakenOverError, match="stops at finishSecret"):
        rotator.run_step(app.secret_id, token, "finishSecret", check_enabled=False)


def test_the_lambdas_security_settings_come_from_its_environment(
    lambda_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_ROOT_CERT")
    default = rotator_from_environment().security
    assert (default.ssl_root_cert, default.allow_md5, default.allowed_hosts) == (
        "/etc/pki/tls/cert.pem",
        False,
        frozenset(),
    )
    assert default.connect_params(use_tls=True)["require_auth"] == "scram-sha-256"
    monkeypatch.setenv("ALLOWED_HOSTS", "db.example.com, Writer.Example.com.,")
    monkeypatch.setenv("ALLOW_MD5", "true")
    configured = rotator_from_environment().security
    assert configured.allowed_hosts == {"db.example.com", "writer.example.com"}
    assert configured.connect_params(use_tls=False) == {
        "sslmode": "disable",
        "require_auth": "scram-sha-256,md5",
    }
    monkeypatch.setenv("ALLOW_MD5", "yes")
    with pytest.raises(RotationConfigError, match="ALLOW_MD5"):
        rotator_from_environment()
