"""The fleet simulator's world around the application: Secrets Manager, its agent, the database.

Nothing here sleeps or opens a socket. A `Loop` keeps a heap of timed events
(virtual time); `SecretsManager` answers DescribeSecret and GetSecretValue
from one token bucket per API after a sampled latency; `SdkClient` retries
throttled calls as the SDKs do; `Agent` is one task's Secrets Manager Agent as
its source behaves; `Database` accepts the passwords the rotation has set.
The application side (each process's credential store, its sources and its
logins) is in `benchmarks.fleet_model`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rotating_pool.errors import SecretsManagerUnavailableError
from rotating_pool.secret import AWSCURRENT, AWSPENDING, AWSPREVIOUS, Credentials

__all__ = [
    "DESCRIBE",
    "GET",
    "SECRET_ID",
    "Agent",
    "Database",
    "Latency",
    "Loop",
    "SdkClient",
    "SecretsManager",
    "Throttled",
    "Version",
]

SECRET_ID = "arn:aws:secretsmanager:us-east-1:123456789012:secret:fleet/app"
GET = "GetSecretValue"
DESCRIBE = "DescribeSecret"

Reply = Callable[[Any], None]


class Loop:
    """Virtual time: callbacks run in time order; `now` jumps from one to the next."""

    __slots__ = ("_heap", "_order", "events", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self.events = 0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def after(self, seconds: float, callback: Callable[[], None]) -> None:
        """Run `callback` `seconds` from now."""
        heapq.heappush(self._heap, (self.now + seconds, next(self._order), callback))

    def run(self, until: float) -> None:
        """Run every event due by `until`, then stop there."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            self.now, _, callback = heapq.heappop(heap)
            self.events += 1
            callback()
        self.now = until


@dataclass(frozen=True)
class Latency:
    """A log-normal latency: `median` seconds, `p99` at its 99th percentile."""

    median: float
    p99: float

    def sampler(self, rng: random.Random, size: int = 4096) -> Callable[[], float]:
        """A function drawing one latency in seconds (from `size` quantiles, for speed)."""
        mu = math.log(self.median)
        sigma = math.log(self.p99 / self.median) / 2.326 if self.p99 > self.median else 0.0
        normal = statistics.NormalDist()
        table = [math.exp(mu + sigma * normal.inv_cdf((i + 0.5) / size)) for i in range(size)]
        draw = rng.random
        return lambda: table[int(draw() * size)]


class Throttled(SecretsManagerUnavailableError):
    """A call answered ThrottlingException (after the SDK's own retries)."""


@dataclass(frozen=True)
class Version:
    """One version of the secret: its id and the credentials it holds."""

    version_id: str
    credentials: Credentials


class _Bucket:
    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SecretsManager:
    """One secret behind a token bucket per API, as AWS announced a quota per API
    (or one bucket for all, `combined`, as its quotas page has also worded it).

    A call takes a token when it arrives; without one it is answered
    ThrottlingException after the same latency (a throttled call takes no
    token). The secret's state is read when the answer leaves, so a call in
    flight across a label move sees the move. The rotation's own calls (a
    Lambda's) are not counted, as in the local benchmarks.
    """

    def __init__(
        self,
        loop: Loop,
        rates: dict[str, float],
        burst_seconds: float,
        latency: Callable[[], float],
        *,
        combined: bool = False,
    ) -> None:
        self.loop = loop
        self.latency = latency
        self.buckets = {
            op: _Bucket(rate, max(1.0, rate * burst_seconds)) for op, rate in rates.items()
        }
        if combined:  # one bucket for every operation, at the first one's rate
            shared = next(iter(self.buckets.values()))
            self.buckets = dict.fromkeys(self.buckets, shared)
        self.versions: dict[str, Version] = {}
        self.stages: dict[str, set[str]] = {}
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        # Why each call was made: "recovery" (after a refused login), "refresh" (a
        # process's periodic refresh) or "agent_ttl" (an agent renewing an entry).
        self.purposes: Counter[str] = Counter()
        # Every call as (operation, argument), in order, when a test asks for it.
        self.journal: list[tuple[str, str | None]] | None = None

    def add_pending(self, version: Version) -> None:
        """createSecret: a new version labelled AWSPENDING."""
        self.versions[version.version_id] = version
        self._move(AWSPENDING, version.version_id)

    def finish(self, version_id: str) -> None:
        """finishSecret: AWSCURRENT to `version_id`, AWSPREVIOUS to the old one, AWSPENDING off."""
        old = self.version_of(AWSCURRENT)
        self._move(AWSCURRENT, version_id)
        if old is not None:
            self._move(AWSPREVIOUS, old)
        self.stages[version_id].discard(AWSPENDING)

    def _move(self, stage: str, version_id: str) -> None:
        for stages in self.stages.values():
            stages.discard(stage)
        self.stages.setdefault(version_id, set()).add(stage)

    def version_of(self, stage: str) -> str | None:
        """The version labelled `stage`, if any."""
        return next((v for v, s in self.stages.items() if stage in s), None)

    def call(
        self,
        operation: str,
        argument: str | None,
        answer: Reply,
        purpose: str = "recovery",
    ) -> None:
        """Call `operation`: DescribeSecret, or GetSecretValue by stage or by "id:VERSION".

        `answer` gets a `Version`, None (no version with that stage), the
        ``VersionIdsToStages`` mapping, or `Throttled`.
        """
        self.calls[operation] += 1
        if self.journal is not None:
            self.journal.append((operation, argument))
        self.purposes[purpose] += 1
        self.purposes[f"{purpose}:{operation}"] += 1
        admitted = self.buckets[operation].take(self.loop.now)
        if not admitted:
            self.throttled[operation] += 1

        def respond() -> None:
            if not admitted:
                answer(Throttled("ThrottlingException: Rate exceeded", secret_id=SECRET_ID))
            elif operation == DESCRIBE:
                answer({v: sorted(s) for v, s in self.stages.items() if s})
            elif argument is not None and argument.startswith("id:"):
                answer(self.versions.get(argument[3:]))
            else:
                version_id = self.version_of(argument or AWSCURRENT)
                answer(None if version_id is None else self.versions[version_id])

        self.loop.after(self.latency(), respond)


