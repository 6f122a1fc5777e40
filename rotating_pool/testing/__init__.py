"""Stand-ins for testing: a local stack for demos, tests and benchmarks.

Like ``sqlalchemy.testing``, this package is for tests (the project's own and
an application's), never for a production process: nothing outside it imports
it (``tests/test_import_graph.py``), and the rotation Lambda's zip leaves it out.

Needs the `testing` extra (moto) and PostgreSQL 15's server binaries from
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
- `UnlistedRefusalPooler`: a local stand-in (not a product) for a pooler whose
  refusal wording no list holds: after a password change it refuses a share
  of the logins with the new password (severity ERROR, no SQLSTATE) for a while.
- `LocalIamAuth`: a local stand-in (not AWS's) for RDS IAM database
  authentication: over TLS it takes the password as an RDS auth token and checks
  its SigV4 signature with botocore, then passes the session to PostgreSQL.
- `WriteLoad`: writer threads committing one row per transaction, counting.
- `HostileAgent`: a stand-in (not the agent) for what another local user could
  put on the agent's port: a 200 answer one byte at a time, a huge body, a
  silent accept, an answer for another secret.
- `HostileServer`: a stand-in (not PostgreSQL) for an attacker's server that
  asks for a cleartext password and records what it gets, or a dead one that
  never answers.
- `CertificateAuthority`: a throwaway CA for `LocalPostgres(tls=True)`.
- `free_port`, `log_tail`: a free local TCP port; the end of a child's log file.
"""

from rotating_pool.testing._process import free_port, log_tail
from rotating_pool.testing.agent import LocalAgent
from rotating_pool.testing.hostile import HostileServer, StartupRecord
from rotating_pool.testing.hostile_agent import HostileAgent
from rotating_pool.testing.iam import LocalIamAuth
from rotating_pool.testing.pgbouncer import LocalPgBouncer
from rotating_pool.testing.postgres import AppSchema, LocalPostgres
from rotating_pool.testing.proxy import FaultProxy
from rotating_pool.testing.rdsproxy import LocalRdsProxy
from rotating_pool.testing.secretsmanager import LocalSecretsManager
from rotating_pool.testing.tls import CertificateAuthority
from rotating_pool.testing.unlisted import UnlistedRefusalPooler
from rotating_pool.testing.workload import WriteLoad, WriteLoadResult, static_url

__all__ = [
    "AppSchema",
    "CertificateAuthority",
    "FaultProxy",
    "HostileAgent",
    "HostileServer",
    "LocalAgent",
    "LocalIamAuth",
    "LocalPgBouncer",
    "LocalPostgres",
    "LocalRdsProxy",
    "LocalSecretsManager",
    "StartupRecord",
    "UnlistedRefusalPooler",
    "WriteLoad",
    "WriteLoadResult",
    "free_port",
    "log_tail",
    "static_url",
]
