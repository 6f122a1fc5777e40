"""The ``rotating-pool`` command, run in-process against PostgreSQL and moto over HTTP.

The server is the TLS bed: every command verifies it (``--ssl-root-cert`` with
the bed's CA, added by the `cli` fixture).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rotating_pool.rotation.cli import main
from rotating_pool.testing import LocalPostgres

_counter = itertools.count()


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def postgres(tls_postgres: LocalPostgres) -> LocalPostgres:
    """Here the server is the TLS bed."""
    return tls_postgres


@pytest.fixture
def cli(
    secretsmanager: Any,
    tls_postgres: LocalPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., Run]:
    """Run ``rotating-pool ARGS`` with boto3 pointed at the test bed, verifying
    the TLS bed's certificate (unless ARGS give ``--ssl-root-cert``)."""
    for name, value in secretsmanager.env().items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> Run:
        args = list(argv)
        if args and args[0] in ("bootstrap", "rotate", "status") and "--ssl-root-cert" not in args:
            args[1:1] = ["--ssl-root-cert", str(tls_postgres.ca_path)]
        code = main(args)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@dataclass(frozen=True)
class Names:
    secret: str
    admin_secret: str
    role: str
    dbname: str


@pytest.fixture
def names(postgres: LocalPostgres, sm_client: Any) -> Names:
    """Fresh names, and an admin secret for the test server."""
    n = f"{next(_counter)}_{uuid.uuid4().hex[:6]}"
    admin = f"cli-tests/admin-{n}"
    sm_client.create_secret(Name=admin, SecretString=json.dumps(postgres.admin_document()))
    return Names(f"cli-tests/app-{n}", admin, f"cliapp_{n}", f"clidb_{n}")


def bootstrap_args(names: Names, *extra: str) -> list[str]:
    return [
        "bootstrap",
        "--secret-name", names.secret,
        "--admin-secret-id", names.admin_secret,
        "--role", names.role,
        "--dbname", names.dbname,
        "--create-database",
        *extra,
    ]  # fmt: skip


def secret_passwords(sm_client: Any, *secret_ids: str) -> set[str]:
    """Every password any version of these secrets ever held."""
    found = set()
    for secret_id in secret_ids:
        listed = sm_client.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)
        for version in listed["Versions"]:
            try:
                answer = sm_client.get_secret_value(
                    SecretId=secret_id, VersionId=version["VersionId"]
                )
            except sm_client.exceptions.ResourceNotFoundException:
                continue
            found.add(json.loads(answer["SecretString"])["password"])
    return found


def assert_no_password(runs: list[Run], passwords: set[str]) -> None:
    assert passwords
    for run in runs:
        for password in passwords:
            assert password not in run.out
            assert password not in run.err


def role_exists(postgres: LocalPostgres, name: str) -> bool:
    with postgres.admin_connect() as conn:
        return bool(conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone())


def test_bootstrap_rotate_status_alternating(
    cli: Callable[..., Run], names: Names, sm_client: Any
) -> None:
    a, b = f"{names.role}_a", f"{names.role}_b"
    boot = cli(*bootstrap_args(names))
    assert boot.code == 0, boot.err
    assert f"app secret {names.secret!r}: created" in boot.out

    before = cli("status", "--secret-id", names.secret, "--json")
    assert before.code == 0, before.err
    state = json.loads(before.out)
    assert state["strategy"] == "alternating" and state["role"] == names.role
    assert [(v["stages"], v["username"], v["logs_in"]) for v in state["versions"]] == [
        (["AWSCURRENT"], a, True)
    ]
    users = {u["username"]: u for u in state["users"]}
    assert users[a] | {"sessions": 0} == {
        "username": a, "exists": True, "can_login": True, "password_works": True,
        "working_stages": ["AWSCURRENT"], "sessions": 0, "iam_only": False,
    }  # fmt: skip
    assert users[b]["exists"] and not users[b]["password_works"]

    rotate = cli("rotate", "--secret-id", names.secret)
    assert rotate.code == 0, rotate.err
    for step in ("createSecret", "setSecret", "testSecret", "finishSecret", "total"):
        assert step in rotate.out
    assert f"user {b!r}" in rotate.out

    after = cli("status", "--secret-id", names.secret)
    assert after.code == 0, after.err
    lines = after.out.splitlines()
    assert any("AWSCURRENT" in line and b in line and "yes" in line for line in lines)
    assert any("AWSPREVIOUS" in line and a in line and "yes" in line for line in lines)
    assert "SESSIONS" in after.out and "CAN LOGIN" in after.out

    assert_no_password(
        [boot, before, rotate, after], secret_passwords(sm_client, names.secret, names.admin_secret)
    )


