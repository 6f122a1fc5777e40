"""IAM database authentication: log in with RDS auth tokens instead of a password.

`IamAuth` is the option (``create_engine(url, iam=IamAuth(...))``, or
``iam=True`` for the defaults); `IamTokenSource` is what it builds: a
`rotating_pool.sources.SecretSource` whose "secret" is a token, so the core's
login plan serves it unchanged:

- `load()` signs a token with boto3's ``rds.generate_db_auth_token``: a SigV4
  presigned URL made locally (no API call), valid 15 minutes.
- `poll(held)`, run by the store's background refresh, signs a new one once
  the token held is `IamAuth.renew_after` old (10 minutes by default), so a
  connect never waits for signing in the steady state.
- `newer(rejected, ...)`, after the database refused a token, resolves the AWS
  credentials again (a new boto3 session: rotated keys, a new SSO session or
  role credentials are picked up) and signs with them. The plan tries it within
  the same `RetryBudget.deadline`.

The token goes in `Credentials.password`, which is kept out of every repr and
log record; `Credentials.version_id` is a counter ("iam-token-3"), never the
token or the access key.

TLS: the token is a bearer credential sent in clear inside the connection, so
`tls_params` sets ``sslmode=verify-full`` (asyncpg: ``ssl="verify-full"``,
pg8000: a verifying ``ssl_context``) unless the URL or ``connect_args`` set
it, and refuses a mode that may send it in plaintext unless
``IamAuth(allow_plaintext=True)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from rotating_pool.errors import ConfigurationError
from rotating_pool.secret import AWSCURRENT, Credentials
from rotating_pool.sources import SecretSource

if TYPE_CHECKING:
    import boto3

__all__ = [
    "DEFAULT_RENEW_AFTER",
    "TOKEN_LIFETIME",
    "IamAuth",
    "IamCredentialsError",
    "IamPlaintextError",
    "IamTokenSource",
    "tls_params",
]

logger = logging.getLogger("rotating_pool")

TOKEN_LIFETIME = 900.0
"""Seconds an RDS auth token is valid (botocore signs it with ``expires_in=900``)."""

DEFAULT_RENEW_AFTER = 600.0
"""Seconds after which the background refresh signs a new token: five minutes
ahead of its expiry, as a margin for a slow refresh and clock skew."""

POLL_INTERVAL = 30.0
"""The store's refresh interval for a token source (a poll that is not due costs nothing)."""

# libpq's sslmode values that may send the token without TLS.
_PLAINTEXT_MODES = frozenset({"disable", "allow", "prefer"})
_LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg_async", "psycopg2", "psycopg2cffi"})
# *.REGION.rds.amazonaws.com (and .com.cn): the region an endpoint names.
_RDS_HOST = re.compile(r"\.([a-z]{2}(?:-[a-z]+)+-\d+)\.rds\.amazonaws\.com(?:\.cn)?$")
_SSO_ERRORS: tuple[type[Exception], ...] = tuple(
    error
    for error in (
        getattr(botocore.exceptions, "SSOTokenLoadError", None),
        getattr(botocore.exceptions, "UnauthorizedSSOTokenError", None),
        getattr(botocore.exceptions, "TokenRetrievalError", None),
    )
    if isinstance(error, type)
)


class IamCredentialsError(ConfigurationError):
    """No usable AWS credentials to sign an RDS auth token with.

    The message says which: no credentials in boto3's chain, an unknown
    profile, or an expired SSO session (``aws sso login``).
    """


class IamPlaintextError(ConfigurationError):
    """An IAM login would send its token without TLS, and plaintext was not allowed."""


