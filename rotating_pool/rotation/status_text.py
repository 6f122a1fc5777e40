"""The text of ``rotating-pool status``: a `SecretStatus` as tables for a terminal.

`rotating_pool.rotation.status` gathers; this module only renders. What it
prints comes from places an attacker may write: a secret's names and labels,
a server's refusal message. A terminal obeys escape sequences in them (colours,
cursor moves, window titles, and on some terminals more), so every such value
is shown through `printable`. JSON output (`SecretStatus.to_json`) is left
alone: ``json.dumps`` escapes control characters itself.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rotating_pool.rotation.status import SecretStatus, VersionStatus

__all__ = ["printable", "render_status"]

# Control (C0, DEL, C1), format (bidi overrides, zero-width), line and paragraph
# separators, surrogates.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable(text: str) -> str:
    """`text` with every control or format character written as a Python-style escape.

    >>> printable("app\\x1b]0;owned\\x07 \\u202eb")
    'app\\\\x1b]0;owned\\\\x07 \\\\u202eb'
    """
    if text.isprintable():
        return text
    return "".join(
        _escape(ch) if unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch for ch in text
    )


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def render_status(status: SecretStatus) -> str:
    """Readable tables of `status`, control characters escaped."""
    enabled = {None: "unknown", True: "yes", False: "no"}[status.rotation_enabled]
    lines = [
        f"secret    {printable(status.name)}",
        f"arn       {printable(status.arn)}",
        f"strategy  {printable(status.strategy or '-')}    "
        f"group role: {printable(_name(status.role))}    rotation enabled: {enabled}",
    ]
    if status.problem:
        lines.append(f"problem   {printable(status.problem)}")
    if status.database_error:
        lines.append(f"database  {printable(status.database_error)}")
    lines.append("")
    lines += _table(
        ["VERSION", "LABELS", "CREATED", "USER", "LOGS IN"],
        [
            [
                v.version_id,
                ", ".join(v.stages),
                v.created.strftime("%Y-%m-%d %H:%M:%S") if v.created else "-",
                _name(v.username) if v.username is not None else "(no value yet)",
                _logs_in(v),
            ]
            for v in status.versions
        ],
    )
    lines.append("")
    lines += _table(
        ["USER", "EXISTS", "CAN LOGIN", "PASSWORD WORKS", "SESSIONS", "IAM ONLY"],
        [
            [
                _name(u.username),
                _yes_no(u.exists),
                _yes_no(u.can_login),
                f"yes ({', '.join(u.working_stages)})" if u.working_stages else "no",
                "?" if u.sessions is None else str(u.sessions),
                _yes_no(u.iam_only),
            ]
            for u in status.users
        ],
    )
    lines += _render_credential_sessions(status)
    lines += _render_iam_users(status)
    return "\n".join(lines)


def _render_credential_sessions(status: SecretStatus) -> list[str]:
    if not status.credential_sessions:
        return []
    since = (
        status.current_since.strftime("%Y-%m-%d %H:%M:%S") if status.current_since else "unknown"
    )
    return [
        "",
        f"SESSIONS BY CREDENTIALS (superseded: another user than AWSCURRENT's, "
        f"or opened before {since})",
        *_table(
            ["USER", "CURRENT", "SUPERSEDED", "UNKNOWN"],
            [
                [_name(s.username), str(s.current), str(s.superseded), str(s.unknown)]
                for s in status.credential_sessions
            ],
        ),
    ]


def _render_iam_users(status: SecretStatus) -> list[str]:
    if not status.iam_users:
        return []
    return [
        "",
        "IAM-ONLY USERS (members of rds_iam: on RDS they log in with IAM auth tokens only)",
        *_table(
            ["USER", "MEMBER OF"],
            [
                [_name(i.username), ", ".join(_name(g) for g in i.groups) or "-"]
                for i in status.iam_users
            ],
        ),
    ]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    # Escaped before measuring, so the columns line up as printed.
    cells = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *cells, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *cells]
    ]


def _name(name: str | None) -> str:
    # Plain names as they are; names with spaces or quotes as SQL would write them.
    if name is None:
        return "-"
    if name.isidentifier() and name == name.lower():
        return name
    return '"' + name.replace('"', '""') + '"'


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


def _logs_in(version: VersionStatus) -> str:
    if version.logs_in is None:
        return "-" if version.login_error is None else f"? ({version.login_error})"
    return "yes" if version.logs_in else f"no ({version.login_error})"
