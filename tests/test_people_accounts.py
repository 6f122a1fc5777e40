"""People accounts (issue 20 item 2): ``rotating-pool bootstrap --people-user``
makes LOGIN roles with no password, members of ``rds_iam`` and of a NOLOGIN
group role, after the same checks as the system accounts; ``status`` shows
which users are IAM-only.

On the bed: the TLS PostgreSQL with a stand-in ``rds_iam`` role (a plain
NOLOGIN role: this server checks no IAM token; RDS does), and moto's Secrets
Manager over HTTP. The plain server has no ``rds_iam`` and stands for a
PostgreSQL that is not RDS.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rotating_pool.rotation.cli import main
from rotating_pool.rotation.errors import (
    IamRoleMissingError,
    PrivilegedRoleError,
    RoleRefusedError,
)
from rotating_pool.rotation.people import PeoplePlan, bootstrap_people
from rotating_pool.rotation.security import SecuritySettings
from rotating_pool.testing import LocalPostgres

_counter = itertools.count()


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@dataclass(frozen=True)
class Names:
    admin_secret: str
    app_secret: str
    app_role: str
    group: str
    people: tuple[str, str]
    dbname: str


def _names(sm_client: Any, server: LocalPostgres) -> Names:
    n = f"{next(_counter)}_{uuid.uuid4().hex[:6]}"
    admin = f"people-tests/admin-{n}"
    sm_client.create_secret(Name=admin, SecretString=json.dumps(server.admin_document()))
    return Names(
        admin, f"people-tests/app-{n}", f"pa_{n}", f"pr_{n}",
        (f"pp_{n}_ana", f"pp_{n}_bo"), f"pdb_{n}",
    )  # fmt: skip


@pytest.fixture
def names(sm_client: Any, tls_postgres: LocalPostgres) -> Names:
    """Fresh names on the TLS bed, which has the stand-in ``rds_iam``."""
    tls_postgres.create_rds_iam_role()
    return _names(sm_client, tls_postgres)


@pytest.fixture
def cli(
    secretsmanager: Any,
    tls_postgres: LocalPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., Run]:
    """``rotating-pool ARGS`` in-process, boto3 pointed at moto, verifying the
    TLS bed's certificate."""
    for name, value in secretsmanager.env().items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> Run:
        code = main([argv[0], "--ssl-root-cert", str(tls_postgres.ca_path), *argv[1:]])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def people_args(names: Names, *extra: str) -> list[str]:
    return [
        "bootstrap", "--admin-secret-id", names.admin_secret, "--dbname", names.dbname,
        "--people-role", names.group,
        "--people-user", names.people[0], "--people-user", names.people[1], *extra,
    ]  # fmt: skip


def app_args(names: Names) -> list[str]:
    return [
        "bootstrap", "--secret-name", names.app_secret, "--admin-secret-id", names.admin_secret,
        "--role", names.app_role, "--dbname", names.dbname, "--create-database",
    ]  # fmt: skip


def catalog(server: LocalPostgres, names: Names) -> dict[str, Any]:
    """What the server says of the people roles (as the superuser: pg_authid)."""
    people = list(names.people)
    with server.admin_connect() as conn:
        roles = {
            name: (login, password is None, config or [])
            for name, login, password, config in conn.execute(
                "SELECT a.rolname, a.rolcanlogin, a.rolpassword, r.rolconfig FROM pg_authid a"
                " JOIN pg_roles r ON r.oid = a.oid WHERE a.rolname = ANY(%s)",
                [[names.group, *people]],
            )
        }
        members = {
            (str(member), str(role))
            for member, role in conn.execute(
                "SELECT u.rolname, g.rolname FROM pg_auth_members m"
                " JOIN pg_roles u ON u.oid = m.member JOIN pg_roles g ON g.oid = m.roleid"
                " WHERE u.rolname = ANY(%s)",
                [people],
            )
        }
        connect = conn.execute(
            "SELECT has_database_privilege(%s, %s, 'CONNECT')", [names.group, names.dbname]
        ).fetchone()
    return {"roles": roles, "members": members, "connect": connect == (True,)}


def security(server: LocalPostgres, **kwargs: Any) -> SecuritySettings:
    return SecuritySettings(ssl_root_cert=str(server.ca_path), **kwargs)


def create_role(server: LocalPostgres, name: str, options: str) -> None:
    with server.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} " + options).format(sql.Identifier(name)))


def role_exists(server: LocalPostgres, name: str) -> bool:
    with server.admin_connect() as conn:
        return bool(conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone())