@dataclasses.dataclass(frozen=True)
class IamAuth:
    """Log in with IAM database authentication (RDS auth tokens).

    Attributes:
        region: the AWS region of the database. Default: the one an RDS host
            name says (``*.REGION.rds.amazonaws.com``), else boto3's
            (``AWS_REGION``, the profile).
        profile: the AWS profile to sign with (an SSO profile, say). Default:
            boto3's default chain (environment, profiles, SSO, containers,
            instance roles).
        allow_plaintext: allow an sslmode that may send the token in clear.
        renew_after: seconds after which a new token is signed in the
            background (tokens last `TOKEN_LIFETIME`).

    >>> IamAuth(region="eu-west-1", profile="analyst")
    IamAuth(region='eu-west-1', profile='analyst', allow_plaintext=False, renew_after=600.0)
    """

    region: str | None = None
    profile: str | None = None
    allow_plaintext: bool = False
    renew_after: float = DEFAULT_RENEW_AFTER

    def __post_init__(self) -> None:
        for name in ("region", "profile"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigurationError(f"IamAuth.{name} must be a non-empty string or None")
        if not isinstance(self.allow_plaintext, bool):
            raise ConfigurationError("IamAuth.allow_plaintext must be True or False")
        renew = self.renew_after
        if isinstance(renew, bool) or not isinstance(renew, int | float) or renew < 1:
            raise ConfigurationError(f"IamAuth.renew_after must be seconds >= 1, not {renew!r}")
        if renew > TOKEN_LIFETIME - 60:
            raise ConfigurationError(
                f"IamAuth.renew_after must leave a minute before the token expires "
                f"(at most {TOKEN_LIFETIME - 60:g} s), not {renew!r}"
            )

    @classmethod
    def from_option(cls, iam: IamAuth | bool | None) -> IamAuth | None:
        """The `IamAuth` an ``iam=`` option means (True: the defaults; None/False: no IAM)."""
        if iam is None or iam is False:
            return None
        if iam is True:
            return cls()
        if not isinstance(iam, IamAuth):
            raise ConfigurationError(f"iam must be True or an IamAuth, not {type(iam).__name__}")
        return iam


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    user: str
    host: str
    port: int
    dbname: str | None


class IamTokenSource:
    """A `SecretSource` that signs RDS auth tokens; see the module docstring.

    Args:
        user, host, port, dbname: the login, as the engine's URL gives it.
            Missing ones come from `base` (a secret's non-password fields).
        auth: the `IamAuth` options.
        base: a source to read user, host, port and dbname from (its password
            is not used), read once at `load`.
        session_factory: makes a ``boto3.Session`` for a profile (default
            ``boto3.session.Session``); called again by `newer`.
        clock: wall-clock seconds (tokens are dated in UTC); tests pass a fake.

    >>> source = IamTokenSource("alice", "db.eu-west-1.rds.amazonaws.com", 5432)
    >>> source.secret_id
    'iam:alice@db.eu-west-1.rds.amazonaws.com:5432'
    """

    def __init__(
        self,
        user: str | None,
        host: str | None,
        port: int | None = None,
        dbname: str | None = None,
        *,
        auth: IamAuth | None = None,
        base: SecretSource | None = None,
        session_factory: Callable[[str | None], boto3.session.Session] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if base is None and (not user or not host):
            raise ConfigurationError(
                "IAM authentication needs the database user and host: put them in the URL "
                "(postgresql+psycopg://USER@HOST:PORT/DB) or name a secret that holds them"
            )
        self._given = (user, host, port, dbname)
        self._auth = auth or IamAuth()
        self._base = base
        self._session_factory = session_factory or _default_session
        self._clock = clock
        self._lock = threading.Lock()
        self._endpoint: _Endpoint | None = None
        self._client: Any = None
        self._serial = itertools.count(1)
        self._signed_at: dict[str, float] = {}  # version_id -> when signed
        self._signed = 0

    @property
    def secret_id(self) -> str:
        """A name for logs and errors: ``iam:USER@HOST:PORT`` (never the token)."""
        if self._base is not None:
            return f"iam:{self._base.secret_id}"
        user, host, port, _ = self._given
        return f"iam:{user}@{host}:{port or 5432}"

    @property
    def auth(self) -> IamAuth:
        """The options this source signs with."""
        return self._auth

    @property
    def tokens_signed(self) -> int:
        """How many tokens this source has signed (for benchmarks and tests)."""
        with self._lock:
            return self._signed

    def __repr__(self) -> str:
        return f"IamTokenSource({self.secret_id!r}, region={self._auth.region!r})"

    def load(self) -> Credentials:
        """Sign a token with the AWS credentials boto3's chain gives."""
        return self._sign(self._where(), fresh=False)

    def poll(self, held: Credentials) -> Credentials | None:
        """A new token once `held` is `IamAuth.renew_after` old, else None (no I/O)."""
        with self._lock:
            signed_at = self._signed_at.get(held.version_id or "")
        if signed_at is not None and self._clock() - signed_at < self._auth.renew_after:
            return None
        return self._sign(self._where(), fresh=False)

    def newer(
        self, rejected: Credentials, refused: Sequence[str | None], *, use_pending: bool
    ) -> Credentials | None:
        """After a refused token: resolve the AWS credentials again and sign a new one.

        None when the new token is the refused one (same key, same second).
        """
        credentials = self._sign(self._where(), fresh=True)
        return None if credentials.password == rejected.password else credentials

    def after_fork(self) -> None:
        """Drop the boto3 client (not safe across a fork)."""
        self._lock = threading.Lock()
        self._client = None

    def _where(self) -> _Endpoint:
        endpoint = self._endpoint
        if endpoint is not None:
            return endpoint
        user, host, port, dbname = self._given
        if self._base is not None:
            held = self._base.load()
            user, host = user or held.username, host or held.host
            port, dbname = port or held.port, dbname or held.dbname
        if not user or not host:
            raise ConfigurationError(
                f"{self.secret_id}: IAM authentication needs a user and a host; the URL and "
                "the secret give none: add them to either"
            )
        endpoint = _Endpoint(user, host, int(port or 5432), dbname)
        with self._lock:
            self._endpoint = endpoint
        return endpoint

    def _sign(self, endpoint: _Endpoint, *, fresh: bool) -> Credentials:
        try:
            client = self._rds_client(endpoint, fresh=fresh)
            token = client.generate_db_auth_token(
                DBHostname=endpoint.host, Port=endpoint.port, DBUsername=endpoint.user
            )
        except botocore.exceptions.NoCredentialsError:
            raise IamCredentialsError(
                f"{self.secret_id}: no AWS credentials to sign an IAM database token with "
                "(boto3 found none in its chain): set AWS_PROFILE or run `aws configure`, "
                "or give the process a role"
            ) from None
        except botocore.exceptions.ProfileNotFound:
            raise IamCredentialsError(
                f"{self.secret_id}: AWS profile {self._auth.profile!r} does not exist: "
                "check ~/.aws/config or IamAuth(profile=...)"
            ) from None
        except _SSO_ERRORS:
            profile = f" --profile {self._auth.profile}" if self._auth.profile else ""
            raise IamCredentialsError(
                f"{self.secret_id}: the AWS SSO session has expired or is not signed in: "
                f"run `aws sso login{profile}` and connect again"
            ) from None
        except botocore.exceptions.ClientError as error:  # e.g. STS refusing an AssumeRole
            code = error.response.get("Error", {}).get("Code", "ClientError")
            raise IamCredentialsError(
                f"{self.secret_id}: AWS refused the credentials needed to sign an IAM database "
                f"token ({code}): check the profile's role and its trust policy"
            ) from None
        except botocore.exceptions.BotoCoreError as error:
            raise IamCredentialsError(
                f"{self.secret_id}: cannot sign an IAM database token: {type(error).__name__}"
            ) from None
        with self._lock:
            version = f"iam-token-{next(self._serial)}"
            self._signed += 1
            self._signed_at[version] = self._clock()
            while len(self._signed_at) > 4:  # the store holds one token, plus one renewing
                del self._signed_at[next(iter(self._signed_at))]
        logger.debug("%s: signed a new IAM token (%s)", self.secret_id, version)
        return Credentials(
            username=endpoint.user,
            password=token,
            host=endpoint.host,
            port=endpoint.port,
            dbname=endpoint.dbname,
            version_id=version,
            stage=AWSCURRENT,
        )

    def _rds_client(self, endpoint: _Endpoint, *, fresh: bool) -> Any:
        with self._lock:
            client = self._client
        if client is not None and not fresh:
            return client
        # A new session re-reads the chain: rotated keys, a renewed SSO login.
        # Within a session botocore refreshes temporary credentials itself.
        session = self._session_factory(self._auth.profile)
        region = self._auth.region or _region_of(endpoint.host) or session.region_name
        if not region:
            raise ConfigurationError(
                f"{self.secret_id}: no AWS region for IAM authentication: pass "
                "IamAuth(region=...) or set AWS_REGION"
            )
        client = session.client("rds", region_name=region)
        with self._lock:
            self._client = client
        return client


def _default_session(profile: str | None) -> boto3.session.Session:
    import boto3  # noqa: PLC0415  (boto3 is slow to import; only when needed)

    return boto3.session.Session(profile_name=profile)


def _region_of(host: str) -> str | None:
    match = _RDS_HOST.search(host.lower())
    return match.group(1) if match else None


def tls_params(  # noqa: PLR0911  (one rule per driver reads best as returns)
    given: Mapping[str, Any], driver: str, *, allow_plaintext: bool
) -> dict[str, Any]:
    """The TLS connect parameters an IAM login adds to `given` (verify-full by default).

    Raises:
        IamPlaintextError: `given` asks for a mode that may send the token in
            clear, and `allow_plaintext` is False.
        ConfigurationError: a driver whose TLS rotating_pool cannot read.
    """

    def refuse(setting: str) -> IamPlaintextError:
        return IamPlaintextError(
            f"IAM login with {setting} may send the auth token without TLS; the token is a "
            "bearer credential: use sslmode=verify-full (the default for IAM logins), or "
            "pass IamAuth(allow_plaintext=True) if you accept that"
        )

    if driver in _LIBPQ_DRIVERS:
        mode = given.get("sslmode")
        if mode is None:
            return {"sslmode": "verify-full"}
        if str(mode) in _PLAINTEXT_MODES and not allow_plaintext:
            raise refuse(f"sslmode={mode}")
        return {}
    if driver == "asyncpg":
        mode = given.get("ssl", given.get("sslmode"))
        if mode is None:
            return {"ssl": "verify-full"}
        if (mode is False or str(mode) in _PLAINTEXT_MODES) and not allow_plaintext:
            raise refuse(f"ssl={mode}")
        return {}
    if driver == "pg8000":
        context = given.get("ssl_context")
        if context is None:
            return {"ssl_context": ssl.create_default_context()}
        if context is False and not allow_plaintext:
            raise refuse("ssl_context=False")
        return {}
    if allow_plaintext:
        return {}
    raise ConfigurationError(
        f"IAM login through driver {driver!r}: rotating_pool cannot tell whether it uses TLS; "
        "use psycopg, psycopg2, asyncpg or pg8000, or pass IamAuth(allow_plaintext=True)"
    )


def check_url_tls(given: Mapping[str, Any], driver: str, auth: IamAuth) -> None:
    """Refuse at set-up time a URL whose TLS settings `tls_params` would refuse."""
    tls_params(given, driver, allow_plaintext=auth.allow_plaintext)
