"""Setting a role's password without the plaintext ever reaching the server.

``ALTER ROLE`` cannot take a bind parameter for the password, so the statement
text holds it, and with ``log_statement = 'all'`` the server log holds the
statement. Sending a SCRAM-SHA-256 verifier computed by libpq on the client
(``PQencryptPasswordConn``, which libpq documents for exactly this use:
https://www.postgresql.org/docs/current/libpq-misc.html) instead keeps the
plaintext out of the statement, the log and ``pg_stat_activity``; the server
stores the verifier as is and the plaintext logs in (testSecret logs in with it
after every rotation in tests/test_rotation_rotate.py, and
test_no_plaintext_password_reaches_the_server_log reads the server log).
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from rotating_pool.rotation.database import Login
from rotating_pool.rotation.errors import PasswordChangeError

__all__ = ["scram_verifier", "set_password"]

logger = logging.getLogger("rotating_pool.rotation")

_SCRAM_PREFIX = "SCRAM-SHA-256$"


def scram_verifier(conn: Login, username: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of `password`, computed locally by libpq.

    No round trip: with the algorithm given, libpq does not ask the server.
    """
    verifier = conn.pgconn.encrypt_password(
        password.encode(), username.encode(), b"scram-sha-256"
    ).decode("ascii")
    # A guard, not an expectation: whatever libpq returns must never be
    # something the server would take as a plaintext password.
    if not verifier.startswith(_SCRAM_PREFIX):
        raise PasswordChangeError("libpq did not return a SCRAM-SHA-256 verifier; not sending it")
    return verifier


def set_password(
    conn: Login,
    username: str,
    password: str,
    *,
    grant_login: bool,
    secret_id: str | None,
) -> None:
    """Give `username` the password `password` (as its SCRAM verifier).

    Args:
        conn: a session allowed to change the role: the role itself (a user may
            change its own password, not its LOGIN attribute) or an admin.
        grant_login: also add ``LOGIN`` (needs an admin).

    Raises:
        PasswordChangeError: the server refused; the message has its reason
            with the verifier blanked out.
    """
    verifier = scram_verifier(conn, username, password)
    statement = sql.SQL("ALTER ROLE {role} WITH {login}PASSWORD {verifier}").format(
        role=sql.Identifier(username),
        login=sql.SQL("LOGIN " if grant_login else ""),
        verifier=sql.Literal(verifier),
    )
    try:
        conn.execute(statement)
    except psycopg.Error as exc:
        reason = (exc.diag.message_primary or str(exc)).replace(verifier, "<verifier>")
        raise PasswordChangeError(
            f"secret {secret_id!r}: the database refused to set the password of "
            f"{username!r} as {_session_user(conn)!r}: {reason} (SQLSTATE {exc.sqlstate}); "
            + (
                "the admin needs CREATEROLE (or superuser)"
                if grant_login
                else "a user may change its own password only as itself: is a SET ROLE "
                "default still in force?"
            ),
            secret_id=secret_id,
        ) from None
    logger.info("secret %r: password of %r set (SCRAM verifier)", secret_id, username)


def _session_user(conn: Login) -> str:
    return conn.info.user
