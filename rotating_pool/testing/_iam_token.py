"""Check an RDS auth token as RDS would, recomputing its SigV4 signature with botocore.

An RDS auth token (``rds.generate_db_auth_token``) is a SigV4 presigned URL
without its scheme::

    HOST:PORT/?Action=connect&DBUser=USER&X-Amz-Algorithm=AWS4-HMAC-SHA256
      &X-Amz-Credential=AKID/YYYYMMDD/REGION/rds-db/aws4_request&X-Amz-Date=...
      &X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=HEX

The signature is recomputed with botocore's own `SigV4QueryAuth` steps
(canonical request, string to sign, signing key) from the secret key of the
access key the token names; nothing in the token is trusted before that.
"""

from __future__ import annotations

import calendar
import hmac
import time
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote

from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as AwsCredentials

__all__ = ["MAX_EXPIRES", "check_token", "signed_at"]

MAX_EXPIRES = 900
"""The longest lifetime RDS accepts (botocore signs every token for 900 s)."""
_SKEW = 300  # seconds a token may be dated ahead of the server's clock
_MAX_TOKEN = 16_384
_REQUIRED = (
    "Action",
    "DBUser",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)


def check_token(  # noqa: PLR0911  (one return per reason RDS would refuse)
    token: str,
    *,
    user: str,
    endpoint: str,
    region: str,
    keys: Mapping[str, str],
    now: float,
) -> str | None:
    """Why RDS would refuse `token` for `user` at `endpoint` (``host:port``); None if valid.

    `keys` maps the access key ids accepted to their secret keys; `now` is
    Unix time. The reason is for the stand-in's log and counters, never shown
    to the client (RDS says only "PAM authentication failed").
    """
    if len(token) > _MAX_TOKEN or "/?" not in token:
        return "malformed"
    netloc, _, query = token.partition("/?")
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    params = dict(pairs)
    if len(params) != len(pairs) or any(name not in params for name in _REQUIRED):
        return "malformed"
    if netloc != endpoint:
        return "wrong host"
    if params["Action"] != "connect" or params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        return "wrong action"
    if params["DBUser"] != user:
        return "wrong user"
    scope = params["X-Amz-Credential"].split("/")
    if len(scope) != 5 or scope[3:] != ["rds-db", "aws4_request"]:
        return "malformed"
    key_id, day, token_region = scope[0], scope[1], scope[2]
    if token_region != region:
        return "wrong region"
    try:
        signed = calendar.timegm(time.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
        expires = int(params["X-Amz-Expires"])
    except ValueError:
        return "malformed"
    if params["X-Amz-Date"][:8] != day or params["X-Amz-SignedHeaders"] != "host":
        return "malformed"
    if not 0 < expires <= MAX_EXPIRES:
        return "bad lifetime"
    if now > signed + expires:
        return "expired"
    if signed > now + _SKEW:
        return "dated in the future"
    secret = keys.get(key_id)
    if secret is None:
        return "unknown key"
    given = params.pop("X-Amz-Signature")
    unsigned = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params.items()
    )
    request = AWSRequest(method="GET", url=f"https://{netloc}/?{unsigned}")
    request.context["timestamp"] = params["X-Amz-Date"]
    auth = SigV4QueryAuth(
        AwsCredentials(key_id, secret, params.get("X-Amz-Security-Token")),
        "rds-db",
        region,
        expires=expires,
    )
    expected = auth.signature(
        auth.string_to_sign(request, auth.canonical_request(request)), request
    )
    if not hmac.compare_digest(expected.encode(), given.encode()):
        return "bad signature"
    return None


def signed_at(token: str) -> float | None:
    """The Unix time a token says it was signed (``X-Amz-Date``); None if it says none."""
    for name, value in parse_qsl(token.partition("/?")[2], keep_blank_values=True):
        if name == "X-Amz-Date":
            try:
                return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
            except ValueError:
                return None
    return None