def test_bootstrap_creates_people_accounts_and_status_shows_them_iam_only(
    cli: Callable[..., Run], names: Names, tls_postgres: LocalPostgres, sm_client: Any
) -> None:
    assert cli(*app_args(names)).code == 0
    boot = cli(*people_args(names))
    assert boot.code == 0, boot.err
    assert "people roles created:" in boot.out and names.people[0] in boot.out

    seen = catalog(tls_postgres, names)
    ana, bo = names.people
    role_setting = [f"role={names.group}"]
    assert seen["roles"] == {
        names.group: (False, True, []),  # NOLOGIN group, no password
        ana: (True, True, role_setting),  # LOGIN, no password, sessions run as the group
        bo: (True, True, role_setting),
    }
    assert seen["members"] == {
        (ana, "rds_iam"), (ana, names.group), (bo, "rds_iam"), (bo, names.group),
    }  # fmt: skip
    assert seen["connect"]
    # No password logs in as a people account (here nothing else does either).
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**tls_postgres.tls_params(), host=tls_postgres.host,
                        port=tls_postgres.port, dbname=names.dbname, user=ana,
                        password="anything", connect_timeout=5)  # fmt: skip

    status = json.loads(cli("status", "--secret-id", names.app_secret, "--json").out)
    iam = {u["username"]: u["groups"] for u in status["iam_users"]}
    assert iam[ana] == [names.group] and iam[bo] == [names.group]
    assert {u["username"]: u["iam_only"] for u in status["users"]} == {
        f"{names.app_role}_a": False, f"{names.app_role}_b": False,
    }  # fmt: skip
    text = cli("status", "--secret-id", names.app_secret).out
    section = text.split("IAM-ONLY USERS", 1)[1]
    for user in (ana, bo):
        assert re.search(rf"^{user} +{names.group}$", section, re.MULTILINE), section
    assert "IAM ONLY" in text.split("IAM-ONLY USERS", 1)[0]  # the users table's column


def test_a_secret_user_granted_rds_iam_is_shown_iam_only(
    cli: Callable[..., Run], names: Names, tls_postgres: LocalPostgres
) -> None:
    assert cli(*app_args(names)).code == 0
    user_b = f"{names.app_role}_b"
    with tls_postgres.admin_connect() as conn:
        conn.execute(sql.SQL("GRANT rds_iam TO {}").format(sql.Identifier(user_b)))
    status = json.loads(cli("status", "--secret-id", names.app_secret, "--json").out)
    flags = {u["username"]: u["iam_only"] for u in status["users"]}
    assert flags == {f"{names.app_role}_a": False, user_b: True}
    assert user_b in {u["username"] for u in status["iam_users"]}


def test_a_rerun_is_idempotent_and_an_existing_password_is_removed(
    cli: Callable[..., Run], names: Names, tls_postgres: LocalPostgres
) -> None:
    ana = names.people[0]
    create_role(tls_postgres, ana, "LOGIN PASSWORD 'old-password-of-ana'")
    with tls_postgres.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names.dbname)))
    first = cli(*people_args(names))
    assert first.code == 0, first.err
    assert f"people roles created: {names.group!r}, {names.people[1]!r}" in first.out
    after_first = catalog(tls_postgres, names)
    assert after_first["roles"][ana][1]  # its password is gone: IAM only

    again = cli(*people_args(names))
    assert again.code == 0, again.err
    assert "people roles created: none (all existed)" in again.out
    assert catalog(tls_postgres, names) == after_first
    for run in (first, again):
        assert "old-password-of-ana" not in run.out + run.err


def test_one_run_sets_up_the_app_and_its_people_accounts(
    cli: Callable[..., Run], names: Names, tls_postgres: LocalPostgres, sm_client: Any
) -> None:
    both = [*app_args(names), *people_args(names)[1:]]
    run = cli(*both)
    assert run.code == 0, run.err
    assert f"app secret {names.app_secret!r}: created" in run.out
    assert "people accounts (IAM only, no password)" in run.out
    assert (names.people[0], "rds_iam") in catalog(tls_postgres, names)["members"]
    document = json.loads(sm_client.get_secret_value(SecretId=names.app_secret)["SecretString"])
    assert document["username"] == f"{names.app_role}_a"  # the secret is the app's alone
    assert not set(names.people) & set(document.get("rotation_users", []))


def test_print_sql_changes_nothing_and_holds_no_password(
    cli: Callable[..., Run], names: Names, tls_postgres: LocalPostgres
) -> None:
    printed = cli(*people_args(names), "--print-sql")
    assert printed.code == 0, printed.err
    assert f'ALTER ROLE "{names.people[0]}" WITH LOGIN PASSWORD NULL;' in printed.out
    assert f'GRANT "rds_iam" TO "{names.people[0]}";' in printed.out
    assert not role_exists(tls_postgres, names.group)


def _plan(names: Names, **changes: Any) -> PeoplePlan:
    fields: dict[str, Any] = {
        "admin_secret_id": names.admin_secret,
        "role": names.group,
        "users": names.people,
        **changes,
    }
    return PeoplePlan(**fields)


