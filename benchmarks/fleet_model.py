"""The fleet simulator's application side: processes, their credential stores and logins.

Each simulated process holds its credentials as `rotating_pool.store.CredentialStore`
does: a single-flight refetch per refused credentials, and every rule about
refusals taken from the core's own `rotating_pool.core.ledger.Ledger` (which
versions were refused, when "nothing new" is the answer, when another caller's
recovery or the periodic refresh is adopted). What it reads is decided by the
core's read order (`rotating_pool.reads.recovery_reads`, `steady_read` on
`VersionMemo`; `next_agent_ask` and `AGENT_LOAD` through the agent), and each
of its threads logs in by driving the core's `login_plan` with a real
`RetryBudget` and the virtual clock; the plan's `Success` says whether to
confirm. Only the I/O is modelled (`benchmarks.fleet_services`): the virtual
clock, Secrets Manager, the agent and the database. `tests/test_fleet_equivalence.py`
runs one script of events through this model and through the real store and
sources, and requires the same reads in the same order.

Threads are simulated only when they matter: while a process's credentials
are accepted, a pooled connection renewed by ``pool_recycle`` logs in without
trouble, so a thread costs no event until the password it would use stops
working. Then its next renewal (uniform over one recycle period: pooled
connections have every age) is simulated, with every refusal, refetch and
backoff wait, until it is connected again.
"""

from __future__ import annotations

import collections
import functools
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.fleet_services import (
    DESCRIBE,
    GET,
    SECRET_ID,
    Agent,
    Database,
    Latency,
    Loop,
    Reply,
    SdkClient,
    SecretsManager,
    Version,
)
from rotating_pool.core.ledger import Ledger
from rotating_pool.core.plan import (
    Connect,
    Recheck,
    Refetch,
    RetryBudget,
    Success,
    Wait,
    login_plan,
)
from rotating_pool.core.reads import Route, next_stage, recovery_route
from rotating_pool.errors import LoginRejectedError, SecretsManagerUnavailableError
from rotating_pool.reads import (
    AGENT_LOAD,
    AgentAsk,
    Labels,
    Read,
    next_agent_ask,
    recovery_reads,
    steady_read,
)
from rotating_pool.secret import AWSCURRENT, AWSPENDING, Credentials
from rotating_pool.sources import DEFAULT_CLIENT_CONFIG, VersionMemo

__all__ = ["Outcome", "World", "WorldConfig"]

# Assumed latencies (median, p99) for the sweep: a Secrets Manager call in the
# same region, a TLS-less SCRAM login and a refused one (as measured on the local
# bed, about 7 ms and 5.5 ms), a request to the agent on localhost.
SECRETS_MANAGER_LATENCY = Latency(0.015, 0.060)
LOGIN_LATENCY = Latency(0.007, 0.020)
REFUSED_LOGIN_LATENCY = Latency(0.0055, 0.015)
AGENT_HOP_LATENCY = Latency(0.001, 0.003)
# Attempts per call of rotating_pool's default botocore client, read from it.
SDK_ATTEMPTS: int = DEFAULT_CLIENT_CONFIG.retries["total_max_attempts"]  # type: ignore[attr-defined]


def _credentials(result: Any, stage: str) -> Any:
    """A `Version` answer as the credentials a source returns, labelled `stage`."""
    if isinstance(result, Version):
        credentials = result.credentials
        if credentials.stage != stage:
            return Credentials(
                credentials.username,
                credentials.password,
                version_id=credentials.version_id,
                stage=stage,
            )
        return credentials
    return result


