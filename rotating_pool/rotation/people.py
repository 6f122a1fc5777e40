"""People accounts: database users who log in with IAM auth tokens, no password.

``rotating-pool bootstrap --people-user NAME --people-role GROUP`` makes, as
the system accounts' scheme does (`rotating_pool.rotation.bootstrap`)::

    GROUP    NOLOGIN   holds the privileges: CONNECT on the database and
                       USAGE on the schema (grant it what people may read)
    NAME     LOGIN     no password; a member of ``rds_iam`` and of GROUP,
                       with `ALTER ROLE NAME SET role = 'GROUP'`

On RDS, a member of ``rds_iam`` can log in only with an IAM auth token
(https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.DBAccounts.html),
so the account has no password to rotate, print or store. GROUP gets no
CREATE on the schema: people read and query; objects stay owned by the
application's own group role.

Before anything changes, every name passes the deployer's pin
(``--allowed-role``), bootstrap's own check (`privilege_check_sql`) and, for
roles that already exist, the rotation's role check (`role_check`): no
privileged role, no member of one or of a ``pg_*`` role, not the admin, no
ADMIN OPTION, a group that cannot log in. ``rds_iam`` must exist (RDS has it);
a plain PostgreSQL without it is refused with `IamRoleMissingError`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rotating_pool.rotation.bootstrap import group_scheme_sql, run_checked
from rotating_pool.rotation.clients import make_rds_client
from rotating_pool.rotation.database import Login, LoginOptions, login
from rotating_pool.rotation.errors import IamRoleMissingError, RotationConfigError
from rotating_pool.rotation.hosts import admin_login
from rotating_pool.rotation.role_check import check_role_to_rotate
from rotating_pool.rotation.security import SecuritySettings
from rotating_pool.rotation.settings import check_role_name

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["IAM_ROLE", "PeoplePlan", "PeopleReport", "bootstrap_people", "people_sql"]

logger = logging.getLogger("rotating_pool.rotation")

IAM_ROLE = "rds_iam"
"""The role whose members RDS lets log in only with IAM auth tokens."""

# Checks that speak of a role's place in the scheme, which bootstrap is about
# to make: a missing role or membership is what it creates.
_SETTLED_BY_BOOTSTRAP = frozenset({"missing", "user_not_in_group"})


@dataclass(frozen=True)
class PeoplePlan:
    """The people accounts `bootstrap_people` sets up.

    Args:
        admin_secret_id: name or ARN of the admin secret (RDS JSON shape).
        role: the NOLOGIN group role holding the people's privileges.
        users: the people accounts (LOGIN, no password, members of ``rds_iam``).
        dbname: the database they connect to (default: the admin secret's).
        schema: the schema the group role may use.
    """

    admin_secret_id: str
    role: str
    users: tuple[str, ...]
    dbname: str | None = None
    schema: str = "public"

    def __post_init__(self) -> None:
        check_role_name(self.role, what="the people group role", secret_id=None, key="people_role")
        if not self.users:
            raise RotationConfigError("name at least one people user", key="people_users")
        for user in self.users:
            check_role_name(user, what="a people user", secret_id=None, key="people_users")
        names = [self.role, *self.users]
        if IAM_ROLE in names or len(set(names)) != len(names):
            raise RotationConfigError(
                f"the people group role {self.role!r} and the people users {list(self.users)} "
                f"must be distinct names, none of them {IAM_ROLE!r}",
                key="people_users",
            )
        check_role_name(self.schema, what="the schema", secret_id=None, key="schema")


@dataclass(frozen=True)
class PeopleReport:
    """What `bootstrap_people` did.

    Attributes:
        roles_created: the roles that did not exist before.
        users: the people accounts, as they now are.
        statements: the SQL run (there is no password in it, nor any to put).
    """

    roles_created: tuple[str, ...]
    users: tuple[str, ...]
    statements: tuple[str, ...] = field(repr=False)


def people_sql(role: str, users: Sequence[str], dbname: str, schema: str = "public") -> list[str]:
    """The idempotent statements that set up people accounts: the privilege
    check first, then roles and grants.

    ``PASSWORD NULL`` on every user: an existing role keeps no password a
    leaked copy of could still open.

    >>> print(people_sql("people", ["ana"], "appdb")[-1])
    GRANT USAGE ON SCHEMA "public" TO "people";
    """
    return group_scheme_sql(
        role,
        users,
        dbname,
        schema,
        schema_privileges=("USAGE",),
        also_grant=(IAM_ROLE,),
        no_password=True,
    )


def bootstrap_people(
    plan: PeoplePlan,
    client: SecretsManagerClient,
    *,
    connect_timeout: float = 5.0,
    security: SecuritySettings | None = None,
    rds: Callable[[], RDSClient] | None = None,
) -> PeopleReport:
    """Create or bring up to date the people accounts of `plan`. Safe to re-run.

    Raises:
        RoleRefusedError: a name is outside the pin, or an existing role fails
            the rotation's role check (nothing changed).
        PrivilegedRoleError: bootstrap's own check refused an existing role.
        IamRoleMissingError: the server has no ``rds_iam`` role (nothing changed).
        DatabaseLoginError, DatabaseUnavailableError, TLSSetupError: the admin
            cannot log in.
        rotating_pool.errors.SecretError: the admin secret is missing or malformed.
    """
    security = security or SecuritySettings()
    for name in plan.users:  # before any login
        security.role_pin.check(name, secret_id=None)
    admin = admin_login(
        client,
        plan.admin_secret_id,
        rds or make_rds_client,
        secret_id=plan.admin_secret_id,
        dbname=None,
    )
    dbname = plan.dbname or admin.credentials.dbname or "postgres"
    statements = people_sql(plan.role, plan.users, dbname, plan.schema)
    conn = login(
        dataclasses.replace(admin.credentials, dbname=dbname),
        source="admin secret AWSCURRENT",
        options=LoginOptions(security, connect_timeout),
        use_tls=admin.use_tls,
        secret_id=plan.admin_secret_id,
    )
    with conn:
        names = [plan.role, *plan.users]
        existing = _existing_roles(conn, [*names, IAM_ROLE])
        if IAM_ROLE not in existing:
            raise IamRoleMissingError(
                f"the server has no {IAM_ROLE!r} role: people accounts log in with IAM auth "
                f"tokens, which RDS and Aurora PostgreSQL grant through {IAM_ROLE!r}. Run this "
                "against an RDS instance, or create the role first where a stand-in answers "
                f"IAM logins (CREATE ROLE {IAM_ROLE} NOLOGIN); nothing was changed",
                key="people_users",
            )
        guard, *changes = statements
        run_checked(conn, guard)  # bootstrap's own check first, as for the app's roles
        _check_existing(conn, plan, existing)
        for statement in changes:
            run_checked(conn, statement)
    created = tuple(n for n in names if n not in existing)
    if created:
        logger.info("bootstrap: created people roles %s", ", ".join(repr(n) for n in created))
    logger.info("bootstrap: people accounts %s ready (IAM only)", ", ".join(map(repr, plan.users)))
    return PeopleReport(roles_created=created, users=plan.users, statements=tuple(statements))


def _existing_roles(conn: Login, names: Sequence[str]) -> set[str]:
    return {
        str(row[0])
        for row in conn.execute(
            "SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)", [list(names)]
        )
    }


def _check_existing(conn: Login, plan: PeoplePlan, existing: set[str]) -> None:
    """The rotation's role check on the people users and their group, minus
    what bootstrap is about to settle (a missing role, membership of the group)."""
    group = plan.role if plan.role in existing else None
    for user in plan.users:  # a missing user still has its group judged
        check_role_to_rotate(
            conn,
            user,
            group=group,
            current=None,
            as_admin=True,
            nologin_ok=True,
            secret_id=None,
            ignore=_SETTLED_BY_BOOTSTRAP,
        )
