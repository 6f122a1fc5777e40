"""The secret format: RDS/Aurora JSON documents and their errors."""

from __future__ import annotations

import json

import pytest

from rotating_pool import Credentials, SecretFormatError, parse_credentials

GOOD = {
    "engine": "postgres",
    "host": "h",
    "port": 5432,
    "dbname": "d",
    "username": "u",
    "password": "s3cr3t-pw",
    "extra": [1, 2],
}


def test_a_full_document_gives_credentials_and_ignores_extra_keys():
    creds = parse_credentials("db", json.dumps(GOOD), version_id="v1")
    assert creds == Credentials("u", "s3cr3t-pw", "h", 5432, "d")
    assert creds.version_id == "v1"


def test_a_port_written_as_a_string_is_accepted():
    assert parse_credentials("db", json.dumps({**GOOD, "port": "6432"})).port == 6432


def test_the_password_is_not_in_repr_or_str():
    creds = parse_credentials("db", json.dumps(GOOD))
    assert "s3cr3t-pw" not in repr(creds)
    assert "s3cr3t-pw" not in str(creds)


@pytest.mark.parametrize(
    ("secret_string", "key", "says"),
    [
        ("{not json s3cr3t-pw", None, "not valid JSON"),
        ('["s3cr3t-pw"]', None, "not an object"),
        (None, None, "binary secret"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "username"}), "username", "missing"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "password"}), "password", "missing"),
        (json.dumps({**GOOD, "username": 7}), "username", "string"),
        (json.dumps({**GOOD, "password": ""}), "password", "empty"),
        (json.dumps({**GOOD, "port": "s3cr3t-pw"}), "port", "port number"),
        (json.dumps({**GOOD, "port": 70000}), "port", "port number"),
        (json.dumps({**GOOD, "host": ["s3cr3t-pw"]}), "host", "string"),
        (json.dumps({**GOOD, "port": "²"}), "port", "port number"),  # str.isdigit() says yes
        (json.dumps({**GOOD, "host": ""}), "host", "empty"),  # libpq: the local socket
        (json.dumps({**GOOD, "dbname": " "}), "dbname", "empty"),  # libpq: dbname = user
        (json.dumps({**GOOD, "username": "u\0s3cr3t-pw"}), "username", "control character"),
        (json.dumps({**GOOD, "host": "h\nX-Injected: s3cr3t-pw"}), "host", "control character"),
        (json.dumps({**GOOD, "dbname": "d\x1b[2J"}), "dbname", "control character"),
        (json.dumps({**GOOD, "password": "s3cr3t-pw\0"}), "password", "NUL"),
        (json.dumps({**GOOD, "engine": "mysql"}), "engine", "not PostgreSQL's"),
        (json.dumps({**GOOD, "engine": "s3cr3t-pw"}), "engine", "not PostgreSQL's"),
        (json.dumps({**GOOD, "engine": {"s3cr3t-pw": 1}}), "engine", "not PostgreSQL's"),
        ("[" * 100_000 + "s3cr3t-pw", None, "not valid JSON"),  # RecursionError in json
        ('{"a":' * 100_000 + '"s3cr3t-pw"', None, "not valid JSON"),
    ],
)
def test_a_malformed_secret_names_the_key_and_the_secret_never_a_value(secret_string, key, says):
    with pytest.raises(SecretFormatError) as raised:
        parse_credentials("prod/db", secret_string)
    error = raised.value
    assert (error.secret_id, error.key) == ("prod/db", key)
    assert says in str(error)
    assert "prod/db" in str(error)
    assert "s3cr3t-pw" not in str(error)
    assert error.__cause__ is None  # json's own message would quote the document


@pytest.mark.parametrize("engine", ["postgres", "postgresql", "aurora-postgresql", None])
def test_postgresqls_engine_names_as_aws_writes_them_and_no_engine_are_accepted(engine):
    document = {**GOOD, "engine": engine}
    assert parse_credentials("db", json.dumps(document)).username == "u"


def test_a_password_may_hold_other_control_characters():
    document = {**GOOD, "password": "tab\there\x1bescape"}
    assert parse_credentials("db", json.dumps(document)).password == "tab\there\x1bescape"


@pytest.mark.parametrize("secret_string", [{"username": "u"}, ["s3cr3t-pw"], 7, b"{}"])
def test_a_secret_string_that_is_not_a_string_is_a_format_error_not_a_type_error(secret_string):
    with pytest.raises(SecretFormatError, match="not a string") as raised:
        parse_credentials("prod/db", secret_string)
    assert "s3cr3t-pw" not in str(raised.value)
