"""Where the admin's credentials may go: only to the server the admin secret names.

The admin secret's own ``host`` (and ``port``, default 5432) names it. A secret
RDS manages for a master user holds only ``username`` and ``password``; its
server is found as AWS's rotation templates find it: the secret's system tag
``aws:rds:primaryDBInstanceArn`` or ``aws:rds:primaryDBClusterArn`` (keys compared
case-insensitively), then ``DescribeDBInstances`` / ``DescribeDBClusters``.
Any other admin secret without a host is refused.

The app secret must then name that server, one of its replicas (read
replicas; a cluster's reader and custom endpoints and member instances), or a
host name on an explicit allow-list. Host names are compared case-insensitively
and without a trailing dot. All of this runs before any login, so a tampered
app secret cannot make the admin's password travel to a server of its choosing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from rotating_pool.rotation.errors import AdminHostError
from rotating_pool.rotation.security import SecuritySettings, normalize_host, tls_wanted
from rotating_pool.rotation.versions import SecretVersions
from rotating_pool.secret import AWSCURRENT, Credentials

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient

    from rotating_pool.rotation.versions import SecretVersion

__all__ = [
    "DEFAULT_PORT",
    "RDS_CLUSTER_TAG",
    "RDS_INSTANCE_TAG",
    "AdminLogin",
    "AdminServer",
    "ServerAddress",
    "admin_login",
    "find_admin_server",
]

logger = logging.getLogger("rotating_pool.rotation")

DEFAULT_PORT = 5432
RDS_INSTANCE_TAG = "aws:rds:primaryDBInstanceArn"
RDS_CLUSTER_TAG = "aws:rds:primaryDBClusterArn"


@dataclass(frozen=True)
class ServerAddress:
    """A host name (normalised) and port.

    >>> ServerAddress.of("DB.example.com.", None)
    ServerAddress(host='db.example.com', port=5432)
    """

    host: str
    port: int

    @classmethod
    def of(cls, host: str, port: int | None) -> ServerAddress:
        """Normalise `host`; `port` defaults to 5432."""
        return cls(normalize_host(host), port or DEFAULT_PORT)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class AdminServer:
    """The server the admin secret is for.

    Attributes:
        address: where the admin logs in.
        found_by: how it was found, for messages.
        replicas: a lazy lookup of the addresses that serve the same data
            (replicas, readers, custom endpoints); empty when not an RDS lookup.
    """

    address: ServerAddress
    found_by: str
    replicas: Callable[[], list[ServerAddress]] = lambda: []

    def check_app_host(
        self,
        secret_id: str,
        host: str | None,
        port: int | None,
        security: SecuritySettings,
        *,
        what: str,
    ) -> None:
        """Refuse unless `host` (and `port`) is this server, a replica of it, or
        an allowed host name.

        Raises:
            AdminHostError: naming both servers and the ways to fix it.
        """
        if not host:
            raise AdminHostError(
                f"secret {secret_id!r}: {what} has no 'host', so it cannot be checked against the "
                f'admin\'s server ({self.address}, {self.found_by}); add "host" to the secret',
                secret_id=secret_id,
                key="host",
            )
        wanted = ServerAddress.of(host, port)
        if wanted == self.address or wanted.host in security.allowed_hosts:
            return
        if wanted in self.replicas():
            logger.info(
                "secret %r: %s names %s, a replica of the admin's server %s",
                secret_id,
                what,
                wanted,
                self.address,
            )
            return
        raise AdminHostError(
            f"secret {secret_id!r}: {what} names the server {wanted}, but the admin secret is for "
            f"{self.address} ({self.found_by}); the admin's password goes only to its own "
            "server. Point the secret at that server (or one of its replicas), or, if "
            f"{wanted.host} is another name for it (a CNAME, a custom endpoint), allow it "
            "(ALLOWED_HOSTS in the Lambda, --allowed-host on the command line)",
            secret_id=secret_id,
            key="host",
        )

    def credentials(self, admin: Credentials, dbname: str | None) -> Credentials:
        """The admin's credentials aimed at this server and `dbname`."""
        return Credentials(
            username=admin.username,
            password=admin.password,
            host=self.address.host,
            port=self.address.port,
            dbname=dbname or admin.dbname,
            version_id=admin.version_id,
            stage=admin.stage,
        )


def find_admin_server(
    admin_versions: SecretVersions,
    admin: SecretVersion,
    rds: Callable[[], RDSClient],
    *,
    secret_id: str,
) -> AdminServer:
    """The server the admin secret is for (see the module docstring).

    Args:
        admin_versions: the admin secret (its DescribeSecret gives the tags).
        admin: its AWSCURRENT version.
        rds: makes the ``rds`` client, only if an RDS lookup is needed.
        secret_id: the app secret, for messages.

    Raises:
        AdminHostError: the admin secret names no server and is not an
            RDS-managed master secret, or the RDS lookup found nothing.
    """
    creds = admin.credentials
    if creds.host:
        return AdminServer(ServerAddress.of(creds.host, creds.port), "the admin secret's host")
    tags = {key.lower(): value for key, value in admin_versions.describe().tags.items()}
    instance_arn = tags.get(RDS_INSTANCE_TAG.lower())
    cluster_arn = tags.get(RDS_CLUSTER_TAG.lower())
    if instance_arn:
        return _instance_server(rds(), instance_arn, secret_id, admin_versions.secret_id)
    if cluster_arn:
        return _cluster_server(rds(), cluster_arn, secret_id, admin_versions.secret_id)
    raise AdminHostError(
        f"secret {secret_id!r}: the admin secret {admin_versions.secret_id!r} has no 'host' and "
        f"is not a secret RDS manages (no {RDS_INSTANCE_TAG} or {RDS_CLUSTER_TAG} tag), so "
        'nothing says which server its password is for: add "host" (and "port") to the '
        "admin secret",
        secret_id=secret_id,
        key="masterarn",
    )


