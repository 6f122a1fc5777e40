"""The check a role passes before a rotation changes its password.

The app secret's content is not trusted: whoever may write it (PutSecretValue)
must not be able to make the admin give a password of their choosing, or a
new one they can read in AWSPENDING, to a role they could not use before. So,
in the step that changes a password, on the session that will run
``ALTER ROLE`` and in one query, the role to change (the *user*) must:

- exist, and not be the admin running the check (``is_admin``);
- be able to log in (``not_login_capable``); for alternating rotation a
  NOLOGIN user is accepted only as a *fresh* one, as the second user starts:
  no role but the admin is a member of it (PostgreSQL 16 makes a CREATEROLE
  role that creates another its member, with ADMIN OPTION) and it owns
  nothing and holds no privilege of its own (no ``pg_shdepend`` row names
  it, membership bookkeeping aside), so granting it LOGIN gives nothing but
  what the group role gives;
- have none of SUPERUSER, CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS
  (``attribute``);
- not be a member, directly or through other roles (``pg_auth_members``
  followed to the end), of a role with one of them, of ``rds_superuser``, or
  of a ``pg_*`` predefined role (``member_of_privileged_role``);
- hold ADMIN OPTION on no role, itself or through its memberships
  (``admin_option``).

For alternating rotation, the group role (``rotation_role``) passes the same
test (as ``rotation_role``), must be NOLOGIN (``group_can_log_in``), and both
the user to change and AWSCURRENT's user must be members of it
(``user_not_in_group``, ``current_not_in_group``): the secret's writer, who
knows AWSCURRENT's password, already has the group's privileges, and the new
user gets no more.

``pg_database_owner`` is no ``pg_auth_members`` row (its membership is
implicit for a database's owner), so owning the app's database is allowed.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from rotating_pool.rotation.database import Login
from rotating_pool.rotation.errors import RoleRefusedError, secret_prefix

__all__ = ["ROLE_CHECK_SQL", "RoleProblem", "check_role_to_rotate", "role_problems"]

logger = logging.getLogger("rotating_pool.rotation")

# One statement, so the verdict is of one snapshot of the catalogs. The
# parameters: user, grp (NULL: no group role), current (NULL: not checked),
# admin (NULL: the session is the user's own), nologin_ok.
ROLE_CHECK_SQL = r"""
WITH RECURSIVE
checked(who, oid) AS (
  SELECT 'user', oid FROM pg_catalog.pg_roles WHERE rolname = %(user)s
  UNION ALL
  SELECT 'rotation_role', oid FROM pg_catalog.pg_roles WHERE rolname = %(grp)s
  UNION ALL
  SELECT 'current', oid FROM pg_catalog.pg_roles WHERE rolname = %(current)s
),
up(who, roleid) AS (
  SELECT c.who, m.roleid FROM checked c JOIN pg_catalog.pg_auth_members m ON m.member = c.oid
  UNION
  SELECT up.who, m.roleid FROM up JOIN pg_catalog.pg_auth_members m ON m.member = up.roleid
),
judged(who, oid) AS (SELECT who, oid FROM checked WHERE who <> 'current')
SELECT 'user', 'missing', NULL
 WHERE NOT EXISTS (SELECT FROM checked WHERE who = 'user')
UNION ALL
SELECT 'rotation_role', 'missing', NULL
 WHERE %(grp)s::text IS NOT NULL AND NOT EXISTS (SELECT FROM checked WHERE who = 'rotation_role')
UNION ALL
SELECT j.who, 'is_admin', r.rolname
  FROM judged j JOIN pg_catalog.pg_roles r ON r.oid = j.oid
 WHERE r.rolname IN (%(admin)s, session_user) AND %(admin)s::text IS NOT NULL
UNION ALL
SELECT 'user', 'not_login_capable', NULL
  FROM checked c JOIN pg_catalog.pg_roles r ON r.oid = c.oid
 WHERE c.who = 'user' AND NOT r.rolcanlogin
   AND (NOT %(nologin_ok)s
        OR EXISTS (SELECT FROM pg_catalog.pg_auth_members m
                    WHERE m.roleid = r.oid AND m.member NOT IN (
                      SELECT oid FROM pg_catalog.pg_roles WHERE rolname = %(admin)s))
        OR EXISTS (SELECT FROM pg_catalog.pg_shdepend d
                    WHERE d.refclassid = 'pg_catalog.pg_authid'::regclass
                      AND d.refobjid = r.oid
                      AND d.classid <> 'pg_catalog.pg_auth_members'::regclass))
UNION ALL
SELECT 'rotation_role', 'group_can_log_in', NULL
  FROM checked c JOIN pg_catalog.pg_roles r ON r.oid = c.oid
 WHERE c.who = 'rotation_role' AND r.rolcanlogin
UNION ALL
SELECT j.who, 'attribute', a.name
  FROM judged j JOIN pg_catalog.pg_roles r ON r.oid = j.oid,
       LATERAL (VALUES ('SUPERUSER', r.rolsuper), ('CREATEROLE', r.rolcreaterole),
                       ('CREATEDB', r.rolcreatedb), ('REPLICATION', r.rolreplication),
                       ('BYPASSRLS', r.rolbypassrls)) AS a(name, has)
 WHERE a.has
