"""A logging filter that keeps secret values out of botocore's debug logs.

With the ``botocore`` loggers at DEBUG, botocore logs whole request and
response bodies: a GetSecretValue answer, SecretString and password included.
rotating_pool never logs a secret, but it cannot stop botocore; this filter
can::

    import logging, rotating_pool
    handler = logging.StreamHandler()
    handler.addFilter(rotating_pool.RedactSecretsFilter())

or, to cover every handler at once, ``rotating_pool.redact_botocore_logs()``.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactSecretsFilter", "redact_botocore_logs"]

_KEYS = r"SecretString|SecretBinary|RandomPassword|password|Password"
# From a secret-bearing key to the end of its line: botocore writes bodies as
# JSON inside bytes reprs, with escaping that depends on the call, and a value
# may contain quotes. Dropping the rest of the line is the only safe cut.
_PATTERN = re.compile(rf"""(\\*["'](?:{_KEYS})\\*["']\s*:\s*).*""")
_REPLACEMENT = "***"
# SigV4 (botocore.auth at DEBUG): the signature botocore computed, and a
# presigned URL's signature and session token. For an RDS auth token (IAM
# database authentication) the signature is what makes the token a password.
_SIGV4 = re.compile(r"(Signature:\s*|X-Amz-Signature=|X-Amz-Security-Token=)[^&\s'\"]+")

# botocore's loggers that write bodies; a logger's filters only see records
# logged to it directly, so each one gets the filter.
_BOTOCORE_LOGGERS = (
    "botocore",
    "botocore.endpoint",
    "botocore.parsers",
    "botocore.hooks",
    "botocore.auth",
    "botocore.retryhandler",
    "botocore.httpsession",
    "botocore.client",
    "boto3",
    "boto3.resources.action",
)


def redact(text: str) -> str:
    """Cut each line of `text` after a secret-bearing key, leaving ``***``.

    >>> redact('{"Name": "db", "SecretString": "{\\\\"password\\\\": \\\\"pw\\\\"}"}')
    '{"Name": "db", "SecretString": ***'
    """
    text = _PATTERN.sub(lambda match: match.group(1) + _REPLACEMENT, text)
    return _SIGV4.sub(lambda match: match.group(1) + _REPLACEMENT, text)


class RedactSecretsFilter(logging.Filter):
    """Rewrites each record's message with secret values replaced by ``***``.

    Add it to a handler (it then sees every record that handler writes) or to
    a logger (it then sees only records logged to that very logger).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact `record` in place; never drops it."""
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


def redact_botocore_logs() -> RedactSecretsFilter:
    """Add a `RedactSecretsFilter` to botocore's and boto3's loggers; returns it."""
    log_filter = RedactSecretsFilter()
    for name in _BOTOCORE_LOGGERS:
        logging.getLogger(name).addFilter(log_filter)
    return log_filter
