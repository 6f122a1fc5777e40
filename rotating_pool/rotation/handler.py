"""The AWS Lambda entry point Secrets Manager invokes to rotate a secret.

Handler: ``rotating_pool.rotation.lambda_handler``. Configuration comes from
the function's environment:

=========================  ==========  ==============================================
variable                   default     meaning
=========================  ==========  ==============================================
``EXCLUDE_CHARACTERS``     ``/@"'\\``  characters new passwords leave out
``PASSWORD_LENGTH``        ``32``      length of new passwords (8-4096)
``CONNECT_TIMEOUT``        ``5``       seconds per database login
``SECRETS_MANAGER_ENDPOINT`` (unset)   Secrets Manager endpoint URL, as AWS's own
                                       templates read it (e.g. a VPC endpoint);
                                       ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` works too
``LOG_LEVEL``              ``INFO``    level of the ``rotating_pool.rotation`` logger
``SSL_ROOT_CERT``          see below   CA bundle that verifies the database's
                                       certificate (``system``: the OS's store)
``ALLOWED_HOSTS``          (unset)     comma-separated host names the app secret may
                                       name besides the admin's server and its
                                       replicas (CNAMEs, custom endpoints)
``ALLOW_MD5``              ``false``   ``true``: also accept MD5 password
                                       authentication (never cleartext)
``ALLOWED_ROLES``          (unset)     the pin: comma-separated role names, or
                                       prefixes ending in ``*``, that this function
                                       may ever give a new password; unset: any role
                                       that passes the database checks
=========================  ==========  ==============================================

``SSL_ROOT_CERT`` defaults to ``/etc/pki/tls/cert.pem``, the Lambda runtime's
bundle; for RDS, ship the RDS CA bundle in the package and point this at it.
Each step keeps within the invocation's remaining time
(``context.get_remaining_time_in_millis()``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from rotating_pool.rotation.clients import make_secretsmanager_client
from rotating_pool.rotation.deadline import check_seconds
from rotating_pool.rotation.errors import RotationConfigError
from rotating_pool.rotation.rotator import DEFAULT_EXCLUDE_CHARACTERS, Rotator
from rotating_pool.rotation.security import LAMBDA_ROOT_CERT, SecuritySettings

__all__ = ["lambda_handler", "rotator_from_environment"]

logger = logging.getLogger("rotating_pool.rotation")

# One Rotator (and boto3 client) per warm Lambda container: making a client
# costs more than a whole step. Keyed by the configuration so that a changed
# environment (tests) gets a new one.
_cached: tuple[tuple[object, ...], Rotator] | None = None
_cache_lock = threading.Lock()


def rotator_from_environment(environ: Mapping[str, str] | None = None) -> Rotator:
    """A `Rotator` configured from the environment variables above.

    Raises:
        RotationConfigError: a variable is not a valid (finite) number, or
            ``ALLOWED_ROLES`` has a malformed entry.
    """
    global _cached
    env = os.environ if environ is None else environ
    exclude = env.get("EXCLUDE_CHARACTERS", DEFAULT_EXCLUDE_CHARACTERS)
    length = _number(env, "PASSWORD_LENGTH", "32", int)
    # float() reads "nan" and "inf": refused here, naming the variable.
    timeout = check_seconds(_number(env, "CONNECT_TIMEOUT", "5", float), key="CONNECT_TIMEOUT")
    endpoint = env.get("SECRETS_MANAGER_ENDPOINT") or None
    security = SecuritySettings.from_names(
        ssl_root_cert=env.get("SSL_ROOT_CERT") or LAMBDA_ROOT_CERT,
        allow_md5=_flag(env, "ALLOW_MD5"),
        allowed_hosts=[env.get("ALLOWED_HOSTS", "")],
        root_cert_setting="SSL_ROOT_CERT",
        allowed_roles=[env.get("ALLOWED_ROLES", "")],
        role_pin_setting="ALLOWED_ROLES",
    )
    key = (exclude, length, timeout, endpoint, security)
    with _cache_lock:
        if _cached is not None and _cached[0] == key:
            return _cached[1]
        client = make_secretsmanager_client(endpoint)
        rotator = Rotator(
            client,
            exclude_characters=exclude,
            password_length=length,
            connect_timeout=timeout,
            security=security,
        )
        _cached = (key, rotator)
        return rotator


_EVENT_KEYS = ("SecretId", "ClientRequestToken", "Step")


def lambda_handler(event: Mapping[str, Any], context: object) -> None:
    """Run the step Secrets Manager asks for.

    Args:
        event: ``{"SecretId": ARN, "ClientRequestToken": token, "Step": step}``,
            step one of createSecret, setSecret, testSecret, finishSecret.
        context: the Lambda context; each step keeps within its
            ``get_remaining_time_in_millis()``.

    Raises:
        RotationError (or rotating_pool.errors.SecretError) when the step fails;
        Secrets Manager then marks the rotation failed and retries it later with
        the same token.
    """
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    if logger.level == logging.NOTSET:
        # The Lambda runtime's root logger is at WARNING; step logs are INFO.
        logger.setLevel(level if isinstance(logging.getLevelName(level), int) else "INFO")
    secret_id, token, step = _event_fields(event)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    rotator_from_environment().run_step(
        secret_id,
        token,
        step,
        time_left=remaining() / 1000 if callable(remaining) else None,
    )


def _event_fields(event: object) -> tuple[str, str, str]:
    """SecretId, ClientRequestToken and Step of a Secrets Manager event.

    Raises:
        RotationConfigError: the event is not an object, lacks a key, or a
            value is not a non-empty string.
    """
    shape = 'Secrets Manager with {"SecretId": ..., "ClientRequestToken": ..., "Step": ...}'
    if not isinstance(event, Mapping):
        raise RotationConfigError(
            f"the rotation event is a {type(event).__name__}, not an object: this function must "
            f"be invoked by {shape}",
            key="event",
        )
    missing = [k for k in _EVENT_KEYS if not event.get(k)]
    if missing:
        raise RotationConfigError(
            f"the rotation event lacks {', '.join(missing)}: this function must be invoked by "
            f"{shape}",
            key=missing[0],
        )
    wrong = [k for k in _EVENT_KEYS if not isinstance(event[k], str)]
    if wrong:
        raise RotationConfigError(
            f"the rotation event's {', '.join(wrong)} must be strings, not "
            f"{', '.join(type(event[k]).__name__ for k in wrong)}: this function must be invoked "
            f"by {shape}",
            key=wrong[0],
        )
    return event["SecretId"], event["ClientRequestToken"], event["Step"]


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "false").strip().lower()
    if raw not in ("true", "false", ""):
        raise RotationConfigError(
            f"environment variable {name}={raw!r} must be true or false", key=name
        )
    return raw == "true"


def _number(env: Mapping[str, str], name: str, default: str, kind: type[int] | type[float]) -> Any:
    raw = env.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        raise RotationConfigError(
            f"environment variable {name}={raw!r} is not a number", key=name
        ) from None
    return value
