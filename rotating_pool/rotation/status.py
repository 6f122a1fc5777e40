"""What a secret and its database users look like right now (``rotating-pool status``).

This module gathers (and gives the JSON shape); `status_text` renders the text.

For each labelled version of the secret: its labels, the user it names and
whether its password logs in. For each database user: whether the role
exists, may log in (``rolcanlogin``), which versions' passwords it accepts,
and how many sessions it has open (``pg_stat_activity``, leaving out the
rotation's own sessions). And the database's IAM-only users: login roles that
are members of ``rds_iam`` (on RDS they log in only with IAM auth tokens; the
people accounts `rotating_pool.rotation.people` makes), with their group roles.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rotating_pool.errors import SecretError
from rotating_pool.rotation.clients import make_rds_client
from rotating_pool.rotation.database import APPLICATION_NAME, Login, LoginOptions, try_login
from rotating_pool.rotation.errors import (
    AdminHostError,
    AuthenticationMethodError,
    DatabaseUnavailableError,
    RotationConfigError,
    TLSSetupError,
)
from rotating_pool.rotation.hosts import admin_login
from rotating_pool.rotation.people import IAM_ROLE
from rotating_pool.rotation.security import SecuritySettings, tls_wanted
from rotating_pool.rotation.settings import RotationSettings
from rotating_pool.rotation.status_text import render_status
from rotating_pool.rotation.versions import SecretVersion, SecretVersions
from rotating_pool.secret import AWSCURRENT, AWSPENDING, AWSPREVIOUS

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

# A login that fails so is reported, not raised: status is a diagnosis.
_LOGIN_FAILURES = (DatabaseUnavailableError, TLSSetupError, AuthenticationMethodError)

__all__ = [
    "CredentialSessions",
    "IamUser",
    "SecretStatus",
    "UserStatus",
    "VersionStatus",
    "secret_status",
]

# Versions are listed in this order; other labels (custom ones) after them.
_STAGE_ORDER = {AWSCURRENT: 0, AWSPENDING: 1, AWSPREVIOUS: 2}


@dataclass(frozen=True)
class VersionStatus:
    """One labelled version of the secret.

    Attributes:
        version_id: its id.
        stages: its labels.
        created: when it was created, if Secrets Manager said.
        username: the user it names; None when it has no value (yet).
        logs_in: whether its password logs in; None when not tried.
        login_error: the server's reason when it did not log in.
    """

    version_id: str
    stages: tuple[str, ...]
    created: datetime.datetime | None
    username: str | None
    logs_in: bool | None
    login_error: str | None = None


@dataclass(frozen=True)
class UserStatus:
    """One database user the secret uses.

    Attributes:
        username: the role name.
        exists: whether the role exists; None when the database was not reachable.
        can_login: ``rolcanlogin``; None when unknown.
        working_stages: labels of the versions whose password this user accepts.
        sessions: sessions open as this user (session user), None when unknown.
        iam_only: a member of ``rds_iam``, so on RDS its password is refused
            and only IAM auth tokens log in; None when unknown.
    """

    username: str
    exists: bool | None
    can_login: bool | None
    working_stages: tuple[str, ...]
    sessions: int | None
    iam_only: bool | None = None

    @property
    def password_works(self) -> bool:
        """Whether some labelled version's password logs in as this user."""
        return bool(self.working_stages)


@dataclass(frozen=True)
class IamUser:
    """A login role of the database that is a member of ``rds_iam`` (IAM-only).

    Attributes:
        username: the role name.
        groups: the roles it is a direct member of, ``rds_iam`` left out.
    """

    username: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class CredentialSessions:
    """One user's open sessions, by whether they logged in with AWSCURRENT's credentials.

    A session is on superseded credentials when it is logged in as a user other
    than AWSCURRENT's, or as AWSCURRENT's user but opened before the AWSCURRENT
    version was created (its password was set later, at setSecret). Sessions
    opened between the version's creation and setSecret also used the old
    password but cannot be told apart: `superseded` is a lower bound.

    Attributes:
        username: the role name.
        current: sessions on AWSCURRENT's credentials.
        superseded: sessions on credentials a rotation replaced.
        unknown: sessions whose start the querying role may not see (without
            the admin secret, ``pg_stat_activity`` hides other roles' details).
    """

    username: str
    current: int
    superseded: int
    unknown: int = 0


