"""The demo's scene: the names of its database, role and secrets, and setting them up.

The admin secret, then the roles, the database and the app secret by
`rotating_pool.rotation.bootstrap`, as on a real deployment; and what the run
reads back at the end as the admin (rows, every password the secret held).

On a TLS server (`LocalPostgres(tls=True)`, the default of the run) every login
takes the production path: the secrets carry no ``ssl`` key, so the rotation
side requires verify-full, against the bed's CA (`rotation_security`,
`rotation_environment`), and the app's URL asks libpq for verify-full against
the same CA (`database_url`).
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from typing import TYPE_CHECKING

from rotating_pool.rotation import (
    BootstrapPlan,
    BootstrapReport,
    SecuritySettings,
    Strategy,
    bootstrap,
)
from rotating_pool.testing import LocalPostgres

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

SECRET_NAME = "orders/db"
ADMIN_SECRET_NAME = "orders/db-admin"
ROLE = "orders"
DBNAME = "orders"
# A function name starting with "rotating-pool-local" makes the local Secrets
# Manager stage the rotation as AWS does and invoke nothing: this runner
# invokes the handler itself, as Secrets Manager would invoke the Lambda.
ROTATION_LAMBDA_ARN = (
    "arn:aws:lambda:us-east-1:123456789012:function:rotating-pool-local-orders-rotation"
)


def rotation_security(postgres: LocalPostgres) -> SecuritySettings:
    """How bootstrap checks the server: against the bed's CA when it serves TLS."""
    if postgres.tls:
        return SecuritySettings(ssl_root_cert=str(postgres.ca_path))
    return SecuritySettings()  # the secrets say "ssl": false: plaintext, with a warning


def rotation_environment(postgres: LocalPostgres) -> dict[str, str]:
    """The rotation function's settings: ``SSL_ROOT_CERT`` names the bed's CA, as a
    deployment names the RDS CA bundle it ships in the zip."""
    return {"SSL_ROOT_CERT": str(postgres.ca_path)} if postgres.tls else {}


def database_url(postgres: LocalPostgres) -> str:
    """The app's ``DATABASE_URL``: the secret names host, port and database; the URL
    adds verify-full against the bed's CA when the server serves TLS."""
    if not postgres.tls:
        return "postgresql+psycopg://"
    query = urllib.parse.urlencode({"sslmode": "verify-full", "sslrootcert": str(postgres.ca_path)})
    return f"postgresql+psycopg://?{query}"


def bootstrap_secret(
    postgres: LocalPostgres,
    client: SecretsManagerClient,
    strategy: Strategy,
    *,
    users: tuple[str, ...] = (),
    create_database: bool = False,
) -> BootstrapReport:
    """Roles (and the database) and the app secret for `strategy`, by `bootstrap`."""
    plan = BootstrapPlan(
        secret_name=SECRET_NAME,
        admin_secret_id=ADMIN_SECRET_NAME,
        strategy=strategy,
        role=ROLE,
        dbname=DBNAME,
        create_database=create_database,
        users=users,
    )
    return bootstrap(plan, client, security=rotation_security(postgres))


def set_up_database(postgres: LocalPostgres, client: SecretsManagerClient) -> str:
    """Admin secret, then roles, database and app secret by `bootstrap`; returns the user."""
    client.create_secret(Name=ADMIN_SECRET_NAME, SecretString=json.dumps(postgres.admin_document()))
    report = bootstrap_secret(postgres, client, Strategy.ALTERNATING, create_database=True)
    return report.username


def count_rows(postgres: LocalPostgres) -> int:
    """Rows in the orders table, counted as the admin."""
    with postgres.admin_connect(DBNAME) as conn:
        row = conn.execute("SELECT count(*) FROM orders").fetchone()
    return int(row[0]) if row else 0


def all_passwords(client: SecretsManagerClient, postgres: LocalPostgres) -> set[str]:
    """Every password any version of the app secret held, and the admin's."""
    passwords = {postgres.admin_password}
    versions = client.list_secret_version_ids(SecretId=SECRET_NAME, IncludeDeprecated=True)
    for version in versions["Versions"]:
        with contextlib.suppress(client.exceptions.ResourceNotFoundException):
            value = client.get_secret_value(SecretId=SECRET_NAME, VersionId=version["VersionId"])
            password = json.loads(value["SecretString"]).get("password")
            if password:
                passwords.add(str(password))
    return passwords


def current_username(client: SecretsManagerClient) -> str:
    """The user of the secret's AWSCURRENT version."""
    value = client.get_secret_value(SecretId=SECRET_NAME, VersionStage="AWSCURRENT")
    return str(json.loads(value["SecretString"])["username"])

