"""What the Secrets Manager Agent's answers say, read as untrusted input.

- `credentials_from`: a 200 answer must be GetSecretValue's JSON object for
  the secret asked for (`answer_is_for`), else `AgentAnswerError`; the secret
  document is then checked by `rotating_pool.secret`. JSON nested deep enough
  to exhaust the parser is "not JSON", never a `RecursionError`.
- `error_for`: an error answer becomes the typed error it means (by AWS's
  ``__type``, then the HTTP status); the little of it a message quotes is
  redacted (the token, anything after a secret-bearing key) *before* it is cut,
  and flattened to one printable line.

No message quotes a 200 answer: it may hold the secret.
"""

from __future__ import annotations

import json
from typing import Any

from rotating_pool.agent_http import Reply
from rotating_pool.agent_token import AgentToken
from rotating_pool.errors import (
    AgentAnswerError,
    SecretAccessDeniedError,
    SecretNotFoundError,
    SecretsManagerUnavailableError,
)
from rotating_pool.redact import redact
from rotating_pool.secret import Credentials, parse_credentials
from rotating_pool.sources import ACCESS_DENIED_CODES

__all__ = ["answer_is_for", "credentials_from", "error_for", "not_the_agent", "says_not_found"]

# Enough of an error answer to say what it was; AWS's messages name the secret,
# never its value, and the agent's own are short fixed texts.
_MAX_DETAIL_CHARS = 200
_NOT_FOUND = "ResourceNotFoundException"


def not_the_agent(secret_id: str, url: str, problem: str) -> AgentAnswerError:
    """The error for an answer that is not the agent's for `secret_id`."""
    return AgentAnswerError(
        f"what listens on {url} {problem}: is it the Secrets Manager Agent?",
        secret_id=secret_id,
    )


def credentials_from(
    body: bytes, *, secret_id: str, url: str, stage: str, what: str
) -> Credentials:
    """The credentials in a 200 answer's `body`, read by `stage`.

    Raises:
        AgentAnswerError: not GetSecretValue's JSON, or for another secret.
        SecretFormatError: the secret document is malformed.
    """
    document = _json_object(body)  # the body may hold the secret: never quoted
    if document is None:
        raise not_the_agent(
            secret_id,
            url,
            f"answered HTTP 200 ({what}) with something that is not GetSecretValue's JSON",
        )
    if not answer_is_for(secret_id, document.get("ARN"), document.get("Name")):
        raise not_the_agent(
            secret_id,
            url,
            f"answered HTTP 200 ({what}) for another secret: neither its ARN nor its Name "
            f"is {secret_id!r}",
        )
    version_id = document.get("VersionId")
    if version_id is not None and not (isinstance(version_id, str) and version_id):
        raise not_the_agent(
            secret_id, url, f"answered HTTP 200 ({what}) with a VersionId not a string"
        )
    return parse_credentials(
        secret_id, document.get("SecretString"), version_id=version_id, stage=stage
    )


def says_not_found(body: bytes) -> bool:
    """Whether an error answer is Secrets Manager's ResourceNotFoundException."""
    return _error_type(body) == _NOT_FOUND


def error_for(reply: Reply, *, secret_id: str, url: str, token: AgentToken, what: str) -> Exception:
    """The typed error an error answer means; see the module docstring."""
    status = reply.status
    error_type = _error_type(reply.body)
    detail = _error_detail(reply.body, token.value)
    said = f"HTTP {status}" + (f" {detail}" if detail else "")
    where = f"the Secrets Manager Agent at {url}"
    if error_type == _NOT_FOUND or (status == 404 and error_type is None):
        return SecretNotFoundError(
            f"{where} found no secret {secret_id!r} ({what}: {said}): check the id or ARN "
            "and the agent's region" + ("" if error_type else f", and that {where} is one"),
            secret_id=secret_id,
        )
    if error_type == "InvalidRequestException":
        return SecretNotFoundError(
            f"secret {secret_id!r} cannot be read ({what}: {said})", secret_id=secret_id
        )
    if error_type in ACCESS_DENIED_CODES:
        return SecretAccessDeniedError(
            f"{where} may not read secret {secret_id!r} ({what}: {said}): grant "
            "secretsmanager:GetSecretValue and secretsmanager:DescribeSecret on it (and "
            "kms:Decrypt on its key) to the agent's AWS identity (the task role)",
            secret_id=secret_id,
        )
    if status in (401, 403):
        return SecretAccessDeniedError(
            f"{where} refused the token from {token.origin} ({what}: {said}): the "
            "application and the agent must share one token (AWS_TOKEN, often "
            "file:///var/run/awssmatoken on a volume both mount)",
            secret_id=secret_id,
        )
    return SecretsManagerUnavailableError(
        f"{where} could not read secret {secret_id!r} ({what}: {said})", secret_id=secret_id
    )


def answer_is_for(secret_id: str, arn: object, name: object) -> bool:
    """Whether an answer with this ``ARN`` and ``Name`` is for `secret_id`.

    An ARN asked for must be the answer's ARN, or that ARN without the six
    random characters Secrets Manager appends (a partial ARN); a name must be
    the answer's Name.

    >>> arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf"
    >>> answer_is_for(arn, arn, "prod/db"), answer_is_for(arn[:-7], arn, "prod/db")
    (True, True)
    >>> answer_is_for("prod/db", arn, "prod/db"), answer_is_for("prod/other", arn, "prod/db")
    (True, False)
    """
    if secret_id.startswith("arn:"):
        if not isinstance(arn, str):
            return False
        return arn == secret_id or (
            len(arn) == len(secret_id) + 7 and arn.startswith(secret_id + "-")
        )
    return isinstance(name, str) and name == secret_id


def _json_object(body: bytes) -> dict[str, Any] | None:
    """`body` as a JSON object; None if it is not one (nesting deep enough to
    exhaust the parser's recursion is not one either)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _error_type(body: bytes) -> str | None:
    """The AWS error code of an error answer (``__type``), without its namespace."""
    document = _json_object(body)
    error_type = document.get("__type") if document else None
    if not isinstance(error_type, str) or not error_type:
        return None
    return error_type.rpartition("#")[2]


def _error_detail(body: bytes, token: str) -> str:
    """A short, printable account of an error answer: redacted first (the
    token, and anything after a secret-bearing key), then cut."""
    document = _json_object(body)
    if document is not None:
        parts = [
            str(document[key])
            for key in ("__type", "message", "Message")
            if isinstance(document.get(key), str) and document[key]
        ]
        text = ": ".join(parts)
    else:
        text = body.decode("utf-8", errors="replace")
    if token:
        text = text.replace(token, "***")
    text = redact(text)
    # One line of printable text: a server's words must not forge log lines.
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(text) > _MAX_DETAIL_CHARS:
        text = text[: _MAX_DETAIL_CHARS - 3] + "..."
    return f"({text})" if text else ""
