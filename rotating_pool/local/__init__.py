"""A local stand-in stack for demos, tests and benchmarks.

Needs the `local` extra (moto) and PostgreSQL 15's server binaries from
Debian's packages.

- `LocalPostgres`: a throwaway PostgreSQL 15 server on 127.0.0.1 (`AppSchema`:
  the roles and database of an alternating-users application on it).
- `LocalSecretsManager`: moto's Secrets Manager over HTTP in a child process,
  patched where moto departs from AWS.
- `FaultProxy`: an HTTP proxy in front of it that counts calls and injects
  throttling, hangs, refused connections, latency and held requests.
- `LocalAgent`: a local stand-in (not AWS's) for the Secrets Manager Agent
  sidecar: its HTTP protocol on 127.0.0.1, with a cache, in front of an endpoint.
- `LocalPgBouncer`: PgBouncer from Debian's package in front of a
  `LocalPostgres` (auth_query, transaction pooling).
- `LocalRdsProxy`: a local stand-in (not AWS's) for RDS Proxy: the PostgreSQL
  wire protocol on 127.0.0.1, letting through only the secret's AWSCURRENT user.
- `WriteLoad`: writer threads committing one row per transaction, counting.
- `HostileAgent`: a stand-in (not the agent) for what another local user could
  put on the agent's port: a 200 answer one byte at a time, a huge body, a
  silent accept, an answer for another secret.
- `HostileServer`: a stand-in (not PostgreSQL) for an attacker's server that
  asks for a cleartext password and records what it gets, or a dead one that
  never answers.
- `CertificateAuthority`: a throwaway CA for `LocalPostgres(tls=True)`.
"""

from rotating_pool.local.agent import LocalAgent
from rotating_pool.local.hostile import HostileServer, StartupRecord
from rotating_pool.local.hostile_agent import HostileAgent
from rotating_pool.local.pgbouncer import LocalPgBouncer
from rotating_pool.local.postgres import AppSchema, LocalPostgres
from rotating_pool.local.proxy import FaultProxy
from rotating_pool.local.rdsproxy import LocalRdsProxy
from rotating_pool.local.secretsmanager import LocalSecretsManager
from rotating_pool.local.tls import CertificateAuthority
from rotating_pool.local.workload import WriteLoad, WriteLoadResult, static_url

__all__ = [
    "AppSchema",
    "CertificateAuthority",
    "FaultProxy",
    "HostileAgent",
    "HostileServer",
    "LocalAgent",
    "LocalPgBouncer",
    "LocalPostgres",
    "LocalRdsProxy",
    "LocalSecretsManager",
    "StartupRecord",
    "WriteLoad",
    "WriteLoadResult",
    "static_url",
]
