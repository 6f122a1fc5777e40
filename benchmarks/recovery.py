"""3a. Recovery latency: a new connection whose first login is refused after a rotation.

Each sample rotates a single-user secret (the password changes, the user
stays) and then opens one new connection through each client, timing it until
it is connected and counting its Secrets Manager calls. Two moments:

- ``after``: the rotation is finished (AWSCURRENT moved); the refetch finds
  the new AWSCURRENT.
- ``pending``: between setSecret and finishSecret: the database has the new
  password but AWSCURRENT has not moved; only AWSPENDING has it.

Peers: aws-advanced-python-wrapper (refetches once, at once), and
aws-secretsmanager-caching's `refresh_secret_now` (sleeps 2.5-5 s first; few
samples, since each costs seconds).

Every client uses `NullPool`, so each sample is one new DBAPI connection.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

import rotating_pool
from benchmarks.bed import Bed, Secret, counting_proxy
from benchmarks.clients import (
    caching_engine,
    rotating_pool_engine,
    static_engine,
    wrapper_engine,
    wrapper_unavailable,
)
from benchmarks.measure import goal, percentile, summary
from rotating_pool.rotation import Rotator
from rotating_pool.testing import FaultProxy

# rotating_pool's first retry round starts at once; its smallest backoff wait is
# 50 ms (half of RetryBudget's 0.1 s base). A median recovery within this margin
# of its calls and logins has slept no backoff.
NO_SLEEP_MARGIN_S = 0.025


@dataclass(frozen=True)
class Settings:
    samples: int  # rotations; each gives one "after" and one "pending" sample per client
    caching_samples: int  # of those, how many also time the caching library (2.5-5 s each)


CLIENTS = ("rotating_pool", "wrapper", "caching")

FULL = Settings(samples=100, caching_samples=6)
QUICK = Settings(samples=3, caching_samples=1)


@dataclass
class _Samples:
    seconds: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def report(self, redact: Callable[[str], str]) -> dict[str, Any]:
        ok = self.seconds
        return {
            "samples": len(ok) + self.failures,
            "failures": self.failures,
            **summary(ok),
            "calls_per_recovery": {
                "median": statistics.median(self.calls) if self.calls else None,
                "max": max(self.calls, default=None),
            },
            "errors": {redact(k): v for k, v in self.errors.most_common(3)},
        }


@dataclass
class _Client:
    name: str
    engine: Engine
    proxy: FaultProxy
    samples: dict[str, _Samples] = field(
        default_factory=lambda: {"after": _Samples(), "pending": _Samples()}
    )

    def sample(self, moment: str) -> None:
        self.proxy.reset_calls()
        started = time.perf_counter()
        try:
            self.engine.connect().close()
        except Exception as error:
            record = self.samples[moment]
            record.failures += 1
            record.errors[f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"] += 1
        else:
            self.samples[moment].seconds.append(time.perf_counter() - started)
        self.samples[moment].calls.append(self.proxy.total_calls)


def _start_rotation(rotator: Rotator, secret: Secret) -> str:
    """Run createSecret and setSecret: the database has the new password, AWSCURRENT not yet."""
    token = str(uuid.uuid4())
    for step in ("createSecret", "setSecret"):
        rotator.run_step(secret.arn, token, step, check_enabled=False)
    return token


def _finish_rotation(rotator: Rotator, secret: Secret, token: str) -> None:
    for step in ("testSecret", "finishSecret"):
        rotator.run_step(secret.arn, token, step, check_enabled=False)


class _Parts:
    """Times what a recovery is made of, one of each per round, beside the samples.

    Measured in the same rounds as the recoveries, so that both see the same
    machine: a GetSecretValue through the proxy and one login.
    """

    def __init__(self, bed: Bed, secret: Secret, proxy: FaultProxy) -> None:
        self.secret = secret
        self.client = bed.secretsmanager.client(proxy.endpoint_url)
        self.engine = static_engine(bed, secret, poolclass=NullPool)
        self.calls: list[float] = []
        self.logins: list[float] = []

    def sample(self) -> None:
        started = time.perf_counter()
        self.client.get_secret_value(SecretId=self.secret.arn)
        self.calls.append(time.perf_counter() - started)
        # The static engine's password is the first one: refused, as a stale login is.
        started = time.perf_counter()
        try:
            self.engine.connect().close()
        except Exception as error:
            if not rotating_pool.is_login_rejection(error):
                raise
        self.logins.append(time.perf_counter() - started)

    def medians(self) -> tuple[float, float]:
        return statistics.median(self.calls), statistics.median(self.logins)


def run(bed: Bed, settings: Settings) -> dict[str, Any]:
    secret = bed.new_secret("single")
    wrapper_missing = wrapper_unavailable()
    with ExitStack() as stack:
        proxies = {name: stack.enter_context(counting_proxy(bed)) for name in CLIENTS}
        ours = rotating_pool_engine(bed, secret, proxies["rotating_pool"], poolclass=NullPool)
        clients = [_Client("rotating_pool", ours, proxies["rotating_pool"])]
        if wrapper_missing is None:
            engine = wrapper_engine(bed, secret, proxies["wrapper"], poolclass=NullPool)
            clients.append(_Client("wrapper", engine, proxies["wrapper"]))
        engine = caching_engine(bed, secret, proxies["caching"], poolclass=NullPool)
        caching = _Client("caching", engine, proxies["caching"])
        for client in [*clients, caching]:  # warm: the first read and the dialect's setup
            client.engine.connect().close()
        parts = _Parts(bed, secret, proxies["rotating_pool"])
        store = rotating_pool.credential_store(clients[0].engine)
        before = store.stats()
        rotator = bed.rotator()
        for number in range(settings.samples):
            # Alternate the order so that neither client always goes first.
            order = clients if number % 2 == 0 else clients[::-1]
            if number < settings.caching_samples:
                order = [*order, caching]
            rotator.rotate(secret.arn)
            parts.sample()
            for client in order:
                client.sample("after")
            token = _start_rotation(rotator, secret)
            try:
                for client in order:
                    client.sample("pending")
            finally:
                _finish_rotation(rotator, secret, token)
        after = store.stats()
        call_s, login_s = parts.medians()
        for engine in [*(client.engine for client in [*clients, caching]), parts.engine]:
            engine.dispose()
    logins = after.logins - before.logins
    rejected = after.rejected_logins - before.rejected_logins
    results: dict[str, Any] = {
        "samples": settings.samples,
        "get_secret_value_ms": call_s * 1000,
        "refused_login_ms": login_s * 1000,
        "rotating_pool_logins_per_recovery": logins / (2 * settings.samples),
        "rotating_pool_rejected_per_recovery": rejected / (2 * settings.samples),
        "clients": {
            client.name: {m: s.report(bed.redact) for m, s in client.samples.items()}
            for client in [*clients, caching]
        },
    }
    if wrapper_missing is not None:
        results["clients"]["wrapper"] = {"not_measured": wrapper_missing}
    results["goals"] = _goals(clients[0].samples, call_s, login_s, logins, settings.samples)
    return results


def _goals(
    ours: dict[str, _Samples], call_s: float, login_s: float, logins: int, samples: int
) -> list[dict[str, object]]:
    goals = []
    for moment, allowed in (("after", 2), ("pending", 3)):
        record = ours[moment]
        most_calls = max(record.calls, default=0)
        # What a recovery must cost: the refused login, its calls, one more login
        # (a refused SCRAM login costs about what an accepted one does).
        median_calls = statistics.median(record.calls) if record.calls else 0
        floor = 2 * login_s + median_calls * call_s
        p50 = percentile(record.seconds, 50)
        no_sleep = p50 <= floor + NO_SLEEP_MARGIN_S
        goals.append(
            goal(
                f"recovery ({moment} finishSecret): calls, one connect, no sleep",
                f"<= {allowed} calls, 0 failures, p50 within {NO_SLEEP_MARGIN_S * 1000:.0f} ms "
                "of refused login + calls + login",
                f"max {most_calls} calls, {record.failures} failures, p50 "
                f"{p50 * 1000:.1f} ms vs {floor * 1000:.1f} ms of parts",
                most_calls <= allowed and record.failures == 0 and no_sleep,
            )
        )
    goals.append(
        goal(
            "recovery: logins per recovered connection",
            "2 (the refused one + one connect)",
            f"{logins / (2 * samples):.2f}",
            logins == 4 * samples,
        )
    )
    return goals
