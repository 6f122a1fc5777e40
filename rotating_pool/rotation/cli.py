"""The ``rotating-pool`` command: bootstrap, rotate and status.

Secrets Manager is reached through boto3's default chain: ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, the usual credentials, and
``AWS_ENDPOINT_URL_SECRETS_MANAGER`` for a local stand-in.

Errors print one line on stderr and exit with status 2; no output ever holds
a password or a secret string.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import botocore.exceptions

from rotating_pool.errors import RotatingPoolError
from rotating_pool.rotation.bootstrap import (
    BootstrapPlan,
    bootstrap,
    bootstrap_sql,
    create_database_sql,
)
from rotating_pool.rotation.clients import make_secretsmanager_client
from rotating_pool.rotation.deadline import MAX_SECONDS, check_seconds
from rotating_pool.rotation.errors import RotationConfigError
from rotating_pool.rotation.people import PeoplePlan, bootstrap_people, people_sql
from rotating_pool.rotation.rotator import DEFAULT_EXCLUDE_CHARACTERS, Rotator
from rotating_pool.rotation.security import SYSTEM_ROOT_CERT, SecuritySettings
from rotating_pool.rotation.settings import Strategy
from rotating_pool.rotation.status import secret_status
from rotating_pool.rotation.status_text import printable
from rotating_pool.rotation.versions import SecretVersions
from rotating_pool.secret import AWSCURRENT

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["main"]

_EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    >>> main(["--help"])  # doctest: +SKIP
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else _EXIT_ERROR
    with _logging_to_stderr(args.verbose):
        try:
            code: int = args.run(args)
        except KeyboardInterrupt:
            print(f"rotating-pool {args.command}: interrupted", file=sys.stderr)
            return 130
        except Exception as error:
            # Every error of ours, boto3's and psycopg's says what went wrong in
            # its message and none holds a password; the traceback adds nothing
            # for an operator (run with -vv to see it).
            if args.verbose >= 2:
                logging.getLogger("rotating_pool.rotation").exception("%s failed", args.command)
            # A server's or a secret's words may hold terminal escapes.
            message = printable(_describe(error))
            print(f"rotating-pool {args.command}: error: {message}", file=sys.stderr)
            return _EXIT_ERROR
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rotating-pool",
        description="Rotate PostgreSQL credentials kept in AWS Secrets Manager.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log the steps (-v), and tracebacks of errors (-vv)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    boot = commands.add_parser(
        "bootstrap",
        help="create the group role, the login users and the app secret (idempotent)",
        description=(
            "Create the NOLOGIN group role that owns the objects, its login user(s) (members "
            "with `SET role` to it), the grants it needs, and create or update the app secret. "
            "With --people-user, also (or only) people accounts: LOGIN roles with no password, "
            "members of rds_iam and of --people-role, which log in with IAM auth tokens. "
            "Runs as the admin whose credentials are in --admin-secret-id. Safe to re-run."
        ),
    )
    boot.add_argument(
        "--secret-name",
        help="the app secret to create or update (required unless only --people-user is given)",
    )
    boot.add_argument(
        "--admin-secret-id",
        required=True,
        help="name or ARN of the admin secret (RDS JSON); becomes the app secret's masterarn",
    )
    boot.add_argument(
        "--strategy",
        choices=[s.value for s in Strategy],
        default=Strategy.ALTERNATING.value,
        help="alternating (two users take turns; default) or single (one user)",
    )
    boot.add_argument("--role", default="app", help="the NOLOGIN group role (default: app)")
    boot.add_argument(
        "--users",
        nargs="+",
        metavar="USER",
        help="the login users: two for alternating, one for single "
        "(default: ROLE_a ROLE_b, or ROLE_a)",
    )
    boot.add_argument("--host", help="database host (default: the admin secret's)")
    boot.add_argument("--port", type=int, help="database port (default: the admin secret's)")
    boot.add_argument("--dbname", help="the app's database (default: the admin secret's)")
    boot.add_argument(
        "--create-database",
        action="store_true",
        help="create the database first if it does not exist",
    )
    boot.add_argument(
        "--schema", default="public", help="schema the role creates objects in (default: public)"
    )
    boot.add_argument(
        "--people-user",
        action="append",
        metavar="USER",
        help="a people account to create: LOGIN, no password, a member of rds_iam and of "
        "--people-role, so it logs in with IAM auth tokens only (repeatable)",
    )
    boot.add_argument(
        "--people-role",
        metavar="GROUP",
        help="the NOLOGIN group role holding the people accounts' privileges "
        "(required with --people-user)",
    )
    boot.add_argument(
        "--print-sql",
        action="store_true",
        help="print the SQL instead of running anything (no password in it)",
    )
    _password_options(boot)
    _security_options(boot)
    boot.set_defaults(run=_bootstrap)

    rotate = commands.add_parser(
        "rotate",
        help="rotate a secret now, as Secrets Manager drives a rotation Lambda",
        description=(
            "Run createSecret, setSecret, testSecret and finishSecret with one token, with the "
            "same code as the Lambda. Needs no Lambda and no rotation enabled on the secret. A "
            "rotation left unfinished (AWSPENDING on a version of its own) is finished first."
        ),
    )
    rotate.add_argument("--secret-id", required=True, help="the app secret's name or ARN")
    rotate.add_argument("--token", help="ClientRequestToken to use or resume (default: new)")
    rotate.add_argument(
        "--pause-before-finish",
        type=_pause,
        default=0.0,
        metavar="SECONDS",
        help="wait this long between testSecret and finishSecret, as a Lambda's steps would",
    )
    rotate.add_argument("--json", action="store_true", help="print the result as JSON")
    _password_options(rotate)
    _security_options(rotate)
    rotate.set_defaults(run=_rotate)

    status = commands.add_parser(
        "status",
        help="show versions, labels, users, logins and sessions",
        description=(
            "Show each labelled version (user, whether its password logs in) and each user "
            "(exists, rolcanlogin, which version's password works, sessions open)."
        ),
    )
    status.add_argument("--secret-id", required=True, help="the app secret's name or ARN")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.add_argument("--connect-timeout", type=_seconds, default=5.0, metavar="SECONDS")
    _security_options(status)
    status.set_defaults(run=_status)
    return parser


def _password_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-length",
        type=int,
        default=32,
        metavar="N",
        help="length of new passwords (default: 32)",
    )
    parser.add_argument(
        "--exclude-characters",
        default=DEFAULT_EXCLUDE_CHARACTERS,
        metavar="CHARS",
        help="characters new passwords leave out (default: /@\"'\\)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="seconds per database login (default: 5)",
    )


def _security_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ssl-root-cert",
        default=SYSTEM_ROOT_CERT,
        metavar="PATH",
        help="CA bundle that verifies the database's certificate (default: system, the OS's "
        "trusted CAs; for RDS, the RDS CA bundle). Logins use sslmode=verify-full unless the "
        'secret says "ssl": false',
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the app secret may name besides the admin's server and its "
        "replicas (a CNAME, a custom endpoint); repeatable",
    )
    parser.add_argument(
        "--allow-md5",
        action="store_true",
        help="also accept MD5 password authentication (old admin users); never cleartext",
    )
    parser.add_argument(
        "--allowed-role",
        action="append",
        default=[],
        metavar="NAME",
        help="pin: a role name, or a prefix ending in '*', whose password may be changed; "
        "repeatable (default: any role that passes the rotation's role check)",
    )


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0 (``nan``/``inf`` refused)."""
    try:
        return check_seconds(float(text), key="seconds")
    except (ValueError, RotationConfigError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0 and at most {MAX_SECONDS:g}"
        ) from None


