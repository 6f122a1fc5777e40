"""The rotation keys of a secret, the bootstrap SQL and the printable values:
pure checks, no server needed."""

from __future__ import annotations

import pytest

from rotating_pool.rotation import (
    BootstrapPlan,
    RotationConfigError,
    RotationSettings,
    Strategy,
    bootstrap_sql,
)
from rotating_pool.rotation.errors import DatabaseLoginError, LoginAttempt
from rotating_pool.rotation.versions import SecretVersion
from rotating_pool.secret import parse_credentials

MASTER_ARN = "arn:aws:secretsmanager:us-east-1:1:secret:admin"
ALTERNATING: dict[str, object] = {
    "username": "app_a",
    "password": "pw",
    "rotation_strategy": "alternating",
    "rotation_role": "app",
    "rotation_users": ["app_a", "app_b"],
    "masterarn": MASTER_ARN,
}


def settings_of(**changes: object) -> RotationSettings:
    document = {k: v for k, v in (ALTERNATING | changes).items() if v is not None}
    return RotationSettings.from_document("s", document)


def test_alternating_keys_are_read() -> None:
    settings = settings_of()
    assert settings == RotationSettings(Strategy.ALTERNATING, "app", ("app_a", "app_b"), MASTER_ARN)
    assert settings.other_user("s", "app_a") == "app_b"
    assert settings.other_user("s", "app_b") == "app_a"


def test_single_needs_only_the_strategy() -> None:
    settings = RotationSettings.from_document("s", {"rotation_strategy": "single"})
    assert settings == RotationSettings(Strategy.SINGLE)


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"rotation_strategy": None}, "rotation_strategy", "is missing"),
        ({"rotation_strategy": "multiuser"}, "rotation_strategy", "'multiuser'"),
        ({"masterarn": None}, "masterarn", "needs the keys 'masterarn'"),
        ({"rotation_role": ""}, "rotation_role", "non-empty string"),
        ({"rotation_users": "app_a,app_b"}, "rotation_users", "exactly two"),
        ({"rotation_users": ["app_a", "app_a"]}, "rotation_users", "twice"),
        ({"rotation_users": ["app", "app_b"]}, "rotation_role", "third role"),
        ({"rotation_users": ["app_a", "x" * 64]}, "rotation_users", "longer than 63 bytes"),
        ({"rotation_users": ["app_a", 7]}, "rotation_users", "not int"),
        ({"masterarn": 42}, "masterarn", "non-empty string"),
    ],
)
def test_bad_rotation_keys_are_refused_with_the_key_named(
    changes: dict[str, object], key: str, message: str
) -> None:
    with pytest.raises(RotationConfigError, match=message) as caught:
        settings_of(**changes)
    assert caught.value.key == key
    assert "pw" not in str(caught.value)


def test_a_current_user_outside_rotation_users_is_refused() -> None:
    with pytest.raises(RotationConfigError, match="'intruder' is not one of"):
        settings_of().other_user("s", "intruder")


def test_bootstrap_sql_quotes_every_name() -> None:
    role, user = "a \"b\" 'c'", "Dé $rp$ %s {}"
    statements = bootstrap_sql(role, [user], "my db", "my schema")
    text = "\n".join(statements)
    assert 'CREATE ROLE "a ""b"" \'c\'" NOLOGIN;' in text
    assert "rolname = 'a \"b\" ''c'''" in text
    assert 'GRANT "a ""b"" \'c\'" TO "Dé $rp$ %s {}";' in text
    assert 'ON DATABASE "my db"' in text and 'ON SCHEMA "my schema"' in text
    # The DO blocks' dollar quote is one the names cannot close (the first
    # block is the privilege check, which names every role).
    for block in (statements[0], statements[2]):
        assert block.startswith("DO $rpx$") and block.endswith("$rpx$;")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"users": ("only",)}, "needs 2 login user"),
        ({"strategy": Strategy.SINGLE, "users": ("a", "b")}, "needs 1 login user"),
        ({"users": ("app", "b")}, "distinct"),
        ({"role": ""}, "non-empty"),
    ],
)
def test_bootstrap_plan_refuses_bad_names(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RotationConfigError, match=message):
        BootstrapPlan(secret_name="s", admin_secret_id="a", **kwargs)  # type: ignore[arg-type]


def test_bootstrap_plan_default_users() -> None:
    assert BootstrapPlan("s", "a", role="svc").users == ("svc_a", "svc_b")
    assert BootstrapPlan("s", "a", Strategy.SINGLE, role="svc").users == ("svc_a",)


def test_values_holding_a_password_do_not_show_it() -> None:
    secret = '{"username": "u", "password": "hunter2-secret"}'
    version = SecretVersion("v1", {"password": "hunter2-secret"}, parse_credentials("s", secret))
    error = DatabaseLoginError(
        "refused", secret_id="s", attempts=[LoginAttempt("AWSCURRENT", "u", "no")]
    )
    for shown in (repr(version), str(version), str(error), repr(error)):
        assert "hunter2" not in shown