def test_bootstrap_single_then_rotate_json(
    cli: Callable[..., Run], names: Names, sm_client: Any
) -> None:
    boot = cli(*bootstrap_args(names, "--strategy", "single"))
    assert boot.code == 0, boot.err
    document = json.loads(sm_client.get_secret_value(SecretId=names.secret)["SecretString"])
    assert document["rotation_strategy"] == "single"
    assert "masterarn" not in document and "rotation_users" not in document

    rotate = cli("rotate", "--secret-id", names.secret, "--json")
    assert rotate.code == 0, rotate.err
    result = json.loads(rotate.out)
    assert result["strategy"] == "single" and result["username"] == f"{names.role}_a"
    assert list(result["durations"]) == ["createSecret", "setSecret", "testSecret", "finishSecret"]
    assert set(result["outcomes"].values()) == {"performed"}
    assert_no_password([boot, rotate], secret_passwords(sm_client, names.secret))


def test_bootstrap_is_idempotent(cli: Callable[..., Run], names: Names, sm_client: Any) -> None:
    first = cli(*bootstrap_args(names))
    second = cli(*bootstrap_args(names))

    assert (first.code, second.code) == (0, 0)
    assert "roles created: none (all existed)" in second.out
    assert ": unchanged" in second.out and "(password kept)" in second.out
    listed = sm_client.list_secret_version_ids(SecretId=names.secret, IncludeDeprecated=True)
    assert len(listed["Versions"]) == 1


def test_bootstrap_update_leaves_no_pending_label_behind(
    cli: Callable[..., Run], names: Names, sm_client: Any
) -> None:
    """A secret rotated by AWS's own templates keeps AWSPENDING on AWSCURRENT;
    a new AWSCURRENT put over it must not leave the label on the old version,
    or RotateSecret would refuse ever after."""
    assert cli(*bootstrap_args(names, "--strategy", "single")).code == 0
    current = sm_client.describe_secret(SecretId=names.secret)["VersionIdsToStages"]
    (version,) = current
    sm_client.update_secret_version_stage(
        SecretId=names.secret, VersionStage="AWSPENDING", MoveToVersionId=version
    )

    again = cli(*bootstrap_args(names, "--strategy", "alternating"))

    assert again.code == 0, again.err
    assert ": updated" in again.out
    stages = sm_client.describe_secret(SecretId=names.secret)["VersionIdsToStages"]
    assert sorted(label for labels in stages.values() for label in labels) == [
        "AWSCURRENT",
        "AWSPREVIOUS",
    ]
    token = sm_client.rotate_secret(
        SecretId=names.secret,
        RotationLambdaARN="arn:aws:lambda:us-east-1:123456789012:function:rotating-pool-local-x",
    )["VersionId"]
    assert token


def test_bootstrap_gives_a_new_password_when_the_stored_one_fails(
    cli: Callable[..., Run], names: Names, sm_client: Any, postgres: LocalPostgres
) -> None:
    assert cli(*bootstrap_args(names)).code == 0
    with postgres.admin_connect() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD NULL").format(sql.Identifier(f"{names.role}_a"))
        )

    again = cli(*bootstrap_args(names))

    assert again.code == 0, again.err
    assert ": updated" in again.out and "(new password set)" in again.out
    document = json.loads(sm_client.get_secret_value(SecretId=names.secret)["SecretString"])
    psycopg.connect(
        host=document["host"], port=document["port"], dbname=document["dbname"],
        user=document["username"], password=document["password"], connect_timeout=5,
    ).close()  # fmt: skip


def test_bootstrap_print_sql_changes_nothing_and_runs_as_printed(
    cli: Callable[..., Run], names: Names, sm_client: Any, postgres: LocalPostgres
) -> None:
    role = f'Our "{names.role}" Team\'s'
    users = (f"{role} writer", f"{role} $rp$ reader")

    printed = cli(*bootstrap_args(names, "--print-sql"), "--role", role, "--users", *users)

    assert printed.code == 0, printed.err
    assert "CREATE ROLE" in printed.out and "PASSWORD '<SCRAM-SHA-256" in printed.out
    assert not role_exists(postgres, role)
    with pytest.raises(sm_client.exceptions.ResourceNotFoundException):
        sm_client.describe_secret(SecretId=names.secret)
    # The printed script is runnable by hand, twice.
    script = printed.out.split("-- then, connected to database")[1].split("\n", 1)[1]
    with postgres.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names.dbname)))
    for _ in range(2):
        with postgres.admin_connect(names.dbname) as conn:
            conn.execute(script.encode())
    assert all(role_exists(postgres, name) for name in (role, *users))