UNION ALL
SELECT up.who, 'member_of_privileged_role', m.rolname
  FROM up JOIN pg_catalog.pg_roles m ON m.oid = up.roleid
 WHERE up.who <> 'current'
   AND (m.rolsuper OR m.rolcreaterole OR m.rolcreatedb OR m.rolreplication OR m.rolbypassrls
        OR m.rolname = 'rds_superuser' OR m.rolname LIKE 'pg\_%%')
UNION ALL
SELECT s.who, 'admin_option', g.rolname
  FROM (SELECT who, oid FROM judged UNION SELECT who, roleid FROM up WHERE who <> 'current') s
  JOIN pg_catalog.pg_auth_members am ON am.member = s.oid AND am.admin_option
  JOIN pg_catalog.pg_roles g ON g.oid = am.roleid
UNION ALL
SELECT w.who, w.who || '_not_in_group', NULL
  FROM (VALUES ('user'), ('current')) AS w(who)
 WHERE %(grp)s::text IS NOT NULL
   AND EXISTS (SELECT FROM checked WHERE who = 'rotation_role')
   AND (w.who = 'user' OR %(current)s::text IS NOT NULL)
   AND NOT EXISTS (SELECT FROM up JOIN checked g ON g.who = 'rotation_role' AND g.oid = up.roleid
                    WHERE up.who = w.who)
ORDER BY 1, 2, 3
"""

# What each check refuses, for messages.
_WORDS = {
    "missing": "does not exist",
    "is_admin": "is the admin itself",
    "not_login_capable": "cannot log in and is not a fresh alternating user (it has members, "
    "owns objects or holds privileges of its own)",
    "group_can_log_in": "can log in (a group role must be NOLOGIN)",
    "attribute": "has the attribute",
    "member_of_privileged_role": "is a member of the privileged role",
    "admin_option": "holds ADMIN OPTION on",
    "user_not_in_group": "is not a member of the group role",
    "current_not_in_group": "(AWSCURRENT's user) is not a member of the group role",
}


@dataclass(frozen=True)
class RoleProblem:
    """One failed check.

    Attributes:
        who: ``user``, ``rotation_role`` or ``current``.
        check: the check's name (see the module docstring).
        detail: the attribute or role concerned, if any.
    """

    who: str
    check: str
    detail: str | None


def role_problems(
    conn: Login,
    user: str,
    *,
    group: str | None,
    current: str | None,
    admin: str | None,
    nologin_ok: bool,
) -> list[RoleProblem]:
    """Run `ROLE_CHECK_SQL` on `conn`; return the failed checks (none: fit).

    Args:
        user: the role whose password would change.
        group: the group role both users must belong to (None: not checked).
        current: AWSCURRENT's user, which must belong to `group` (None: not checked).
        admin: the admin's user name when `conn` is the admin's session (then
            the user must not be it); None when `conn` is the user's own.
        nologin_ok: accept a fresh NOLOGIN user (alternating rotation's second user).
    """
    rows = conn.execute(
        ROLE_CHECK_SQL,
        {"user": user, "grp": group, "current": current, "admin": admin, "nologin_ok": nologin_ok},
    ).fetchall()
    return [RoleProblem(str(who), str(check), detail) for who, check, detail in rows]


def check_role_to_rotate(
    conn: Login,
    user: str,
    *,
    group: str | None,
    current: str | None,
    as_admin: bool,
    nologin_ok: bool,
    secret_id: str | None,
    ignore: Collection[str] = (),
) -> None:
    """Refuse, before any ``ALTER ROLE``, a role a rotation must not change.

    Args:
        as_admin: `conn` is the admin's session (its ``session_user`` is the admin).
        ignore: checks not to refuse on (bootstrap is about to settle them).
        others: see `role_problems`.

    Raises:
        RoleRefusedError: naming every failed check; nothing was changed.
    """
    admin = conn.info.user if as_admin else None
    problems = [
        p
        for p in role_problems(
            conn, user, group=group, current=current, admin=admin, nologin_ok=nologin_ok
        )
        if p.check not in ignore
    ]
    if not problems:
        return
    names = {"user": user, "rotation_role": group, "current": current}
    said = "; ".join(
        f"{names[p.who]!r} {_WORDS.get(p.check, p.check)}"
        + (f" {p.detail!r}" if p.detail is not None else "")
        + (f" {group!r}" if p.check.endswith("_not_in_group") else "")
        for p in problems
    )
    checks = tuple(dict.fromkeys(p.check for p in problems))
    logger.warning(
        "secret %r: refused to change the password of %r (checks failed: %s)",
        secret_id,
        user,
        ", ".join(checks),
    )
    raise RoleRefusedError(
        f"{secret_prefix(secret_id)}refusing to change the password of {user!r}: {said}. Nothing "
        "was changed. A rotation changes only the application's own unprivileged users: if "
        "the secret was edited by someone else, restore it; otherwise fix the roles "
        "(rotating-pool bootstrap checks them too)",
        secret_id=secret_id,
        role=user,
        checks=checks,
    )