class DirectSource:
    """`rotating_pool.sources.SecretsManagerSource` over the model: one SDK client
    per process, a `VersionMemo` of the versions it read, the stage its last
    recovery found (for the core's `recovery_route`)."""

    def __init__(self, client: SdkClient) -> None:
        self.client = client
        self.memo = VersionMemo()
        self.last_found: str | None = None

    def _labels_then(self, purpose: str, then: Callable[[Labels], None], answer: Reply) -> None:
        def described(stages: Any) -> None:
            if isinstance(stages, BaseException):
                answer(stages)
                return
            labels = Labels.from_stages(stages)
            assert labels is not None  # the model always has an AWSCURRENT
            then(labels)

        self.client.call(DESCRIBE, None, described, purpose)

    def _read(self, read: Read, answer: Reply, purpose: str) -> None:
        known = self.memo.get(read.version_id, read.stage)
        if known is not None:
            answer(known)
            return

        def got(result: Any) -> None:
            if isinstance(result, Version):
                result = self.memo.add(_credentials(result, read.stage))
            answer(result)

        self.client.call(GET, f"id:{read.version_id}", got, purpose)

    def newer(
        self,
        rejected: Credentials,
        refused: tuple[str | None, ...],
        use_pending: bool,
        answer: Reply,
    ) -> None:
        """`SecretsManagerSource.newer`: the first read the core's `recovery_route`
        names (DescribeSecret, or GetSecretValue of a stage), then what it leaves open."""

        def found(result: Any) -> None:
            if isinstance(result, Credentials):
                self.last_found = result.stage
            answer(result)

        route = recovery_route(
            rejected.stage,
            self.last_found,
            use_pending=use_pending,
            read_other=self.memo.holds_other_than(refused, rejected),
        )
        if route is Route.LABELS:
            self._newer_by_labels(rejected, refused, use_pending, found)
        else:
            first = AWSCURRENT if route is Route.CURRENT else AWSPENDING
            self._newer_by_stage(first, rejected, refused, use_pending, found, ())

    def _newer_by_labels(
        self,
        rejected: Credentials,
        refused: tuple[str | None, ...],
        use_pending: bool,
        answer: Reply,
    ) -> None:
        def then(labels: Labels) -> None:
            reads = iter(recovery_reads(labels, refused, use_pending=use_pending))

            def next_read(_previous: Any = None) -> None:
                read = next(reads, None)
                if read is None:
                    answer(None)
                    return

                def got(result: Any) -> None:
                    if isinstance(result, BaseException) or result != rejected:
                        answer(result)
                    else:
                        next_read()

                self._read(read, got, "recovery")

            next_read()

        self._labels_then("recovery", then, answer)

    def _newer_by_stage(
        self,
        stage: str | None,
        rejected: Credentials,
        refused: tuple[str | None, ...],
        use_pending: bool,
        answer: Reply,
        already_read: tuple[str, ...],
    ) -> None:
        if stage is None:
            answer(None)
            return
        read = (*already_read, stage)

        def got(result: Any) -> None:
            if isinstance(result, BaseException):
                answer(result)
                return
            credentials: Credentials | None = None
            stages: tuple[str, ...] = ()
            if isinstance(result, Version):
                credentials = self.memo.add(_credentials(result, stage))
                # The answer's VersionStages, as the model holds them when it leaves.
                stages = tuple(self.client.service.stages.get(result.version_id, ()))
            if (
                credentials is not None
                and credentials.version_id not in refused
                and credentials != rejected
            ):
                answer(credentials)
            else:
                following = next_stage(
                    stage, stages, use_pending=use_pending, already_read=read
                )
                self._newer_by_stage(following, rejected, refused, use_pending, answer, read)

        self.client.call(GET, stage, got, "recovery")

    def poll(self, held: Credentials, answer: Reply) -> None:
        """`SecretsManagerSource.poll`: DescribeSecret, a read if AWSCURRENT moved."""

        def then(labels: Labels) -> None:
            read = steady_read(labels, held.version_id)
            if read is None:
                answer(None)
            else:
                self._read(read, answer, "refresh")

        self._labels_then("refresh", then, answer)