@dataclass(frozen=True)
class AdminLogin:
    """How to log in as the admin: its server, credentials aimed at it, and
    whether verified TLS is used (the admin secret's own ``ssl`` key decides,
    never the app secret's).

    Attributes:
        server: the admin's server; check the app's host against it first.
        credentials: the admin's credentials for that server (password hidden
            from repr).
        use_tls: False only when the admin secret says ``"ssl": false``.
    """

    server: AdminServer
    credentials: Credentials
    use_tls: bool


def admin_login(
    client: Any,
    master_arn: str,
    rds: Callable[[], RDSClient],
    *,
    secret_id: str,
    dbname: str | None,
) -> AdminLogin:
    """Read the admin secret (``masterarn``) and find its server; no login yet.

    Raises:
        AdminHostError: see `find_admin_server`.
        rotating_pool.errors.SecretError: the admin secret is missing or malformed.
    """
    versions = SecretVersions(client, master_arn)
    admin = versions.read_required(AWSCURRENT)
    server = find_admin_server(versions, admin, rds, secret_id=secret_id)
    use_tls = tls_wanted(master_arn, admin.document, what="admin")
    return AdminLogin(server, server.credentials(admin.credentials, dbname), use_tls)


def _instance_server(rds: RDSClient, arn: str, secret_id: str, admin_id: str) -> AdminServer:
    instance = _describe(
        lambda: rds.describe_db_instances(DBInstanceIdentifier=arn)["DBInstances"],
        "DescribeDBInstances",
        arn,
        secret_id,
        admin_id,
    )
    address = _endpoint(instance.get("Endpoint"), arn, secret_id)
    replica_ids = list(instance.get("ReadReplicaDBInstanceIdentifiers", []))

    def replicas() -> list[ServerAddress]:
        return list(_instance_endpoints(rds, replica_ids))

    return AdminServer(address, f"RDS DB instance {arn}", replicas)


def _cluster_server(rds: RDSClient, arn: str, secret_id: str, admin_id: str) -> AdminServer:
    cluster = _describe(
        lambda: rds.describe_db_clusters(DBClusterIdentifier=arn)["DBClusters"],
        "DescribeDBClusters",
        arn,
        secret_id,
        admin_id,
    )
    port = cluster.get("Port")
    if not cluster.get("Endpoint"):
        raise _no_endpoint(arn, secret_id)
    address = ServerAddress.of(str(cluster["Endpoint"]), port)
    readers = [cluster.get("ReaderEndpoint"), *cluster.get("CustomEndpoints", [])]
    member_ids = [m["DBInstanceIdentifier"] for m in cluster.get("DBClusterMembers", [])]

    def replicas() -> list[ServerAddress]:
        found = [ServerAddress.of(str(name), port) for name in readers if name]
        return found + list(_instance_endpoints(rds, member_ids))

    return AdminServer(address, f"RDS DB cluster {arn}", replicas)


def _instance_endpoints(rds: RDSClient, identifiers: list[str]) -> Iterator[ServerAddress]:
    for identifier in identifiers:
        try:
            found = rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"]
        except botocore.exceptions.ClientError:
            # A replica in another region, or gone: it cannot be the app's host here.
            continue
        for instance in found:
            endpoint = instance.get("Endpoint") or {}
            if endpoint.get("Address"):
                yield ServerAddress.of(str(endpoint["Address"]), endpoint.get("Port"))


def _describe(
    call: Callable[[], Any], action: str, arn: str, secret_id: str, admin_id: str
) -> dict[str, Any]:
    try:
        found = call()
    except botocore.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        hint = (
            f"the rotation's role needs rds:{action}"
            if "AccessDenied" in str(code) or code == "UnauthorizedOperation"
            else f"check the admin secret's tag ({action} says {code})"
        )
        raise AdminHostError(
            f"secret {secret_id!r}: cannot find the server of the RDS-managed admin secret "
            f"{admin_id!r} ({arn}): {hint}",
            secret_id=secret_id,
            key="masterarn",
        ) from None
    if not found:
        raise _no_endpoint(arn, secret_id)
    return dict(found[0])


def _endpoint(endpoint: Any, arn: str, secret_id: str) -> ServerAddress:
    if not endpoint or not endpoint.get("Address"):
        raise _no_endpoint(arn, secret_id)
    return ServerAddress.of(str(endpoint["Address"]), endpoint.get("Port"))


def _no_endpoint(arn: str, secret_id: str) -> AdminHostError:
    return AdminHostError(
        f"secret {secret_id!r}: RDS gives no endpoint for {arn} (is it still being created?); "
        "rotate again once it is available",
        secret_id=secret_id,
        key="masterarn",
    )