class SdkClient:
    """An SDK client's retries around `SecretsManager.call`.

    botocore's "standard" mode (rotating_pool's default client makes 2
    attempts) retries ThrottlingException after ``random() * 2 ** (attempt - 1)``
    seconds (botocore/retries/standard.py, base 1 s for throttling); the
    agent's Rust SDK defaults to 3 attempts of the same shape.
    """

    def __init__(self, service: SecretsManager, attempts: int, rng: random.Random) -> None:
        self.service, self.attempts, self.rng = service, attempts, rng

    def call(
        self, operation: str, argument: str | None, answer: Reply, purpose: str = "recovery"
    ) -> None:
        """`SecretsManager.call`, retried as the SDK does."""

        def attempt(number: int) -> None:
            def got(result: Any) -> None:
                if isinstance(result, Throttled) and number < self.attempts:
                    delay = self.rng.random() * 2 ** (number - 1)
                    self.service.loop.after(delay, lambda: attempt(number + 1))
                else:
                    answer(result)

            self.service.call(operation, argument, got, purpose)

        attempt(1)


class Agent:
    """One task's Secrets Manager Agent, as its source behaves
    (github.com/aws/aws-secretsmanager-agent, ``aws_secretsmanager_caching/src/lib.rs``,
    ``get_secret_value``, ``refresh_secret_value`` and ``is_current``):

    - a cache keyed by the query (version id, stage), entries kept `ttl` seconds
      (the agent's default ``ttl_seconds`` is 300);
    - ``refreshNow=true``: GetSecretValue whatever the cache holds; the answer
      replaces the entry;
    - no entry: GetSecretValue; an expired entry: DescribeSecret first, and the
      entry is served again (its TTL renewed) if its version still holds the
      stage asked for (AWSCURRENT when none), else GetSecretValue;
    - concurrent requests are not coalesced: each makes its own calls.
    """

    def __init__(self, client: SdkClient, ttl: float) -> None:
        self.client = client
        self.ttl = ttl
        self.cache: dict[tuple[str | None, str | None], tuple[float, Version]] = {}
        self.requests = 0
        # Every request as (versionStage, refreshNow), in order, when a test asks for it.
        self.journal: list[tuple[str | None, bool]] | None = None

    def get(
        self, version_id: str | None, stage: str | None, refresh_now: bool, answer: Reply
    ) -> None:
        """Answer one ``/secretsmanager/get`` request: a `Version`, None (404) or an error."""
        self.requests += 1
        if self.journal is not None:
            self.journal.append((stage, refresh_now))
        key = (version_id, stage)
        entry = self.cache.get(key)
        if refresh_now or entry is None:
            self._fetch(key, answer, "recovery")
            return
        expires, cached = entry
        if self.client.service.loop.now < expires:
            answer(cached)
            return

        def described(stages: Any) -> None:
            if isinstance(stages, BaseException):
                answer(stages)
                return
            held = stages.get(cached.version_id, ())
            if (version_id is not None and stage is None) or (stage or AWSCURRENT) in held:
                self.cache[key] = (self.client.service.loop.now + self.ttl, cached)
                answer(cached)
            else:
                self._fetch(key, answer, "agent_ttl")

        self.client.call(DESCRIBE, None, described, "agent_ttl")

    def _fetch(self, key: tuple[str | None, str | None], answer: Reply, purpose: str) -> None:
        version_id, stage = key

        def fetched(result: Any) -> None:
            if isinstance(result, Version):
                self.cache[key] = (self.client.service.loop.now + self.ttl, result)
            answer(result)

        self.client.call(GET, f"id:{version_id}" if version_id else stage, fetched, purpose)


class Database:
    """Accepts, per user, the password the rotation last set (ALTER ROLE ... PASSWORD).

    A password change never ends open sessions (PostgreSQL's rule): only new
    logins are checked.
    """

    def __init__(self) -> None:
        self.passwords: dict[str, str] = {}

    def accepts(self, credentials: Credentials) -> bool:
        """Whether a login with `credentials` succeeds now."""
        return self.passwords.get(credentials.username) == credentials.password

    def refusal(self, credentials: Credentials) -> BaseException:
        """The error psycopg raises for a refused login."""
        return OSError(f"FATAL:  password authentication failed for user {credentials.username!r}")