class Turns:
    """The lock file the processes behind one agent take turns on
    (`rotating_pool.agent`, ``AgentSource._turn``): first come, first served.
    Handing over is immediate here; the real lock is polled every 2 to 20 ms."""

    def __init__(self) -> None:
        self.busy = False
        self.waiting: collections.deque[Callable[[], None]] = collections.deque()

    def take(self, then: Callable[[], None]) -> None:
        """Call `then` once the turn is this caller's."""
        if self.busy:
            self.waiting.append(then)
        else:
            self.busy = True
            then()

    def give_back(self) -> None:
        """End the turn; the next waiter's begins."""
        if self.waiting:
            self.waiting.popleft()()
        else:
            self.busy = False


class AgentSource:
    """`rotating_pool.AgentSource` over the model: reads through the task's agent
    (one localhost hop each way), within its timeout; the processes of a task
    take turns for a refused login's reads and for a refresh."""

    def __init__(
        self, agent: Agent, turns: Turns, loop: Loop, hop: Callable[[], float], timeout: float
    ) -> None:
        self.agent, self.turns, self.loop, self.hop, self.timeout = agent, turns, loop, hop, timeout

    def _in_turn(self, read: Callable[[Reply], None], answer: Reply) -> None:
        def finish(result: Any) -> None:
            self.turns.give_back()
            answer(result)

        self.turns.take(lambda: read(finish))

    def fetch(self, stage: str, refresh: bool, answer: Reply) -> None:
        """`AgentSource.fetch`: AWSCURRENT is asked without ``versionStage``."""
        settled = False

        def reply(result: Any) -> None:
            nonlocal settled
            if not settled:
                settled = True
                self.loop.after(self.hop(), lambda: answer(_credentials(result, stage)))

        def timed_out() -> None:
            if not settled:
                reply(SecretsManagerUnavailableError("agent timed out", secret_id=SECRET_ID))

        query_stage = None if stage == AWSCURRENT else stage
        self.loop.after(self.timeout, timed_out)
        self.loop.after(self.hop(), lambda: self.agent.get(None, query_stage, refresh, reply))

    def newer(
        self,
        rejected: Credentials,
        refused: tuple[str | None, ...],
        use_pending: bool,
        answer: Reply,
    ) -> None:
        """`AgentSource.newer`: the asks `next_agent_ask` orders, in one turn."""
        asked: list[AgentAsk] = []
        missing: set[str] = set()

        def read(done: Reply) -> None:
            def next_ask() -> None:
                ask = next_agent_ask(asked, missing, use_pending=use_pending)
                if ask is None:
                    done(None)
                    return
                asked.append(ask)

                def got(result: Any) -> None:
                    if isinstance(result, BaseException):
                        done(result)
                    elif result is None:
                        missing.add(ask.stage)  # the agent caches no error: not asked again
                        next_ask()
                    elif result != rejected and result.version_id not in refused:
                        done(result)
                    else:
                        next_ask()

                self.fetch(ask.stage, ask.refresh, got)

            next_ask()

        self._in_turn(read, answer)

    def poll(self, held: Credentials, answer: Reply) -> None:
        """`AgentSource.poll`: the agent's cached AWSCURRENT, if not `held`."""
        self._in_turn(
            lambda done: self.fetch(AGENT_LOAD.stage, AGENT_LOAD.refresh, done),
            lambda result: answer(None if result == held else result),
        )


@dataclass
class Outcome:
    """What the fleet saw."""

    stalls: list[float] = field(default_factory=list)
    failed: int = 0
    recovered: int = 0
    logins: int = 0
    refused_logins: int = 0
    refetches: int = 0
    refetch_joins: int = 0
    refetch_reuses: int = 0
    last_recovery_after_set: float = 0.0


