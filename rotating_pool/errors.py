"""The errors rotating_pool raises.

Every message names what to fix and which secret (and version, where known) is
concerned; none ever contains a password or a secret string.
"""

from __future__ import annotations

__all__ = [
    "AgentAnswerError",
    "AlreadyAttachedError",
    "ConfigurationError",
    "LoginRejectedError",
    "RotatingPoolError",
    "SecretAccessDeniedError",
    "SecretError",
    "SecretFormatError",
    "SecretNotFoundError",
    "SecretsManagerUnavailableError",
]


class RotatingPoolError(Exception):
    """Base class of every error raised by rotating_pool."""


class ConfigurationError(RotatingPoolError, ValueError):
    """An option given to rotating_pool is invalid; the message says which and why."""


class AlreadyAttachedError(RotatingPoolError, ValueError):
    """`attach` was called on an engine that rotating_pool already manages."""


class SecretError(RotatingPoolError):
    """The secret cannot be used: it is missing, unreadable or malformed.

    Attributes:
        secret_id: the secret's id or ARN, as given by the application.
    """

    def __init__(self, message: str, *, secret_id: str) -> None:
        super().__init__(message)
        self.secret_id = secret_id


class SecretFormatError(SecretError, ValueError):
    """The secret's value is not the JSON document of an RDS/Aurora secret.

    Attributes:
        key: the offending key, or None when the document as a whole is wrong.
        version_id: the version read, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        secret_id: str,
        key: str | None = None,
        version_id: str | None = None,
    ) -> None:
        super().__init__(message, secret_id=secret_id)
        self.key = key
        self.version_id = version_id


class SecretNotFoundError(SecretError, LookupError):
    """Secrets Manager has no such secret (or no such version stage)."""


class SecretAccessDeniedError(SecretError, PermissionError):
    """The AWS identity in use may not read the secret (IAM or KMS denied it)."""


class SecretsManagerUnavailableError(RotatingPoolError):
    """Secrets Manager could not be reached or kept refusing (throttling, 5xx,
    timeouts) and there are no cached credentials to fall back on."""

    def __init__(self, message: str, *, secret_id: str) -> None:
        super().__init__(message)
        self.secret_id = secret_id


class AgentAnswerError(SecretsManagerUnavailableError):
    """What answered on the Secrets Manager Agent's endpoint is not the agent's
    answer for this secret: not GetSecretValue's JSON, too large, or for another
    secret. Retried like any unavailability; the message never quotes the answer."""


class LoginRejectedError(RotatingPoolError):
    """The database kept rejecting the login after every credential the secret
    offered was tried and the retry budget was spent.

    It is chained (``__cause__``) to the driver's last error.

    Attributes:
        secret_id: the secret.
        version_id: the secret version whose credentials were rejected last
            (None when it came from the steady-state cache, which does not say).
        username: the database user that was rejected.
        attempts: how many logins were tried.
    """

    def __init__(
        self,
        message: str,
        *,
        secret_id: str,
        version_id: str | None,
        username: str,
        attempts: int,
    ) -> None:
        super().__init__(message)
        self.secret_id = secret_id
        self.version_id = version_id
        self.username = username
        self.attempts = attempts