def _unchanged(server: LocalPostgres, names: Names) -> None:
    """Nothing was created or granted."""
    assert not role_exists(server, names.group)
    with server.admin_connect() as conn:
        granted = conn.execute(
            "SELECT u.rolname FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member"
            " JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = 'rds_iam'"
            " AND u.rolname = ANY(%s)",
            [list(names.people)],
        ).fetchall()
    assert granted == []


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ("LOGIN CREATEDB", "has CREATEDB"),
        ("LOGIN SUPERUSER", "is a superuser"),
        ("LOGIN IN ROLE pg_read_all_data", "is a member of pg_read_all_data"),
    ],
    ids=["createdb", "superuser", "pg-member"],
)
def test_a_privileged_existing_people_user_is_refused_before_anything_changes(
    names: Names, tls_postgres: LocalPostgres, sm_client: Any, options: str, words: str
) -> None:
    create_role(tls_postgres, names.people[1], options)
    with pytest.raises(PrivilegedRoleError, match=words) as refused:
        bootstrap_people(_plan(names), sm_client, security=security(tls_postgres))
    assert names.people[1] in str(refused.value)
    _unchanged(tls_postgres, names)


def test_the_admin_itself_is_refused_as_a_people_user(
    names: Names, tls_postgres: LocalPostgres, sm_client: Any
) -> None:
    plan = _plan(names, users=(tls_postgres.admin_user,))
    with pytest.raises(PrivilegedRoleError, match="is the admin running this script"):
        bootstrap_people(plan, sm_client, security=security(tls_postgres))
    assert not role_exists(tls_postgres, names.group)


def test_a_group_that_can_log_in_is_refused(
    names: Names, tls_postgres: LocalPostgres, sm_client: Any
) -> None:
    create_role(tls_postgres, names.group, "LOGIN")
    with pytest.raises(PrivilegedRoleError, match="is the group role but can log in"):
        bootstrap_people(_plan(names), sm_client, security=security(tls_postgres))
    assert not role_exists(tls_postgres, names.people[0])


def test_the_rotation_role_check_refuses_admin_option_before_anything_changes(
    names: Names, tls_postgres: LocalPostgres, sm_client: Any
) -> None:
    """Fine for bootstrap's own check, refused by the rotation's (role_check)."""
    other = f"{names.group}_other"
    create_role(tls_postgres, other, "NOLOGIN")
    create_role(tls_postgres, names.people[0], "LOGIN")
    with tls_postgres.admin_connect() as conn:
        conn.execute(
            sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(other), sql.Identifier(names.people[0])
            )
        )
    with pytest.raises(RoleRefusedError) as refused:
        bootstrap_people(_plan(names), sm_client, security=security(tls_postgres))
    assert refused.value.checks == ("admin_option",)
    _unchanged(tls_postgres, names)


def test_the_pin_applies_to_people_users(
    cli: Callable[..., Run], names: Names, tls_postgres: LocalPostgres
) -> None:
    run = cli(*people_args(names), "--allowed-role", names.people[0])
    assert run.code == 2
    assert "--allowed-role" in run.err and names.people[1] in run.err
    assert "secret None" not in run.err  # people accounts have no secret to name
    _unchanged(tls_postgres, names)


def test_a_server_without_rds_iam_is_refused_naming_it(
    cli: Callable[..., Run], postgres: LocalPostgres, sm_client: Any
) -> None:
    """The plain bed is a PostgreSQL that is not RDS: no ``rds_iam``."""
    assert not role_exists(postgres, "rds_iam")
    names = _names(sm_client, postgres)
    with pytest.raises(IamRoleMissingError, match="no 'rds_iam' role"):
        bootstrap_people(_plan(names, dbname="postgres"), sm_client)
    run = cli(*people_args(names, "--dbname", "postgres"))
    assert run.code == 2 and "rds_iam" in run.err and "Traceback" not in run.err
    _unchanged(postgres, names)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--people-user", "ana"], "--people-user needs --people-role"),
        (["--people-role", "readers"], "--people-role needs --people-user"),
        ([], "give --secret-name"),
        (["--people-user", "readers", "--people-role", "readers"], "must be distinct"),
        (["--people-user", "rds_iam", "--people-role", "readers"], "none of them 'rds_iam'"),
    ],
)
def test_bad_people_arguments_are_typed_errors(
    cli: Callable[..., Run], tls_postgres: LocalPostgres, argv: list[str], words: str
) -> None:
    run = cli("bootstrap", "--admin-secret-id", "people-tests/none", *argv)
    assert run.code == 2 and words in run.err, run.err


def test_a_hostile_iam_user_name_is_escaped_in_the_status_text(
    cli: Callable[..., Run], names: Names, tls_postgres: LocalPostgres
) -> None:
    """Anyone with CREATEROLE may name a role; the terminal must not obey it."""
    assert cli(*app_args(names)).code == 0
    hostile = f"pp_{names.group}\x1b]0;owned\x07"
    create_role(tls_postgres, hostile, "LOGIN IN ROLE rds_iam")
    try:
        text = cli("status", "--secret-id", names.app_secret).out
        listed = json.loads(cli("status", "--secret-id", names.app_secret, "--json").out)
    finally:
        with tls_postgres.admin_connect() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(hostile)))
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;owned\\x07" in text.split("IAM-ONLY USERS", 1)[1]
    assert hostile in {u["username"] for u in listed["iam_users"]}