class Process:
    """One worker process's `CredentialStore` (see the module docstring)."""

    __slots__ = ("changed_at", "current", "flights", "ledger", "source", "world")

    def __init__(self, world: World, source: DirectSource | AgentSource) -> None:
        self.world = world
        self.source = source
        self.current: Credentials = world.initial
        # When the credentials in use replaced others (`CredentialStore.changed_ago`).
        self.changed_at: float | None = None
        self.flights: dict[Credentials, list[Reply]] = {}
        self.ledger = Ledger()

    def refetch(self, action: Refetch, answer: Reply) -> None:
        """`CredentialStore.join_refetch` and waiting for it, at most `action.timeout`."""
        rejected, loop, out = action.rejected, self.world.loop, self.world.out
        adopted = self.ledger.adopt_instead_of(self.current, rejected)
        if adopted is not None:
            answer(adopted)  # another caller recovered already
            return
        waiting = self.flights.get(rejected)
        if waiting is None:
            if self.ledger.reuses_nothing_new(rejected, loop.now, action.reuse_for):
                out.refetch_reuses += 1
                answer(None)
                return
            self.ledger = self.ledger.refusing(rejected)
            waiting = self.flights[rejected] = []
            out.refetches += 1
            self.source.newer(
                rejected,
                self.ledger.refused,
                self.world.config.use_pending,
                lambda result: self._finish(rejected, result),
            )
        else:
            out.refetch_joins += 1
        settled = False

        def reply(result: Any) -> None:
            nonlocal settled
            if not settled:
                settled = True
                answer(result)

        waiting.append(reply)
        loop.after(
            action.timeout,
            lambda: reply(SecretsManagerUnavailableError("no answer in time", secret_id=SECRET_ID)),
        )

    def _finish(self, rejected: Credentials, result: Any) -> None:
        self.ledger = self.ledger.answered(rejected, result, self.world.loop.now)
        if isinstance(result, Credentials):
            self._use(result)
        for waiter in self.flights.pop(rejected):
            waiter(result)

    def confirm(self, credentials: Credentials) -> None:
        """`CredentialStore.confirm`: credentials that logged in become the current ones."""
        self._use(credentials)

    def _use(self, credentials: Credentials) -> None:
        if credentials != self.current:
            self.current = credentials
            self.changed_at = self.world.loop.now

    def changed_ago(self) -> float | None:
        """`CredentialStore.changed_ago`."""
        return None if self.changed_at is None else self.world.loop.now - self.changed_at

    def refresh(self) -> None:
        """`CredentialStore._refresh`: adopt a new AWSCURRENT as the ledger allows."""
        held = self.current

        def got(newer: Any) -> None:
            if isinstance(newer, Credentials) and self.ledger.refresh_may_adopt(
                newer, self.current, held
            ):
                self._use(newer)
                self.world.on_refresh(self)

        self.source.poll(held, got)


