"""Serve moto's Secrets Manager over HTTP, patched where moto 5.2.5 departs from AWS.

Run as ``python -m rotating_pool.testing._moto_main --host 127.0.0.1 --port N``;
`LocalSecretsManager` does. The patches (`patch_secretsmanager`):

(a) ``UpdateSecretVersionStage`` moving AWSCURRENT also changes what
    ``GetSecretValue`` without a stage returns (moto kept the old version).
(b) ``RotateSecret`` with a Lambda ARN whose function name starts with
    ``rotating-pool-local`` only stages the rotation, as AWS does before its
    first invoke, and invokes nothing: the test drives the four steps itself.
    Other ARNs keep moto's behaviour.
(c) ``PutSecretValue`` with the token of a version that already has a value is
    a no-op for the same content and fails with ResourceExistsException for
    other content (moto overwrote AWSPENDING versions).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

LOCAL_LAMBDA_PREFIX = "rotating-pool-local"


def is_local_lambda(arn: str | None) -> bool:
    """Tell whether `arn` names a test-bed rotation Lambda that must not be invoked.

    >>> is_local_lambda("arn:aws:lambda:us-east-1:123456789012:function:rotating-pool-local-x")
    True
    >>> is_local_lambda("arn:aws:lambda:us-east-1:123456789012:function:other")
    False
    """
    # arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
    parts = (arn or "").split(":")
    return (
        len(parts) >= 7
        and parts[2] == "lambda"
        and parts[5] == "function"
        and parts[6].startswith(LOCAL_LAMBDA_PREFIX)
    )


def patch_secretsmanager() -> None:
    """Patch moto's SecretsManagerBackend in this process (see the module docstring)."""
    from moto.secretsmanager.exceptions import (  # noqa: PLC0415  (moto imports slowly)
        InvalidParameterException,
        InvalidRequestException,
        ResourceExistsException,
    )
    from moto.secretsmanager.models import (  # noqa: PLC0415
        FakeSecret,
        SecretsManagerBackend,
    )

    original_update_stage = SecretsManagerBackend.update_secret_version_stage
    original_rotate = SecretsManagerBackend.rotate_secret
    original_put = SecretsManagerBackend.put_secret_value

    def update_secret_version_stage(
        self: Any,
        secret_id: str,
        version_stage: str,
        remove_from_version_id: str,
        move_to_version_id: str,
    ) -> Any:
        result = original_update_stage(
            self, secret_id, version_stage, remove_from_version_id, move_to_version_id
        )
        if version_stage == "AWSCURRENT" and move_to_version_id:
            # moto answers a stage-less GetSecretValue from its default version.
            self.secrets[secret_id].set_default_version_id(move_to_version_id)
        return result

    def rotate_secret(  # noqa: PLR0917  (moto's signature)
        self: Any,
        secret_id: str,
        client_request_token: str | None = None,
        rotation_lambda_arn: str | None = None,
        rotation_rules: dict[str, Any] | None = None,
        rotate_immediately: bool = True,
    ) -> Any:
        secret = self.secrets.get(secret_id) if secret_id in self.secrets else None
        # Without an ARN, AWS uses the one configured by an earlier RotateSecret.
        lambda_arn: str = rotation_lambda_arn or getattr(secret, "rotation_lambda_arn", "") or ""
        if (
            not isinstance(secret, FakeSecret)
            or secret.is_deleted()
            or not is_local_lambda(lambda_arn)
        ):
            return original_rotate(
                self,
                secret_id,
                client_request_token,
                rotation_lambda_arn,
                rotation_rules,
                rotate_immediately,
            )
        days = (rotation_rules or {}).get("AutomaticallyAfterDays")
        if days is not None:
            if not 1 <= int(days) <= 1000:
                raise InvalidParameterException(
                    "RotationRules.AutomaticallyAfterDays must be within 1-1000."
                )
            secret.auto_rotate_after_days = int(days)
            secret.next_rotation_date = int(time.time()) + int(days) * 86400
        token = self._from_client_request_token(client_request_token)
        if rotate_immediately and token not in secret.versions:
            for version in secret.versions.values():
                stages = version["version_stages"]
                # AWSPENDING together with AWSCURRENT is a finished rotation (moto
                # refuses it); AWSPENDING alone is one still in progress.
                if "AWSPENDING" in stages and "AWSCURRENT" not in stages:
                    raise InvalidRequestException("Previous rotation request is still in progress.")
            secret.remove_version_stages_from_old_versions(["AWSPENDING"])
            secret.versions[token] = {
                "createdate": int(time.time()),
                "version_id": token,
                "version_stages": ["AWSPENDING"],
            }
        secret.rotation_requested = True
        secret.rotation_enabled = True
        secret.rotation_lambda_arn = lambda_arn
        if rotate_immediately:
            return secret.to_short_dict(version_id=token)
        return secret.to_short_dict(include_version_id=False)

    def put_secret_value(  # noqa: PLR0917  (moto's signature)
        self: Any,
        secret_id: str,
        secret_string: str,
        secret_binary: str,
        client_request_token: str,
        version_stages: list[str],
    ) -> Any:
        secret = self.secrets.get(secret_id) if secret_id in self.secrets else None
        version = (
            secret.versions.get(client_request_token)
            if isinstance(secret, FakeSecret) and client_request_token
            else None
        )
        # A version staged by RotateSecret has no value yet: filling it is allowed.
        if version is not None and ("secret_string" in version or "secret_binary" in version):
            assert secret is not None
            if (
                version.get("secret_string") == secret_string
                and version.get("secret_binary") == secret_binary
            ):
                return secret.to_short_dict(
                    include_version_stages=True, version_id=client_request_token
                )
            raise ResourceExistsException(
                f"You can't use ClientRequestToken {client_request_token} because that value "
                f"is already in use for a version of secret {secret.arn}."
            )
        return original_put(
            self, secret_id, secret_string, secret_binary, client_request_token, version_stages
        )

    SecretsManagerBackend.update_secret_version_stage = update_secret_version_stage  # type: ignore[method-assign]
    SecretsManagerBackend.rotate_secret = rotate_secret  # type: ignore[method-assign]
    SecretsManagerBackend.put_secret_value = put_secret_value  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    """Patch moto, then serve it until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # One log line per request would slow a benchmark down; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    patch_secretsmanager()
    from moto.server import main as serve  # noqa: PLC0415

    serve(["--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    main()
