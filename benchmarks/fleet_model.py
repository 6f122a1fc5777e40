"""The fleet simulator's model: a discrete-event world in virtual time.

Nothing here sleeps or opens a socket. A `Loop` keeps a heap of timed events;
a `SecretsManager` answers DescribeSecret and GetSecretValue from per-API
token buckets after a sampled latency; a `Database` accepts the passwords the
rotation has set so far; each `Process` holds one engine's credentials as
`rotating_pool.store.CredentialStore` does (single-flight refetches keyed by
the refused credentials, a periodic refresh through a cache), and each of its
threads logs in by driving the project's own `rotating_pool.policy.login_plan`
with a real `RetryBudget`. The only copy of library logic is the read order
on a refusal (`todays_reads`), kept in one swappable function until the store
exposes its read decision sans-I/O.

Threads are simulated only when they matter: while a process's credentials
are accepted, a pooled connection renewed by ``pool_recycle`` logs in without
trouble, so a thread costs no event until the password it would use stops
working. Then its next login (uniform over one recycle period: pooled
connections have every age) is simulated, with every refusal, refetch and
backoff wait, until it is connected again.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from rotating_pool.errors import LoginRejectedError, SecretsManagerUnavailableError
from rotating_pool.policy import Connect, Refetch, RetryBudget, login_plan
from rotating_pool.secret import AWSCURRENT, AWSPENDING, AWSPREVIOUS, Credentials

__all__ = [
    "Describe",
    "Fetch",
    "FetchVersion",
    "Latency",
    "Loop",
    "Outcome",
    "World",
    "WorldConfig",
    "todays_reads",
]

SECRET_ID = "arn:aws:secretsmanager:us-east-1:123456789012:secret:fleet/app"
GET = "GetSecretValue"
DESCRIBE = "DescribeSecret"


# -- time ---------------------------------------------------------------------


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
        """Run every event due before `until`, then stop there."""
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

    def sampler(self, rng: random.Random) -> Callable[[], float]:
        """A function drawing one latency in seconds."""
        mu = math.log(self.median)
        sigma = math.log(self.p99 / self.median) / 2.326 if self.p99 > self.median else 0.0
        gauss, exp = rng.gauss, math.exp
        return lambda: exp(mu + sigma * gauss())


# -- Secrets Manager ------------------------------------------------------------


class Throttled(SecretsManagerUnavailableError):
    """A call answered ThrottlingException (after the SDK's own retries)."""


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


@dataclass(frozen=True)
class Version:
    """One version of the secret: its id and the credentials it holds."""

    version_id: str
    credentials: Credentials


class SecretsManager:
    """One secret behind per-API token buckets (AWS keeps a quota per API).

    A call takes a token when it arrives; without one it is answered
    ThrottlingException after the same latency. State is read when the
    answer leaves, so a call in flight across a label move sees the move.
    """

    def __init__(
        self, loop: Loop, rates: dict[str, float], burst_seconds: float, latency: Callable[[], float]
    ) -> None:
        self.loop = loop
        self.latency = latency
        self.buckets = {op: _Bucket(rate, max(1.0, rate * burst_seconds)) for op, rate in rates.items()}
        self.versions: dict[str, Version] = {}
        self.stages: dict[str, set[str]] = {}
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        # Why each call was made: "recovery", "refresh" (a process's periodic
        # refresh) or "agent_ttl" (an agent renewing an expired entry).
        self.purposes: Counter[str] = Counter()

    # The rotation's own calls (a Lambda's) are not counted, as in the local bench.
    def add_version(self, version: Version, stage: str) -> None:
        self.versions[version.version_id] = version
        self._move(stage, version.version_id)

    def move_current(self, version_id: str) -> None:
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
        return next((v for v, s in self.stages.items() if stage in s), None)

    def call(
        self,
        operation: str,
        argument: str | None,
        answer: Callable[[Any], None],
        purpose: str = "recovery",
    ) -> None:
        """Call `operation` (GetSecretValue by stage or "id:VERSION", or DescribeSecret);
        `answer` gets a `Version`, None (no such stage), a stages map, or `Throttled`."""
        self.calls[operation] += 1
        self.purposes[purpose] += 1
        admitted = self.buckets[operation].take(self.loop.now)
        if not admitted:
            self.throttled[operation] += 1

        def respond() -> None:
            if not admitted:
                answer(Throttled("ThrottlingException: Rate exceeded", secret_id=SECRET_ID))
            elif operation == DESCRIBE:
                answer({v: frozenset(s) for v, s in self.stages.items() if s})
            elif argument is not None and argument.startswith("id:"):
                answer(self.versions.get(argument[3:]))
            else:
                version_id = self.version_of(argument or AWSCURRENT)
                answer(None if version_id is None else self.versions[version_id])

        self.loop.after(self.latency(), respond)


class SdkClient:
    """An SDK client's retries around `SecretsManager.call`.

    botocore's "standard" mode (rotating_pool's default client: 2 attempts)
    retries ThrottlingException after ``random() * 2 ** (attempt - 1)``
    seconds; the agent's Rust SDK default is 3 attempts, same shape.
    """

    def __init__(self, service: SecretsManager, attempts: int, rng: random.Random) -> None:
        self.service, self.attempts, self.rng = service, attempts, rng

    def call(
        self,
        operation: str,
        argument: str | None,
        answer: Callable[[Any], None],
        purpose: str = "recovery",
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


# -- what a refused process reads -------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    """Read one stage, bypassing caches (`SecretSource.fetch`)."""

    stage: str


@dataclass(frozen=True)
class FetchVersion:
    """Read one version by its id."""

    version_id: str


@dataclass(frozen=True)
class Describe:
    """DescribeSecret: which version holds which stage."""


Read = Fetch | FetchVersion | Describe
Reads = Generator[Read, Any, Credentials | None]


def todays_reads(rejected: Credentials, use_pending: bool) -> Reads:
    """The store's refetch as it reads today (`CredentialStore._read_newer`):
    AWSCURRENT, and when it has not moved, AWSPENDING. A read error ends it
    (raised by the driver into this generator and out of it)."""
    current = yield Fetch(AWSCURRENT)
    if current is not None and current != rejected:
        return current  # type: ignore[no-any-return]
    if use_pending:
        pending = yield Fetch(AWSPENDING)
        if pending is not None and pending != rejected:
            return pending  # type: ignore[no-any-return]
    return None


ReadPlan = Callable[[Credentials, bool], Reads]


# -- sources: Secrets Manager directly, or through a task's agent ----------------


class DirectSource:
    """`SecretsManagerSource`: GetSecretValue through the process's own SDK client;
    the steady-state refresh through aws-secretsmanager-caching (DescribeSecret
    after a TTL jittered between half and all of it, GetSecretValue when
    AWSCURRENT moved)."""

    def __init__(self, client: SdkClient) -> None:
        self.client = client
        self.cached_version: str | None = None

    def read(self, read: Read, answer: Callable[[Any], None]) -> None:
        if isinstance(read, Describe):
            self.client.call(DESCRIBE, None, answer)
        elif isinstance(read, FetchVersion):
            self.client.call(GET, "id:" + read.version_id, answer)
        else:
            self.client.call(GET, read.stage, answer)

    def refresh(self, answer: Callable[[Any], None]) -> None:
        def described(stages: Any) -> None:
            if isinstance(stages, BaseException):
                answer(stages)
                return
            current = next((v for v, s in stages.items() if AWSCURRENT in s), None)
            if current is None or current == self.cached_version:
                answer(None)
                return

            def fetched(version: Any) -> None:
                if isinstance(version, Version):
                    self.cached_version = version.version_id
                answer(version)

            self.client.call(GET, "id:" + current, fetched, "refresh")

        self.client.call(DESCRIBE, None, described, "refresh")


class Agent:
    """One task's Secrets Manager Agent, as its source says it behaves
    (github.com/aws/aws-secretsmanager-agent, ``aws_secretsmanager_caching/src/lib.rs``):
    a cache keyed by the query (version id, stage); ``refreshNow=true``
    always calls GetSecretValue and stores the answer; a missing entry is
    fetched; an expired one is first checked with DescribeSecret and kept (its
    TTL renewed) when its version still holds the stage. No coalescing of
    concurrent requests."""

    def __init__(self, client: SdkClient, ttl: float) -> None:
        self.client = client
        self.ttl = ttl
        self.cache: dict[tuple[str | None, str | None], tuple[float, Version]] = {}
        self.requests = 0
        self.ttl_checks = 0  # DescribeSecret calls made for expired entries

    def get(
        self,
        version_id: str | None,
        stage: str | None,
        refresh_now: bool,
        answer: Callable[[Any], None],
    ) -> None:
        self.requests += 1
        key = (version_id, stage)
        now = self.client.service.loop.now
        entry = self.cache.get(key)
        if not refresh_now and entry is not None:
            expires, cached = entry
            if now < expires:
                answer(cached)
                return
            self.ttl_checks += 1

            def described(stages: Any) -> None:
                if isinstance(stages, BaseException):
                    answer(stages)
                    return
                wanted = stage or AWSCURRENT
                held = stages.get(cached.version_id, frozenset())
                if (version_id is not None and stage is None) or wanted in held:
                    self.cache[key] = (self.client.service.loop.now + self.ttl, cached)
                    answer(cached)
                else:
                    self._fetch(key, answer, "agent_ttl")

            self.client.call(DESCRIBE, None, described, "agent_ttl")
            return
        self._fetch(key, answer, "recovery")

    def _fetch(
        self, key: tuple[str | None, str | None], answer: Callable[[Any], None], purpose: str
    ) -> None:
        version_id, stage = key

        def fetched(result: Any) -> None:
            if isinstance(result, Version):
                self.cache[key] = (self.client.service.loop.now + self.ttl, result)
            answer(result)

        self.client.call(GET, "id:" + version_id if version_id else stage, fetched, purpose)


class AgentSource:
    """`rotating_pool.AgentSource`: reads through the task's agent over localhost,
    with its timeout. `fetch` asks with ``refreshNow=true`` (AWSCURRENT
    without a stage, so the fresh value replaces the cached one every process
    reads); the steady-state refresh is a plain cached read."""

    def __init__(self, agent: Agent, loop: Loop, hop: Callable[[], float], timeout: float) -> None:
        self.agent, self.loop, self.hop, self.timeout = agent, loop, hop, timeout
        self.cached: Credentials | None = None

    def _ask(
        self, version_id: str | None, stage: str | None, refresh: bool, answer: Callable[[Any], None]
    ) -> None:
        settled = False

        def reply(result: Any) -> None:
            nonlocal settled
            if not settled:
                settled = True
                self.loop.after(self.hop(), lambda: answer(result))

        def timed_out() -> None:
            reply(SecretsManagerUnavailableError("agent timed out", secret_id=SECRET_ID))

        self.loop.after(self.timeout, timed_out)
        self.loop.after(self.hop(), lambda: self.agent.get(version_id, stage, refresh, reply))

    def read(self, read: Read, answer: Callable[[Any], None]) -> None:
        if isinstance(read, FetchVersion):
            self._ask(read.version_id, None, True, answer)
        elif isinstance(read, Fetch):
            stage = None if read.stage == AWSCURRENT else read.stage
            self._ask(None, stage, True, answer)
        else:  # the agent serves GetSecretValue only
            answer(SecretsManagerUnavailableError("no DescribeSecret via the agent", secret_id=SECRET_ID))

    def refresh(self, answer: Callable[[Any], None]) -> None:
        def got(result: Any) -> None:
            if isinstance(result, Version) and result.credentials != self.cached:
                self.cached = result.credentials
                answer(result)
            else:
                answer(None if isinstance(result, Version) else result)

        self._ask(None, None, False, got)


# -- the database ------------------------------------------------------------------

_REFUSED = "FATAL:  password authentication failed for user {!r}"


class Database:
    """Accepts, per user, the password the rotation last set (ALTER ROLE ... PASSWORD).

    Open sessions are never ended by a password change (PostgreSQL's rule):
    only new logins are checked.
    """

    def __init__(self) -> None:
        self.passwords: dict[str, str] = {}

    def check(self, credentials: Credentials) -> BaseException | None:
        if self.passwords.get(credentials.username) == credentials.password:
            return None
        return OSError(_REFUSED.format(credentials.username))


# -- processes ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the fleet saw; `World.outcome` fills it."""

    stalls: list[float] = field(default_factory=list)
    failed: int = 0
    recovered: int = 0
    logins: int = 0
    refused_logins: int = 0
    refetches: int = 0
    refetch_joins: int = 0
    refreshes: int = 0
    last_recovery_after_set: float = 0.0


class Process:
    """One worker process: its engine's credentials and its threads.

    Mirrors `CredentialStore`: `current` is what new logins use; `refetch`
    is single-flight per refused credentials (a caller refused with
    credentials other than the current ones gets the current ones at once).
    """

    __slots__ = ("current", "flights", "source", "task", "world")

    def __init__(self, world: World, task: int, source: DirectSource | AgentSource) -> None:
        self.world = world
        self.task = task
        self.source = source
        self.current: Credentials = world.initial
        self.flights: dict[Credentials, list[Callable[[Any], None]]] = {}

    def refetch(self, rejected: Credentials, answer: Callable[[Any], None]) -> None:
        if self.current != rejected:
            answer(self.current)
            return
        waiting = self.flights.get(rejected)
        if waiting is not None:
            self.world.out.refetch_joins += 1
            waiting.append(answer)
            return
        self.flights[rejected] = [answer]
        self.world.out.refetches += 1
        reads = self.world.read_plan(rejected, self.world.config.use_pending)

        def finish(result: Any) -> None:
            if isinstance(result, Credentials):
                self.current = result
            for waiter in self.flights.pop(rejected):
                waiter(result)

        def advance(sent: Any) -> None:
            if isinstance(sent, BaseException):
                # The store's refetch ends at the first read error: it is the flight's answer.
                reads.close()
                finish(sent)
                return
            try:
                request = reads.send(_as_credentials(sent))
            except StopIteration as done:
                finish(done.value)
                return
            self.source.read(request, advance)

        try:
            first = next(reads)
        except StopIteration as done:
            finish(done.value)
            return
        self.source.read(first, advance)

    def confirm(self, credentials: Credentials) -> None:
        """`CredentialStore.confirm`: credentials that logged in become the current ones."""
        self.current = credentials

    def refresh(self) -> None:
        """The periodic refresh: adopt what the cache newly learned."""
        self.world.out.refreshes += 1

        def got(result: Any) -> None:
            if isinstance(result, Version):
                self.current = _as_credentials(result)
                self.world.on_refresh(self)

        self.source.refresh(got)


def _as_credentials(version: Any) -> Any:
    return version.credentials if isinstance(version, Version) else version


# -- the world -----------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    """One simulated fleet and its rotations.

    Attributes:
        tasks, workers, threads: tasks, processes per task, connections per process.
        strategy: "single" or "alternating".
        agent: whether each task reads through one Secrets Manager Agent.
        budget: the retry budget every login uses.
        rotations, rotation_every, window: rotations, seconds between their
            starts, seconds from setSecret to finishSecret.
        settle: seconds after the last rotation before the run ends.
        pool_recycle, think: how often a connection is renewed, a thread's pause
            between requests (a renewal waits for the next checkout).
        get_tps, describe_tps, burst_seconds: the account's quotas, bucket depth.
        sm_latency, login_latency, refused_latency, agent_hop: latencies.
        sdk_attempts, agent_sdk_attempts: attempts per call of each SDK.
        refresh_interval, agent_ttl: the store's refresh TTL, the agent's TTL.
        agent_timeout: `AgentSource`'s timeout.
        use_pending: the store's `use_pending`.
        seed: the random seed.
    """

    tasks: int
    workers: int
    threads: int = 2
    strategy: str = "single"
    agent: bool = False
    budget: RetryBudget = field(default_factory=RetryBudget)
    rotations: int = 1
    rotation_every: float = 30.0
    window: float = 1.0
    settle: float = 30.0
    pool_recycle: float = 0.5
    think: float = 0.1
    get_tps: float = 10_000.0
    describe_tps: float = 40_000.0
    burst_seconds: float = 1.0
    sm_latency: Latency = Latency(0.015, 0.060)
    login_latency: Latency = Latency(0.007, 0.020)
    refused_latency: Latency = Latency(0.0055, 0.015)
    agent_hop: Latency = Latency(0.001, 0.003)
    sdk_attempts: int = 2
    agent_sdk_attempts: int = 3
    refresh_interval: float = 3600.0
    agent_ttl: float = 300.0
    agent_timeout: float = 2.0
    use_pending: bool = True
    seed: int = 1


class World:
    """The fleet, its secret, its database and the rotation schedule."""

    def __init__(self, config: WorldConfig, read_plan: ReadPlan = todays_reads) -> None:
        self.config = config
        self.read_plan = read_plan
        self.rng = random.Random(config.seed)
        self.loop = Loop()
        self.out = Outcome()
        self.sm = SecretsManager(
            self.loop,
            {GET: config.get_tps, DESCRIBE: config.describe_tps},
            config.burst_seconds,
            config.sm_latency.sampler(self.rng),
        )
        self.db = Database()
        self._login = config.login_latency.sampler(self.rng)
        self._refused = config.refused_latency.sampler(self.rng)
        self._versions = itertools.count(1)
        self.set_at: list[float] = []
        if config.strategy not in ("single", "alternating"):
            raise ValueError(f"strategy must be single or alternating, not {config.strategy!r}")
        first = self._new_version("app_a")
        self.sm.add_version(first, AWSCURRENT)
        self.db.passwords["app_a"] = first.credentials.password
        if config.strategy == "alternating":
            # Just after a rotation that the processes have not refreshed since (rotations
            # closer than the refresh interval): AWSCURRENT is app_b's, they hold app_a's
            # (AWSPREVIOUS), which still logs in until the next setSecret changes it.
            newer = self._new_version("app_b")
            self.sm.add_version(newer, AWSPENDING)
            self.sm.move_current(newer.version_id)
            self.db.passwords["app_b"] = newer.credentials.password
        self.initial = first.credentials
        self.agents: list[Agent] = []
        self.processes: list[Process] = []
        hop = config.agent_hop.sampler(self.rng)
        for task in range(config.tasks):
            agent = None
            if config.agent:
                agent = Agent(SdkClient(self.sm, config.agent_sdk_attempts, self.rng), config.agent_ttl)
                agent.cache[(None, None)] = (self.rng.uniform(0, config.agent_ttl), first)
                self.agents.append(agent)
            for _ in range(config.workers):
                source: DirectSource | AgentSource
                if agent is None:
                    source = DirectSource(SdkClient(self.sm, config.sdk_attempts, self.rng))
                    source.cached_version = first.version_id
                else:
                    source = AgentSource(agent, self.loop, hop, config.agent_timeout)
                    source.cached = first.credentials
                process = Process(self, task, source)
                self.processes.append(process)
                self._schedule_refresh(process, first=True)
        self._plan_takes_clock = "clock" in inspect.signature(login_plan).parameters

    # -- the rotation ----------------------------------------------------------

    def _new_version(self, user: str) -> Version:
        number = next(self._versions)
        credentials = Credentials(
            username=user, password=f"{user}-p{number}", version_id=f"v{number}", stage=AWSCURRENT
        )
        return Version(f"v{number}", credentials)

    def _schedule_rotations(self, start: float) -> None:
        for number in range(self.config.rotations):
            self.loop.after(start + number * self.config.rotation_every, self._rotate)

    def _rotate(self) -> None:
        current = self.sm.versions[self.sm.version_of(AWSCURRENT) or ""]
        user = current.credentials.username
        if self.config.strategy == "alternating":
            user = "app_b" if user == "app_a" else "app_a"
        pending = self._new_version(user)
        self.sm.add_version(pending, AWSPENDING)  # createSecret
        # setSecret a little later (createSecret's own calls), finishSecret a window after.
        self.loop.after(0.05, lambda: self._set_password(pending))
        self.loop.after(0.05 + self.config.window, lambda: self.sm.move_current(pending.version_id))

    def _set_password(self, pending: Version) -> None:
        user = pending.credentials.username
        self.db.passwords[user] = pending.credentials.password
        self.set_at.append(self.loop.now)
        for process in self.processes:
            if process.current.username == user:
                self._wake(process)

    def _wake(self, process: Process) -> None:
        """The process's password stopped working: each thread meets it at its next renewal."""
        period = self.config.pool_recycle + self.config.think / 2
        for _ in range(self.config.threads):
            self.loop.after(self.rng.uniform(0, period), lambda: self._request(process))

    def on_refresh(self, process: Process) -> None:
        if self.db.check(process.current) is not None:
            self._wake(process)

    def _schedule_refresh(self, process: Process, *, first: bool = False) -> None:
        ttl = self.config.refresh_interval
        delay = self.rng.uniform(0, ttl) if first else self.rng.uniform(ttl / 2, ttl)

        def refresh() -> None:
            process.refresh()
            self._schedule_refresh(process)

        self.loop.after(delay, refresh)

    # -- one request that needs a new connection ---------------------------------

    def _request(self, process: Process) -> None:
        """One thread's checkout that renews its connection: `connect_with_recovery`."""
        started = self.loop.now
        kwargs: dict[str, Any] = {
            "secret_id": SECRET_ID,
            "budget": self.config.budget,
            "rng": self.rng,
        }
        if self._plan_takes_clock:
            kwargs["clock"] = lambda: self.loop.now
        plan = login_plan(process.current, **kwargs)
        refused = 0

        def send(answer: Any) -> None:
            try:
                step(plan.send(answer))
            except LoginRejectedError:
                self.out.failed += 1
                self.out.stalls.append(self.loop.now - started)

        def step(action: Any) -> None:
            if isinstance(action, Connect):
                login(action.credentials)
            elif isinstance(action, Refetch):
                process.refetch(action.rejected, send)
            else:
                self.loop.after(action.seconds, lambda: send(None))

        def login(credentials: Credentials) -> None:
            self.out.logins += 1
            accepted = self.db.check(credentials) is None
            self.loop.after(
                self._login() if accepted else self._refused(), lambda: answered(credentials)
            )

        def answered(credentials: Credentials) -> None:
            nonlocal refused
            error = self.db.check(credentials)  # the server decides at the end of the handshake
            if error is not None:
                refused += 1
                self.out.refused_logins += 1
                send(error)
                return
            plan.close()
            if refused:
                process.confirm(credentials)
                self.out.recovered += 1
                self.out.stalls.append(self.loop.now - started)
                if self.set_at:
                    self.out.last_recovery_after_set = max(
                        self.out.last_recovery_after_set, self.loop.now - self.set_at[-1]
                    )

        step(next(plan))

    # -- running ------------------------------------------------------------------

    def run(self, quiet: float = 1.0) -> Outcome:
        """Rotate `rotations` times after `quiet` seconds; run until `settle` after the last."""
        self._schedule_rotations(quiet)
        end = quiet + (self.config.rotations - 1) * self.config.rotation_every + self.config.settle
        self.loop.run(end)
        return self.out