@dataclass(frozen=True)
class WorldConfig:
    """One simulated fleet and its rotations.

    Attributes:
        tasks, workers, threads: tasks, processes per task, connections per process.
        strategy: "single" or "alternating". Alternating starts just after a
            rotation the processes have not refreshed since (rotations closer
            than the refresh interval): they hold AWSPREVIOUS, which the next
            setSecret changes, so every process is refused.
        agent: whether each task reads through one Secrets Manager Agent.
        budget: the retry budget of every login.
        rotations, rotation_every, window: rotations, seconds between their
            starts, seconds from setSecret to finishSecret.
        settle: seconds after the last rotation before the run ends.
        pool_recycle, think: how often a connection is renewed; a thread's pause
            between requests (a renewal happens at the next checkout).
        get_tps, describe_tps, burst_seconds: the account's quotas, bucket depth.
        combined_quota: one bucket at `get_tps` for both APIs (the quotas page's
            wording of a "combined rate") instead of one per API (AWS's announcement).
        sm_latency, login_latency, refused_latency, agent_hop: latencies.
        sdk_attempts, agent_sdk_attempts: attempts per call of each SDK.
        refresh_interval, agent_ttl, agent_timeout: the store's refresh
            interval, the agent's TTL, `AgentSource`'s timeout.
        use_pending: the store's `use_pending`.
        unlisted_share, unlisted_for: a pooler in front of the database whose
            refusal wording no list holds (``ERROR``, no SQLSTATE) refuses this
            share of the logins with a password changed less than
            `unlisted_for` seconds ago, though the database accepts them (its
            server connections from before the change), as
            `rotating_pool.testing.UnlistedRefusalPooler` does.
        permanent_refusal: every login is refused with an error no list holds
            (a missing CONNECT privilege): the plan's bound for unrecognised
            refusals, not the whole deadline, ends each request.
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
    combined_quota: bool = False
    sm_latency: Latency = SECRETS_MANAGER_LATENCY
    login_latency: Latency = LOGIN_LATENCY
    refused_latency: Latency = REFUSED_LOGIN_LATENCY
    agent_hop: Latency = AGENT_HOP_LATENCY
    sdk_attempts: int = field(default_factory=lambda: SDK_ATTEMPTS)
    agent_sdk_attempts: int = 3
    refresh_interval: float = 3600.0
    agent_ttl: float = 300.0
    agent_timeout: float = 2.0
    use_pending: bool = True
    unlisted_share: float = 0.0
    unlisted_for: float = 4.0
    permanent_refusal: bool = False
    seed: int = 1


class World:
    """The fleet, its secret, its database and the rotation schedule."""

    def __init__(self, config: WorldConfig) -> None:
        if config.strategy not in ("single", "alternating"):
            raise ValueError(f"strategy must be single or alternating, not {config.strategy!r}")
        self.config = config
        self.rng = random.Random(config.seed)
        self.loop = Loop()
        self.out = Outcome()
        self.sm = SecretsManager(
            self.loop,
            {GET: config.get_tps, DESCRIBE: config.describe_tps},
            config.burst_seconds,
            config.sm_latency.sampler(self.rng),
            combined=config.combined_quota,
        )
        self.db = Database()
        self.changed_at: dict[str, float] = {}  # user -> when setSecret changed its password
        self._login = config.login_latency.sampler(self.rng)
        self._refused = config.refused_latency.sampler(self.rng)
        self._numbers = itertools.count(1)
        self.set_at: list[float] = []
        first = newest = self._new_version("app_a")
        self._install(first)
        if config.strategy == "alternating":
            newest = self._new_version("app_b")
            self._install(newest)
        self.initial = first.credentials
        self.processes: list[Process] = []
        hop = config.agent_hop.sampler(self.rng)
        for _task in range(config.tasks):
            agent = None
            turns = Turns()
            if config.agent:
                agent = Agent(
                    SdkClient(self.sm, config.agent_sdk_attempts, self.rng), config.agent_ttl
                )
                # Its AWSCURRENT entry, read at some time in the last TTL (its TTL is far
                # shorter than the processes' refresh interval: it knows the newest).
                agent.cache[(None, None)] = (self.rng.uniform(0, config.agent_ttl), newest)
            for _worker in range(config.workers):
                source: DirectSource | AgentSource
                if agent is None:
                    source = DirectSource(SdkClient(self.sm, config.sdk_attempts, self.rng))
                    source.memo.add(first.credentials)
                else:
                    source = AgentSource(agent, turns, self.loop, hop, config.agent_timeout)
                process = Process(self, source)
                self.processes.append(process)
                self._schedule_refresh(process, self.rng.uniform(0, config.refresh_interval))

    # -- the rotation --------------------------------------------------------------

    def _new_version(self, user: str) -> Version:
        number = next(self._numbers)
        credentials = Credentials(user, f"{user}-p{number}", version_id=f"v{number}")
        return Version(f"v{number}", credentials)

    def _install(self, version: Version) -> None:
        """A whole rotation before the run: the version is AWSCURRENT and its password set."""
        self.sm.add_pending(version)
        self.sm.finish(version.version_id)
        self.db.passwords[version.credentials.username] = version.credentials.password

    def _rotate(self) -> None:
        user = self.sm.versions[self.sm.version_of(AWSCURRENT) or ""].credentials.username
        if self.config.strategy == "alternating":
            user = "app_b" if user == "app_a" else "app_a"
        pending = self._new_version(user)
        self.sm.add_pending(pending)  # createSecret
        # setSecret shortly after (createSecret's own calls), finishSecret a window later.
        self.loop.after(0.05, lambda: self._set_password(pending))
        self.loop.after(0.05 + self.config.window, lambda: self.sm.finish(pending.version_id))

    def _set_password(self, pending: Version) -> None:
        user = pending.credentials.username
        self.db.passwords[user] = pending.credentials.password
        self.changed_at[user] = self.loop.now
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
        """A refresh changed the process's credentials: wake it if they do not work."""
        if not self.db.accepts(process.current):
            self._wake(process)

    def _schedule_refresh(self, process: Process, delay: float) -> None:
        interval = self.config.refresh_interval

        def refresh() -> None:
            process.refresh()
            self._schedule_refresh(process, self.rng.uniform(interval / 2, interval))

        self.loop.after(delay, refresh)

    # -- one checkout that renews its connection --------------------------------------

    def _request(self, process: Process) -> None:
        """`rotating_pool.engine.connect_with_recovery`, in virtual time."""
        loop, out = self.loop, self.out
        started = loop.now
        plan = login_plan(
            process.current,
            secret_id=SECRET_ID,
            budget=self.config.budget,
            rng=self.rng,
            clock=lambda: loop.now,
            changed_ago=process.changed_ago(),
        )

        def send(answer: Any) -> None:
            try:
                action = plan.send(answer)
            except StopIteration as stop:  # logged in: the plan says what follows
                succeeded(stop.value)
                return
            except (LoginRejectedError, OSError):  # given up, or the driver's error raised
                out.failed += 1
                out.stalls.append(loop.now - started)
                return
            step(action)

        def succeeded(success: Success) -> None:
            if success.confirm:
                process.confirm(success.credentials)
            if success.refusals:
                out.recovered += 1
                out.stalls.append(loop.now - started)
                out.last_recovery_after_set = max(
                    out.last_recovery_after_set, loop.now - self.set_at[-1]
                )

        def step(action: Any) -> None:
            if isinstance(action, Connect):
                login(action.credentials)
            elif isinstance(action, Refetch):
                process.refetch(action, send)
            elif isinstance(action, Recheck):
                send(process.ledger.adopt_instead_of(process.current, action.rejected))
            else:
                assert isinstance(action, Wait)  # the process has loaded: no Load
                loop.after(action.seconds, lambda: send(None))

        def login(credentials: Credentials) -> None:
            out.logins += 1
            accepted = self.db.accepts(credentials)
            loop.after(self._login() if accepted else self._refused(), lambda: ended(credentials))

        def ended(credentials: Credentials) -> None:
            refusal = self._refusal(credentials)  # decided at the handshake's end
            if refusal is not None:
                out.refused_logins += 1
                send(refusal)
                return
            send(None)

        step(next(plan))

    def _refusal(self, credentials: Credentials) -> BaseException | None:
        """What a login with `credentials` meets now: None when it is let in."""
        if not self.db.accepts(credentials):
            return self.db.refusal(credentials)
        config = self.config
        if config.permanent_refusal:
            return OSError(f'FATAL:  permission denied for database "app" ({credentials.username})')
        changed = self.changed_at.get(credentials.username)
        if (
            config.unlisted_share
            and changed is not None
            and self.loop.now - changed < config.unlisted_for
            and self.rng.random() < config.unlisted_share
        ):
            return OSError("ERROR:  backend handshake not settled, try again later")
        return None

    # -- running -------------------------------------------------------------------------

    def run(self, quiet: float = 1.0) -> Outcome:
        """Rotate `rotations` times from `quiet` seconds on; stop `settle` after the last."""
        every = self.config.rotation_every
        if self.config.permanent_refusal:
            # No rotation: every process's connections renew into the refusal.
            for process in self.processes:
                self.loop.after(quiet, functools.partial(self._wake, process))
            self.set_at.append(quiet)
            self.loop.run(quiet + self.config.settle)
            return self.out
        for number in range(self.config.rotations):
            self.loop.after(quiet + number * every, self._rotate)
        self.loop.run(quiet + (self.config.rotations - 1) * every + self.config.settle)
        return self.out
