"""Setting up a database and its app secret for rotation (``rotating-pool bootstrap``).

The roles, as the seed system has them::

    app      NOLOGIN   owns the objects; has CONNECT on the database and
                       USAGE, CREATE on the schema (nothing else)
    app_a    LOGIN     member of app, with `ALTER ROLE app_a SET role = 'app'`
    app_b    LOGIN     the same (alternating only)

With the ``SET role`` default, a session of app_a or app_b runs as ``app``:
whatever either user creates is owned by ``app`` and usable by the other, so
the users can take turns without any object changing hands.

Before it changes anything, the script checks the roles that already exist
(`privilege_check_sql`): it refuses a role that is a superuser or has
CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS, or is a member (directly or
not) of such a role, of ``rds_superuser`` or of a ``pg_*`` role; a role that is
the admin itself; and a group role that can log in.

Every statement is idempotent (the ``CREATE ROLE`` ones are guarded by ``DO``
blocks), so the script can be re-run, printed (``--print-sql``) and run by
hand. It never contains a password: passwords are set afterwards as SCRAM
verifiers (`password.set_password`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from rotating_pool.errors import SecretNotFoundError
from rotating_pool.rotation.clients import make_rds_client
from rotating_pool.rotation.database import Login, LoginOptions, login, try_login
from rotating_pool.rotation.errors import (
    PrivilegedRoleError,
    RotationConfigError,
    RotationStateError,
)
from rotating_pool.rotation.hosts import AdminLogin, admin_login
from rotating_pool.rotation.password import set_password
from rotating_pool.rotation.role_check import check_role_to_rotate
from rotating_pool.rotation.rotator import DEFAULT_EXCLUDE_CHARACTERS
from rotating_pool.rotation.security import SecuritySettings
from rotating_pool.rotation.settings import Strategy, check_role_name
from rotating_pool.rotation.versions import SecretVersions, random_password
from rotating_pool.secret import AWSCURRENT, AWSPENDING, Credentials

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = [
    "BootstrapPlan",
    "BootstrapReport",
    "bootstrap",
    "bootstrap_sql",
    "create_database_sql",
    "privilege_check_sql",
]

logger = logging.getLogger("rotating_pool.rotation")


@dataclass(frozen=True)
class BootstrapPlan:
    """What `bootstrap` sets up.

    Args:
        secret_name: the app secret to create or update.
        admin_secret_id: name or ARN of the admin secret (RDS JSON shape); its
            ARN becomes the app secret's ``masterarn``.
        strategy: `Strategy.ALTERNATING` (two users) or `Strategy.SINGLE` (one).
        role: the NOLOGIN group role that owns the objects.
        users: the login users; two for alternating, one for single. Default:
            ``<role>_a`` and ``<role>_b`` (alternating) or ``<role>_a`` (single).
        host, port, dbname: where the app connects; each defaults to the admin
            secret's (its server, for an RDS-managed one). A `host` must be the
            admin's server, a replica of it, or an allowed host name.
        schema: the schema the group role may create objects in.
        create_database: create `dbname` first if it does not exist (owned by
            the admin; the group role gets CONNECT and the schema grants).
    """

    secret_name: str
    admin_secret_id: str
    strategy: Strategy = Strategy.ALTERNATING
    role: str = "app"
    users: tuple[str, ...] = ()
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    schema: str = "public"
    create_database: bool = False

    def __post_init__(self) -> None:
        check_role_name(self.role, what="the group role", secret_id=None, key="role")
        if not self.users:
            suffixes = ("_a", "_b") if self.strategy is Strategy.ALTERNATING else ("_a",)
            object.__setattr__(self, "users", tuple(self.role + s for s in suffixes))
        wanted = 2 if self.strategy is Strategy.ALTERNATING else 1
        if len(self.users) != wanted:
            raise RotationConfigError(
                f"the {self.strategy.value} strategy needs {wanted} login user(s), "
                f"not {len(self.users)}: {list(self.users)}",
                key="users",
            )
        for user in self.users:
            check_role_name(user, what="a login user", secret_id=None, key="users")
        if len(set(self.users)) != len(self.users) or self.role in self.users:
            raise RotationConfigError(
                f"the group role {self.role!r} and the users {list(self.users)} must be "
                "distinct names",
                key="users",
            )
        check_role_name(self.schema, what="the schema", secret_id=None, key="schema")
        if not self.secret_name:
            raise RotationConfigError("the app secret needs a name", key="secret_name")


@dataclass(frozen=True)
class BootstrapReport:
    """What `bootstrap` did.

    Attributes:
        secret_arn: the app secret's ARN.
        secret_action: ``created``, ``updated`` or ``unchanged``.
        username: the user the app secret's AWSCURRENT names.
        password_set: True when that user was given a new password.
        roles_created: the roles that did not exist before.
        statements: the SQL run (no password in it).
    """

    secret_arn: str
    secret_action: str
    username: str
    password_set: bool
    roles_created: tuple[str, ...]
    statements: tuple[str, ...] = field(repr=False)


def bootstrap_sql(
    role: str, users: Sequence[str], dbname: str, schema: str = "public"
) -> list[str]:
    """The idempotent statements that set up the roles, as text: first the
    privilege check (`privilege_check_sql`), then roles and grants.

    Names are quoted with `psycopg.sql.Identifier` / `Literal`; any name works.
    The grants are what the scheme needs and no more: CONNECT (the users log in
    to the database as members of the role), USAGE and CREATE on the schema (the
    role creates and owns the objects). TEMPORARY is not granted: PUBLIC has it
    by default; grant it yourself where it was revoked and the app needs it.

    >>> print(bootstrap_sql("app", ["app_a"], "appdb")[-1])
    GRANT USAGE, CREATE ON SCHEMA "public" TO "app";
    """
    return group_scheme_sql(role, users, dbname, schema, schema_privileges=("USAGE", "CREATE"))


def group_scheme_sql(
    role: str,
    users: Sequence[str],
    dbname: str,
    schema: str,
    *,
    schema_privileges: Sequence[str],
    also_grant: Sequence[str] = (),
    no_password: bool = False,
) -> list[str]:
    """The statements of a group-role scheme (`bootstrap_sql`'s, and people
    accounts' in `rotating_pool.rotation.people`): the privilege check, the
    NOLOGIN `role`, each of `users` a LOGIN member of it (and of `also_grant`)
    starting its sessions as `role`; CONNECT and `schema_privileges` for `role`.

    `no_password`: ``PASSWORD NULL`` on every user (IAM-only accounts keep no
    password a leaked copy of could still open).
    """
    role_id = sql.Identifier(role)
    statements = [privilege_check_sql(role, users), _create_role_if_missing(role, login=False)]
    for user in users:
        user_id = sql.Identifier(user)
        statements.append(_create_role_if_missing(user, login=True))
        if no_password:
            statements.append(
                _render(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD NULL;").format(user_id))
            )
        statements += [
            _render(sql.SQL("GRANT {} TO {};").format(sql.Identifier(name), user_id))
            for name in (*also_grant, role)
        ]
        # `role` as a per-user default: every session of the user starts as
        # the group role, so what it creates is owned by the group role.
        statements.append(
            _render(sql.SQL("ALTER ROLE {} SET role TO {};").format(user_id, sql.Literal(role)))
        )
    privileges = sql.SQL(", ").join(sql.SQL(p) for p in schema_privileges)
    statements += [
        _render(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {};").format(sql.Identifier(dbname), role_id)
        ),
        _render(
            sql.SQL("GRANT {} ON SCHEMA {} TO {};").format(
                privileges, sql.Identifier(schema), role_id
            )
        ),
    ]
    return statements


def privilege_check_sql(role: str, users: Sequence[str]) -> str:
    """A ``DO`` block that raises, changing nothing, if an existing role among
    `role` and `users` must not be used: a superuser or a role with CREATEROLE,
    CREATEDB, REPLICATION or BYPASSRLS; a member (directly or not) of such a
    role, of ``rds_superuser`` or of a ``pg_*`` role; the admin running the
    script (``session_user``); or a group role that can log in.

    Membership of ``pg_database_owner`` (implicit for a database's owner) is
    not refused: the group role may own the application's database.
    """
    names = sql.SQL(", ").join(sql.Literal(name) for name in [role, *users])
    body = sql.SQL(
        r"""DECLARE
  problem text;
BEGIN
  SELECT string_agg(format('%I %s', r.rolname, r.why), '; ') INTO problem FROM (
    SELECT r.rolname, concat_ws(', ',
      CASE WHEN r.rolname = session_user THEN 'is the admin running this script' END,
      CASE WHEN r.rolname = {role} AND r.rolcanlogin THEN 'is the group role but can log in' END,
      CASE WHEN r.rolsuper THEN 'is a superuser' END,
      CASE WHEN r.rolcreaterole THEN 'has CREATEROLE' END,
      CASE WHEN r.rolcreatedb THEN 'has CREATEDB' END,
      CASE WHEN r.rolreplication THEN 'has REPLICATION' END,
      CASE WHEN r.rolbypassrls THEN 'has BYPASSRLS' END,
      (SELECT 'is a member of ' || string_agg(quote_ident(m.rolname), ', ' ORDER BY m.rolname)
         FROM pg_catalog.pg_roles m
        WHERE m.oid <> r.oid AND m.rolname <> 'pg_database_owner'
          AND pg_catalog.pg_has_role(r.oid, m.oid, 'MEMBER')
          AND (m.rolsuper OR m.rolcreaterole OR m.rolcreatedb OR m.rolreplication
               OR m.rolbypassrls OR m.rolname = 'rds_superuser' OR m.rolname LIKE 'pg\_%')
      )) AS why
    FROM pg_catalog.pg_roles r WHERE r.rolname IN ({names})
  ) r WHERE r.why <> '';
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION 'rotating-pool bootstrap refuses existing roles: %', problem
      USING HINT = 'choose other names (--role, --users), or remove those attributes and '
                   'memberships; nothing was changed';
  END IF;
END"""
    ).format(role=sql.Literal(role), names=names)
    return _do_block(_render(body))


def bootstrap(
    plan: BootstrapPlan,
    client: SecretsManagerClient,
    *,
    password_length: int = 32,
    exclude_characters: str = DEFAULT_EXCLUDE_CHARACTERS,
    connect_timeout: float = 5.0,
    security: SecuritySettings | None = None,
    rds: Callable[[], RDSClient] | None = None,
) -> BootstrapReport:
    """Create the roles and create or update the app secret. Safe to re-run.

    The admin logs in only to its own server (the admin secret's host, or the
    RDS lookup for an RDS-managed secret); a `plan.host` must name that server,
    a replica or an allowed host. The privilege check runs before anything
    changes. The app secret keeps its user and password when that password
    still logs in; otherwise (or when the secret is new) the first user gets a
    new password (set as a SCRAM verifier by the admin).

    Raises:
        AdminHostError: the admin secret names no server, or `plan.host` is
            another one.
        PrivilegedRoleError: an existing role must not be used (nothing changed).
        RoleRefusedError: the user to get a password fails the rotation's role
            check (`role_check`) or the pin (nothing of the password changed).
        RotationStateError: a rotation of the app secret is unfinished.
        DatabaseLoginError, DatabaseUnavailableError, TLSSetupError: the admin
            cannot log in.
        rotating_pool.errors.SecretError: the admin secret is missing or malformed.
    """
    security = security or SecuritySettings()
    options = LoginOptions(security, connect_timeout)
    for user in plan.users:  # before anything is created
        security.role_pin.check(user, secret_id=plan.secret_name)
    admin_versions = SecretVersions(client, plan.admin_secret_id)
    admin_arn = admin_versions.describe().arn
    admin = admin_login(
        client,
        plan.admin_secret_id,
        rds or make_rds_client,
        secret_id=plan.secret_name,
        dbname=None,
    )
    host = plan.host or admin.server.address.host
    port = plan.port or admin.server.address.port
    dbname = plan.dbname or admin.credentials.dbname or "postgres"
    if plan.host:
        admin.server.check_app_host(plan.secret_name, host, port, security, what="--host")
    guard = privilege_check_sql(plan.role, plan.users)
    if plan.create_database:
        _create_database_if_missing(admin, dbname, guard, options, plan.admin_secret_id)

    statements = bootstrap_sql(plan.role, plan.users, dbname, plan.schema)
    conn = login(
        dataclasses.replace(admin.credentials, dbname=dbname),
        source="admin secret AWSCURRENT",
        options=options,
        use_tls=admin.use_tls,
        secret_id=plan.admin_secret_id,
    )
    with conn:
        names = [plan.role, *plan.users]
        existing = {
            row[0]
            for row in conn.execute(
                "SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)", [names]
            )
        }
        for statement in statements:
            run_checked(conn, statement)
        created = tuple(n for n in names if n not in existing)
        if created:
            logger.info("bootstrap: created roles %s", ", ".join(repr(n) for n in created))

        app_versions = SecretVersions(client, plan.secret_name)
        previous = _current_app_secret(app_versions)
        username, password = plan.users[0], None
        if previous is not None and previous.get("username") in plan.users:
            username = str(previous["username"])
            candidate = Credentials(
                username=username,
                password=str(previous.get("password", "")),
                host=admin.server.address.host,
                port=admin.server.address.port,
                dbname=dbname,
            )
            if candidate.password:
                probe, _ = try_login(
                    candidate,
                    source="app secret AWSCURRENT",
                    options=options,
                    use_tls=admin.use_tls,
                )
                if probe is not None:
                    probe.close()
                    password = candidate.password
        password_set = password is None
        if password is None:
            # The same check as a rotation's, on the session that runs ALTER ROLE.
            check_role_to_rotate(
                conn,
                username,
                group=plan.role,
                current=None,
                as_admin=True,
                nologin_ok=False,
                secret_id=plan.secret_name,
            )
            password = random_password(
                client, length=password_length, exclude_characters=exclude_characters
            )
            set_password(conn, username, password, grant_login=True, secret_id=plan.secret_name)

    document: dict[str, Any] = {
        **(previous or {}),
        "engine": "postgres",
        "host": host,
        "port": port,
        "dbname": dbname,
        "username": username,
        "password": password,
        "rotation_strategy": plan.strategy.value,
        "rotation_role": plan.role,
        # The same server as the admin's: TLS off only where the admin secret says so.
        "ssl": None if admin.use_tls else False,
    }
    if plan.strategy is Strategy.ALTERNATING:
        document["rotation_users"] = list(plan.users)
        document["masterarn"] = admin_arn
    else:
        document.pop("rotation_users", None)
        document.pop("masterarn", None)
    document = {k: v for k, v in document.items() if v is not None}

    if previous is None:
        answer = client.create_secret(
            Name=plan.secret_name,
            ClientRequestToken=str(uuid.uuid4()),
            SecretString=json.dumps(document),
            Description="Database credentials rotated by rotating_pool.rotation",
        )
        arn, action = answer["ARN"], "created"
    elif document == previous:
        arn, action = app_versions.describe().arn, "unchanged"
    else:
        description = app_versions.describe()
        pending = description.version_with(AWSPENDING)
        if pending is not None:
            # Only a finished rotation's marker can be here (an unfinished one
            # was refused above); left on the version about to lose AWSCURRENT,
            # it would read as a rotation in progress.
            app_versions.remove_stage(AWSPENDING, pending)
        app_versions.put(str(uuid.uuid4()), document, [AWSCURRENT])
        arn, action = description.arn, "updated"
    logger.info("bootstrap: app secret %r %s (user %r)", plan.secret_name, action, username)
    return BootstrapReport(
        secret_arn=arn,
        secret_action=action,
        username=username,
        password_set=password_set,
        roles_created=created,
        statements=tuple(statements),
    )


def create_database_sql(dbname: str) -> str:
    """``CREATE DATABASE`` for `dbname` (it cannot run in a ``DO`` block, so
    `bootstrap` runs it only when the database is missing)."""
    return _render(sql.SQL("CREATE DATABASE {};").format(sql.Identifier(dbname)))


def _create_database_if_missing(
    admin: AdminLogin, dbname: str, guard: str, options: LoginOptions, secret_id: str
) -> None:
    # Connected to the admin's own database: the app's may not exist yet.
    conn = login(
        admin.credentials,
        source="admin secret AWSCURRENT",
        options=options,
        use_tls=admin.use_tls,
        secret_id=secret_id,
    )
    with conn:
        run_checked(conn, guard)  # nothing is created for roles that will be refused
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", [dbname]
        ).fetchone()
        if exists is None:
            conn.execute(sql.SQL(create_database_sql(dbname)))
            logger.info("bootstrap: created database %r", dbname)


def _current_app_secret(versions: SecretVersions) -> dict[str, Any] | None:
    """The app secret's AWSCURRENT document, None if the secret does not exist.

    Refuses while a rotation is unfinished: rewriting AWSCURRENT under it would
    leave its AWSPENDING version pointing at a user the new AWSCURRENT may also name.
    """
    try:
        description = versions.describe()
    except SecretNotFoundError:
        return None
    pending = description.version_with(AWSPENDING)
    if pending is not None and AWSCURRENT not in description.stages[pending]:
        raise RotationStateError(
            f"secret {versions.secret_id!r} has an unfinished rotation (AWSPENDING on version "
            f"{pending!r}): finish it first with `rotating-pool rotate --secret-id "
            f"{versions.secret_id}`",
            secret_id=versions.secret_id,
        )
    current = versions.read(stage=AWSCURRENT)
    return None if current is None else current.document


def run_checked(conn: Login, statement: str) -> None:
    """Run one bootstrap statement; the privilege check's refusal becomes
    PrivilegedRoleError."""
    try:
        conn.execute(sql.SQL(statement))
    except psycopg.errors.RaiseException as exc:
        raise PrivilegedRoleError(
            f"{exc.diag.message_primary} ({exc.diag.message_hint})", key="role"
        ) from None


def _create_role_if_missing(name: str, *, login: bool) -> str:
    check = sql.SQL(
        "IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {}) THEN"
    ).format(sql.Literal(name))
    create = sql.SQL("CREATE ROLE {} {};").format(
        sql.Identifier(name), sql.SQL("LOGIN" if login else "NOLOGIN")
    )
    return _do_block(f"BEGIN\n  {_render(check)}\n    {_render(create)}\n  END IF;\nEND")


def _do_block(body: str) -> str:
    # Dollar quoting keeps the body readable; the tag is one the names cannot close.
    tag = "$rp$"
    while tag in body:
        tag = tag[:-1] + "x$"
    return f"DO {tag}{body}{tag};"


def _render(statement: sql.Composable) -> str:
    # No connection context: the text printed by --print-sql is the text run.
    return statement.as_string(None)