def _pause(text: str) -> float:
    """argparse type: 0 or `_seconds`."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    return 0.0 if value == 0 else _seconds(text)


def _security(args: argparse.Namespace) -> SecuritySettings:
    return SecuritySettings.from_names(
        ssl_root_cert=args.ssl_root_cert,
        allow_md5=args.allow_md5,
        allowed_hosts=args.allowed_host,
        root_cert_setting="--ssl-root-cert",
        allowed_roles=args.allowed_role,
        role_pin_setting="--allowed-role",
    )


def _bootstrap(args: argparse.Namespace) -> int:
    people = _people_plan(args)
    if args.secret_name is None:
        if people is None:
            raise RotationConfigError(
                "give --secret-name (the app secret), --people-user, or both", key="secret_name"
            )
        return _bootstrap_people(args, people)
    code = _bootstrap_app(args)
    return code if people is None else _bootstrap_people(args, people)


def _people_plan(args: argparse.Namespace) -> PeoplePlan | None:
    if not args.people_user:
        if args.people_role is not None:
            raise RotationConfigError("--people-role needs --people-user", key="people_role")
        return None
    if args.people_role is None:
        raise RotationConfigError(
            "--people-user needs --people-role GROUP (the NOLOGIN role holding their privileges)",
            key="people_role",
        )
    return PeoplePlan(
        admin_secret_id=args.admin_secret_id,
        role=args.people_role,
        users=tuple(args.people_user),
        dbname=args.dbname,
        schema=args.schema,
    )


def _bootstrap_people(args: argparse.Namespace, plan: PeoplePlan) -> int:
    if args.print_sql:
        dbname = plan.dbname or _admin_dbname(plan.admin_secret_id)
        print(f"-- people accounts (IAM auth tokens only, no password), in database {dbname!r}:")
        for statement in people_sql(plan.role, plan.users, dbname, plan.schema):
            print(statement)
        return 0
    report = bootstrap_people(
        plan, _client(), connect_timeout=args.connect_timeout, security=_security(args)
    )
    created = ", ".join(repr(r) for r in report.roles_created) or "none (all existed)"
    print(f"people roles created: {created}")
    print(
        f"people accounts (IAM only, no password): {', '.join(map(repr, report.users))} "
        f"in group {plan.role!r}"
    )
    return 0


def _admin_dbname(admin_secret_id: str) -> str:
    admin = SecretVersions(_client(), admin_secret_id).read_required(AWSCURRENT)
    return admin.credentials.dbname or "postgres"


def _bootstrap_app(args: argparse.Namespace) -> int:
    plan = BootstrapPlan(
        secret_name=args.secret_name,
        admin_secret_id=args.admin_secret_id,
        strategy=Strategy(args.strategy),
        role=args.role,
        users=tuple(args.users or ()),
        host=args.host,
        port=args.port,
        dbname=args.dbname,
        schema=args.schema,
        create_database=args.create_database,
    )
    if args.print_sql:
        dbname = plan.dbname or _admin_dbname(plan.admin_secret_id)
        print(f"-- rotating-pool bootstrap: {plan.strategy.value} strategy, run as the admin")
        print(
            "-- first, a check that changes nothing: it fails on existing roles that are "
            "privileged,\n-- members of privileged or pg_* roles, the admin itself, or a group "
            "role that can log in"
        )
        check, *statements = bootstrap_sql(plan.role, plan.users, dbname, plan.schema)
        print(check)
        if plan.create_database:
            print(f"-- only if the database does not exist yet:\n{create_database_sql(dbname)}")
        print(f"-- then, connected to database {dbname!r}:")
        for statement in statements:
            print(statement)
        print(
            f"-- then, unless the app secret's password still works, {plan.users[0]!r} gets a "
            "new password, sent as a SCRAM-SHA-256 verifier computed on the client:\n"
            "-- ALTER ROLE <user> WITH LOGIN PASSWORD '<SCRAM-SHA-256$4096:...>';\n"
            f"-- and the secret {plan.secret_name!r} is created or updated."
        )
        return 0
    report = bootstrap(
        plan,
        _client(),
        password_length=args.password_length,
        exclude_characters=args.exclude_characters,
        connect_timeout=args.connect_timeout,
        security=_security(args),
    )
    created = ", ".join(repr(r) for r in report.roles_created) or "none (all existed)"
    print(f"roles created: {created}")
    print(f"app secret {plan.secret_name!r}: {report.secret_action} ({report.secret_arn})")
    print(
        f"AWSCURRENT user: {report.username!r}"
        + (" (new password set)" if report.password_set else " (password kept)")
    )
    return 0


def _rotate(args: argparse.Namespace) -> int:
    rotator = Rotator(
        _client(),
        exclude_characters=args.exclude_characters,
        password_length=args.password_length,
        connect_timeout=args.connect_timeout,
        security=_security(args),
    )

    def on_step(step: str, seconds: float) -> None:
        if not args.json:
            print(f"  {step:<13} {seconds * 1000:8.1f} ms", flush=True)
        if step == "testSecret" and args.pause_before_finish > 0:
            time.sleep(args.pause_before_finish)

    if not args.json:
        print(f"rotating {args.secret_id!r}", flush=True)
    result = rotator.rotate(args.secret_id, token=args.token, on_step=on_step)
    if args.json:
        print(
            json.dumps(
                {
                    "secret_id": result.secret_id,
                    "token": result.token,
                    "strategy": result.strategy.value,
                    "username": result.username,
                    "resumed": result.resumed,
                    "durations": dict(result.durations),
                    "outcomes": {step: outcome.value for step, outcome in result.outcomes.items()},
                },
                indent=2,
            )
        )
    else:
        resumed = " (finished an interrupted rotation)" if result.resumed else ""
        print(f"  {'total':<13} {result.total * 1000:8.1f} ms")
        print(
            f"done{resumed}: {result.strategy.value}; AWSCURRENT is version {result.token}, "
            f"user {result.username!r}"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    status = secret_status(
        _client(), args.secret_id, connect_timeout=args.connect_timeout, security=_security(args)
    )
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print(status.render())
    return 0


def _client() -> SecretsManagerClient:
    return make_secretsmanager_client()


@contextlib.contextmanager
def _logging_to_stderr(verbose: int) -> Iterator[None]:
    """Show our log records on stderr for the command's duration, then put the
    logger back as it was (main may run in-process, e.g. in tests)."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    # Only our logger: botocore at DEBUG would log whole GetSecretValue answers.
    logger = logging.getLogger("rotating_pool")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    saved_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)


def _describe(error: BaseException) -> str:
    if isinstance(error, botocore.exceptions.NoRegionError):
        return "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)"
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials found: configure them as for the AWS CLI"
    text = str(error).strip() or type(error).__name__
    return text if isinstance(error, RotatingPoolError) else f"{type(error).__name__}: {text}"
