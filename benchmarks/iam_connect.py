"""IAM connect overhead: rotating_pool's token source vs a static token, and vs sqlalchemy-rdsiam.

Every engine uses `NullPool`, so each ``engine.connect()`` is a new login:
TLS to the local RDS IAM stand-in (`rotating_pool.testing.LocalIamAuth`), the
token checked there with botocore's signer, then a SCRAM login to PostgreSQL
behind it. Every side pays that same path; what differs is where the token
comes from:

- ``static``: one token signed before the run and given as a fixed password
  (what a script does for its first 15 minutes), and ``static_control``, an
  identical second engine (the A/A control: how far noise alone moves a ratio);
- ``rotating_pool``: ``create_engine(url, iam=True)``, its token cached and
  renewed in the background;
- ``static_psycopg2`` and ``rdsiam``: the same pair on psycopg2, since
  sqlalchemy-rdsiam (the ``postgresql+psycopg2rdsiam`` dialect) supports only
  psycopg2 and asyncpg. It signs a new token at every connect. Left out when the
  package is not installed.

Printed: median connect times, the ratios with bootstrap 95% intervals (rounds
are resampled), the share of rotating_pool's connects that signed a token, and
what signing one token costs (``generate_db_auth_token`` on a made client).

    python -m benchmarks.iam_connect           # 400 rounds
    python -m benchmarks.iam_connect --quick   # 20 rounds, to check it runs
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import boto3
import sqlalchemy
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

import rotating_pool
from benchmarks.connect import _connect  # one timed engine.connect(), close untimed
from benchmarks.measure import Sample, interleave, sample
from rotating_pool.engine import credential_store
from rotating_pool.iam import IamTokenSource
from rotating_pool.testing import LocalIamAuth, LocalPostgres

REGION = "us-east-1"
KEY = ("AKIDBENCHMARKKEY0001", "benchmark-secret-key")
USER = "bench_person"


def _engines(rds: LocalIamAuth) -> dict[str, Engine]:
    where = f"{USER}@{rds.host}:{rds.port}/postgres"
    ca = {"sslmode": "verify-full", "sslrootcert": str(rds.ca_path)}
    token = boto3.session.Session().client("rds").generate_db_auth_token(rds.host, rds.port, USER)

    def static(driver: str) -> Engine:
        return sqlalchemy.create_engine(
            f"postgresql+{driver}://{where}",
            connect_args={**ca, "password": token},
            poolclass=NullPool,
        )

    engines = {
        "static": static("psycopg"),
        "static_control": static("psycopg"),
        "rotating_pool": rotating_pool.create_engine(
            f"postgresql+psycopg://{where}",
            iam=True,
            connect_args={"sslrootcert": ca["sslrootcert"]},
            poolclass=NullPool,
        ),
    }
    if importlib.util.find_spec("sqlalchemy_rdsiam") is not None:
        engines["static_psycopg2"] = static("psycopg2")
        engines["rdsiam"] = sqlalchemy.create_engine(
            f"postgresql+psycopg2rdsiam://{where}?aws_region_name={REGION}"
            f"&sslmode=verify-full&sslrootcert={ca['sslrootcert']}",
            poolclass=NullPool,
        )
    return engines


def run(rounds: int) -> dict[str, Any]:
    """Time `rounds` connects per engine, in turns; the figures as a dict."""
    os.environ.update(
        AWS_ACCESS_KEY_ID=KEY[0], AWS_SECRET_ACCESS_KEY=KEY[1], AWS_DEFAULT_REGION=REGION
    )
    with LocalPostgres() as postgres:
        schema = postgres.create_app_schema(role="bench_iam", users=(USER, f"{USER}_b"))
        password = schema.passwords[USER]
        with LocalIamAuth(
            (postgres.host, postgres.port), {USER: password}, keys=dict([KEY]), region=REGION
        ) as rds:
            engines = _engines(rds)
            try:
                for engine in engines.values():  # warm: dialect set-up, the first token
                    for _ in range(3):
                        _connect(engine)
                source = credential_store(engines["rotating_pool"]).source
                assert isinstance(source, IamTokenSource)
                signed_before = source.tokens_signed
                sides: dict[str, Callable[[], list[Sample]]] = {
                    name: partial(_connect, engine) for name, engine in engines.items()
                }
                samples = interleave(rounds, sides)
                signed = source.tokens_signed - signed_before
            finally:
                for engine in engines.values():
                    engine.dispose()

    client = boto3.session.Session().client("rds")
    signing = [
        sample(lambda: client.generate_db_auth_token("db.example", 5432, USER)).wall
        for _ in range(max(rounds, 200))
    ]

    def ratio(side: str, base: str) -> dict[str, float]:
        return samples.compare(side, base).as_dict()

    result: dict[str, Any] = {
        "rounds": rounds,
        "median_ms": {name: samples.median(name) * 1000 for name in engines},
        "rotating_pool_vs_static": ratio("rotating_pool", "static"),
        "aa_control_vs_static": ratio("static_control", "static"),
        "rotating_pool_connects_that_signed_a_token": signed / rounds,
        "one_token_signing_median_us": statistics.median(signing) * 1e6,
    }
    if "rdsiam" in engines:
        result["rdsiam_vs_static_psycopg2"] = ratio("rdsiam", "static_psycopg2")
        result["rdsiam_connects_that_signed_a_token"] = 1.0  # it signs in every connect
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 rounds, to check it runs")
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args(argv)
    print(json.dumps(run(20 if args.quick else args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