@dataclass(frozen=True)
class SecretStatus:
    """The state of a secret and of the users it names.

    Attributes:
        secret_id, arn, name: the secret.
        rotation_enabled: as DescribeSecret says.
        strategy, role: from AWSCURRENT's rotation keys (None when absent).
        problem: why the rotation keys are unusable, if they are.
        versions, users: see `VersionStatus`, `UserStatus`.
        database_error: why the database could not be queried, if it could not.
        credential_sessions: open sessions per user, current or superseded
            (see `CredentialSessions`); empty when the database was not queried.
        current_since: when the AWSCURRENT version was created: sessions of its
            user opened earlier are on superseded credentials.
        iam_users: the database's IAM-only login roles (see `IamUser`); empty
            when the database was not queried or has none.
    """

    secret_id: str
    arn: str
    name: str
    rotation_enabled: bool | None
    strategy: str | None
    role: str | None
    problem: str | None
    versions: tuple[VersionStatus, ...]
    users: tuple[UserStatus, ...]
    database_error: str | None = None
    credential_sessions: tuple[CredentialSessions, ...] = ()
    current_since: datetime.datetime | None = None
    iam_users: tuple[IamUser, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (no password in it)."""
        return {
            "secret_id": self.secret_id,
            "arn": self.arn,
            "name": self.name,
            "rotation_enabled": self.rotation_enabled,
            "strategy": self.strategy,
            "role": self.role,
            "problem": self.problem,
            "database_error": self.database_error,
            "versions": [
                {
                    "version_id": v.version_id,
                    "stages": list(v.stages),
                    "created": v.created.isoformat() if v.created else None,
                    "username": v.username,
                    "logs_in": v.logs_in,
                    "login_error": v.login_error,
                }
                for v in self.versions
            ],
            "users": [
                {
                    "username": u.username,
                    "exists": u.exists,
                    "can_login": u.can_login,
                    "password_works": u.password_works,
                    "working_stages": list(u.working_stages),
                    "sessions": u.sessions,
                    "iam_only": u.iam_only,
                }
                for u in self.users
            ],
            "iam_users": [
                {"username": i.username, "groups": list(i.groups)} for i in self.iam_users
            ],
            **_credential_sessions_json(self),
        }

    def render(self) -> str:
        """Readable tables, for a terminal (`status_text.render_status`): every
        name and message is shown with control characters escaped."""
        return render_status(self)


def secret_status(
    client: SecretsManagerClient,
    secret_id: str,
    *,
    connect_timeout: float = 5.0,
    security: SecuritySettings | None = None,
    rds: Callable[[], RDSClient] | None = None,
) -> SecretStatus:
    """Gather the `SecretStatus` of `secret_id`.

    Every labelled version's password is tried once (so failed logins appear in
    the server log); the role and session queries run over a session of the
    first version that logs in, else of the admin secret (``masterarn``), which
    logs in only to its own server (the same host rule as a rotation).

    Args:
        security: TLS and authentication rules, host allow-list (default:
            verify-full against the system's CAs).
        rds: makes an ``rds`` client, for an RDS-managed admin secret.

    Raises:
        rotating_pool.errors.SecretError: the secret is missing or unreadable.
    """
    options = LoginOptions(security or SecuritySettings(), connect_timeout)
    versions = SecretVersions(client, secret_id)
    description = versions.describe()
    created = {v.version_id: v.created for v in versions.list_versions()}

    settings: RotationSettings | None = None
    problem: str | None = None
    current = versions.read(stage=AWSCURRENT)
    if current is not None:
        try:
            settings = RotationSettings.from_document(secret_id, current.document)
        except RotationConfigError as error:
            problem = str(error)

    rows: list[VersionStatus] = []
    working: dict[str, list[str]] = {}
    query_conn: Login | None = None
    database_error: str | None = None
    # Unlabelled versions are deprecated (AWS leaves them out of DescribeSecret).
    labelled = [
        (version_id, tuple(sorted(stages, key=lambda s: (_STAGE_ORDER.get(s, 9), s))))
        for version_id, stages in description.stages.items()
        if stages
    ]
    labelled.sort(key=lambda item: _STAGE_ORDER.get(item[1][0], 9))
    for version_id, stages in labelled:
        try:
            version = versions.read(version_id=version_id)
        except SecretError as error:
            rows.append(
                VersionStatus(version_id, stages, created.get(version_id), None, None, str(error))
            )
            continue
        if version is None:
            rows.append(VersionStatus(version_id, stages, created.get(version_id), None, None))
            continue
        creds = version.credentials
        logs_in: bool | None = None
        reason: str | None = None
        if database_error is None:
            source = ", ".join(stages) or version_id
            try:
                use_tls = tls_wanted(secret_id, version.document, what=source)
                conn, attempt = try_login(creds, source=source, options=options, use_tls=use_tls)
            except _LOGIN_FAILURES as error:
                database_error, reason = str(error), "database unreachable"
            else:
                logs_in, reason = conn is not None, attempt.reason
                if conn is not None:
                    working.setdefault(creds.username, []).extend(stages)
                    if query_conn is None:
                        query_conn = conn
                    else:
                        conn.close()
        rows.append(
            VersionStatus(
                version_id, stages, created.get(version_id), creds.username, logs_in, reason
            )
        )

    usernames: list[str] = list(settings.users) if settings and settings.users else []
    for row in rows:
        if row.username is not None and row.username not in usernames:
            usernames.append(row.username)

    if query_conn is None and database_error is None and settings and settings.master_arn:
        query_conn, database_error = _admin_session(
            client,
            secret_id,
            settings.master_arn,
            current,
            options=options,
            rds=rds or make_rds_client,
        )
    roles: dict[str, bool] = {}
    sessions: dict[str, int] = {}
    current_row = next((row for row in rows if AWSCURRENT in row.stages), None)
    current_since = _created(client, secret_id, current_row) if current_row else None
    by_credentials: tuple[CredentialSessions, ...] = ()
    iam_users: tuple[IamUser, ...] = ()
    if query_conn is not None:
        with query_conn:
            roles, sessions = _roles_and_sessions(query_conn, usernames)
            iam_users = _iam_users(query_conn)
            master_arn = settings.master_arn if settings else None
            by_credentials = _credential_sessions(
                query_conn,
                None
                if master_arn is None
                else lambda: _admin_session(
                    client,
                    secret_id,
                    master_arn,
                    current,
                    options=options,
                    rds=rds or make_rds_client,
                ),
                usernames=usernames,
                current_user=current_row.username if current_row else None,
                since=current_since,
            )
    known = query_conn is not None
    users = tuple(
        UserStatus(
            username=name,
            exists=(name in roles) if known else None,
            can_login=roles.get(name) if known else None,
            working_stages=tuple(working.get(name, ())),
            sessions=sessions.get(name, 0) if known else None,
            iam_only=any(i.username == name for i in iam_users) if known else None,
        )
        for name in usernames
    )
    return SecretStatus(
        secret_id=secret_id,
        arn=description.arn,
        name=description.name,
        rotation_enabled=description.rotation_enabled,
        strategy=settings.strategy.value if settings else None,
        role=settings.role if settings else None,
        problem=problem,
        versions=tuple(rows),
        users=users,
        database_error=database_error,
        credential_sessions=by_credentials,
        current_since=current_since,
        iam_users=iam_users,
    )


def _admin_session(
    client: SecretsManagerClient,
    secret_id: str,
    master_arn: str,
    current: SecretVersion | None,
    *,
    options: LoginOptions,
    rds: Callable[[], RDSClient],
) -> tuple[Login | None, str | None]:
    if current is None:
        return None, "no version of the secret logs in, and AWSCURRENT has no value"
    app = current.credentials
    try:
        admin = admin_login(client, master_arn, rds, secret_id=secret_id, dbname=app.dbname)
        admin.server.check_app_host(
            secret_id, app.host, app.port, options.security, what="AWSCURRENT"
        )
        conn, attempt = try_login(
            admin.credentials, source="admin secret", options=options, use_tls=admin.use_tls
        )
    except (AdminHostError, SecretError, *_LOGIN_FAILURES) as error:
        return None, str(error)
    return conn, None if conn is not None else f"admin secret does not log in: {attempt.reason}"


def _roles_and_sessions(
    conn: Login, usernames: Sequence[str]
) -> tuple[dict[str, bool], dict[str, int]]:
    # Our own login probes are closed by now; the query session is left out.
    roles = {
        name: bool(can_login)
        for name, can_login in conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)",
            [list(usernames)],
        )
    }
    sessions = {
        name: int(count)
        for name, count in conn.execute(
            "SELECT usename, count(*) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = ANY(%s) AND pid <> pg_backend_pid()"
            " AND application_name IS DISTINCT FROM %s GROUP BY usename",
            [list(usernames), APPLICATION_NAME],
        )
    }
    return roles, sessions


def _iam_users(conn: Login) -> tuple[IamUser, ...]:
    # Through pg_auth_members, not pg_has_role('rds_iam'): a server without
    # the role answers no rows instead of an error.
    rows = conn.execute(
        "SELECT r.rolname, coalesce(array_agg(g.rolname ORDER BY g.rolname)"
        "   FILTER (WHERE g.rolname IS NOT NULL), '{}')"
        " FROM pg_catalog.pg_roles r"
        " JOIN pg_catalog.pg_auth_members i ON i.member = r.oid"
        " JOIN pg_catalog.pg_roles iam ON iam.oid = i.roleid AND iam.rolname = %s"
        " LEFT JOIN pg_catalog.pg_auth_members m ON m.member = r.oid AND m.roleid <> iam.oid"
        " LEFT JOIN pg_catalog.pg_roles g ON g.oid = m.roleid"
        " WHERE r.rolcanlogin GROUP BY r.rolname ORDER BY r.rolname",
        [IAM_ROLE],
    ).fetchall()
    return tuple(IamUser(str(name), tuple(map(str, groups))) for name, groups in rows)


# -- sessions on current and superseded credentials ---------------------------------


def _credential_sessions(
    app_conn: Login,
    admin_session: Callable[[], tuple[Login | None, str | None]] | None,
    *,
    usernames: Sequence[str],
    current_user: str | None,
    since: datetime.datetime | None,
) -> tuple[CredentialSessions, ...]:
    """`CredentialSessions` per user, queried as the admin (``masterarn``) when
    there is one: an app user's session sees no other role's ``backend_start``."""
    if admin_session is not None:
        admin, _ = admin_session()
        if admin is not None:
            with admin:
                return _sessions_by_credentials(admin, usernames, current_user, since)
    return _sessions_by_credentials(app_conn, usernames, current_user, since)


def _created(
    client: SecretsManagerClient, secret_id: str, version: VersionStatus
) -> datetime.datetime | None:
    """When `version` was created, as GetSecretValue dates it (moto's
    ListSecretVersionIds answers the time of the call instead)."""
    try:
        answer = client.get_secret_value(SecretId=secret_id, VersionId=version.version_id)
    except Exception:  # keep what the listing said
        return version.created
    created = answer.get("CreatedDate")
    return created if isinstance(created, datetime.datetime) else version.created


def _sessions_by_credentials(
    conn: Login,
    usernames: Sequence[str],
    current_user: str | None,
    since: datetime.datetime | None,
) -> tuple[CredentialSessions, ...]:
    """Each user's open sessions, split by `CredentialSessions`'s rule."""
    # An app user acts as the group role (``ALTER ROLE ... SET role``), which
    # may not see its own sessions' details; as itself it may.
    conn.execute("SET ROLE NONE")
    counts = {
        name: (int(fresh), int(hidden), int(total))
        for name, fresh, hidden, total in conn.execute(
            "SELECT usename,"
            " count(*) FILTER (WHERE usename = %s AND (%s::timestamptz IS NULL"
            " OR backend_start >= %s::timestamptz)),"
            " count(*) FILTER (WHERE usename = %s AND backend_start IS NULL),"
            " count(*)"
            " FROM pg_catalog.pg_stat_activity"
            " WHERE usename = ANY(%s) AND pid <> pg_backend_pid()"
            " AND application_name IS DISTINCT FROM %s GROUP BY usename",
            [current_user, since, since, current_user, list(usernames), APPLICATION_NAME],
        )
    }
    return tuple(
        CredentialSessions(name, fresh, total - fresh - hidden, hidden)
        for name in usernames
        for fresh, hidden, total in [counts.get(name, (0, 0, 0))]
    )


def _credential_sessions_json(status: SecretStatus) -> dict[str, Any]:
    return {
        "current_since": status.current_since.isoformat() if status.current_since else None,
        "sessions_by_credentials": [
            {
                "username": s.username,
                "current": s.current,
                "superseded": s.superseded,
                "unknown": s.unknown,
            }
            for s in status.credential_sessions
        ],
    }