def test_bootstrap_with_hostile_names_then_rotate(
    cli: Callable[..., Run], names: Names, sm_client: Any
) -> None:
    role = f'Our "{names.role}" Team\'s'
    boot = cli(*bootstrap_args(names), "--role", role, "--users", f"{role} A", "b 'B' $1")
    assert boot.code == 0, boot.err

    for _ in range(2):
        rotate = cli("rotate", "--secret-id", names.secret)
        assert rotate.code == 0, rotate.err
    status = json.loads(cli("status", "--secret-id", names.secret, "--json").out)
    assert {u["username"]: u["password_works"] for u in status["users"]} == {
        f"{role} A": True,
        "b 'B' $1": True,
    }


def test_status_counts_open_sessions_per_user(
    cli: Callable[..., Run], names: Names, sm_client: Any
) -> None:
    assert cli(*bootstrap_args(names)).code == 0
    document = json.loads(sm_client.get_secret_value(SecretId=names.secret)["SecretString"])
    sessions = [
        psycopg.connect(
            host=document["host"], port=document["port"], dbname=document["dbname"],
            user=document["username"], password=document["password"], connect_timeout=5,
        )
        for _ in range(3)
    ]  # fmt: skip
    try:
        status = json.loads(cli("status", "--secret-id", names.secret, "--json").out)
    finally:
        for conn in sessions:
            conn.close()
    counts = {u["username"]: u["sessions"] for u in status["users"]}
    assert counts == {f"{names.role}_a": 3, f"{names.role}_b": 0}


def test_status_shows_a_user_that_may_not_log_in(
    cli: Callable[..., Run], names: Names, postgres: LocalPostgres
) -> None:
    assert cli(*bootstrap_args(names)).code == 0
    assert cli("rotate", "--secret-id", names.secret).code == 0
    with postgres.admin_connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(f"{names.role}_a")))

    status = json.loads(cli("status", "--secret-id", names.secret, "--json").out)

    previous = next(v for v in status["versions"] if "AWSPREVIOUS" in v["stages"])
    assert previous["logs_in"] is False
    assert "not permitted to log in" in previous["login_error"]
    user_a = next(u for u in status["users"] if u["username"] == f"{names.role}_a")
    assert (user_a["can_login"], user_a["password_works"]) == (False, False)


def test_errors_are_one_line_on_stderr_with_exit_status_2(cli: Callable[..., Run]) -> None:
    missing = cli("rotate", "--secret-id", "no/such/secret")
    assert missing.code == 2
    assert missing.err.startswith("rotating-pool rotate: error: secret 'no/such/secret' was not")
    assert "Traceback" not in missing.err and missing.out == "rotating 'no/such/secret'\n"

    status = cli("status", "--secret-id", "no/such/secret")
    assert status.code == 2 and "Traceback" not in status.err


def test_bad_arguments_exit_with_status_2(cli: Callable[..., Run], names: Names) -> None:
    one_user = cli(*bootstrap_args(names), "--users", "only_one")
    assert one_user.code == 2
    assert "needs 2 login user(s), not 1" in one_user.err

    assert cli("rotate").code == 2  # argparse: --secret-id is required
    assert cli("--help").code == 0


@pytest.fixture(scope="module")
def logging_postgres() -> Iterator[LocalPostgres]:
    with LocalPostgres(settings={"log_statement": "all"}) as server:
        yield server


def test_bootstrap_and_rotate_send_no_plaintext_password_to_the_server(
    cli: Callable[..., Run], sm_client: Any, logging_postgres: LocalPostgres
) -> None:
    n = uuid.uuid4().hex[:6]
    admin = f"cli-tests/logged-admin-{n}"
    sm_client.create_secret(Name=admin, SecretString=json.dumps(logging_postgres.admin_document()))
    secret = f"cli-tests/logged-app-{n}"
    runs = [
        cli("bootstrap", "--secret-name", secret, "--admin-secret-id", admin,
            "--dbname", f"logged_{n}", "--create-database", "--role", f"logged_{n}"),
        cli("rotate", "--secret-id", secret),
        cli("rotate", "--secret-id", secret),
        cli("status", "--secret-id", secret),
    ]  # fmt: skip
    assert [run.code for run in runs] == [0, 0, 0, 0], [run.err for run in runs]

    server_log = logging_postgres.log_path.read_text(errors="replace")
    assert server_log.count("SCRAM-SHA-256$4096:") >= 3
    passwords = secret_passwords(sm_client, secret)
    assert len(passwords) == 3
    for password in passwords:
        assert password not in server_log
    assert_no_password(runs, passwords)
