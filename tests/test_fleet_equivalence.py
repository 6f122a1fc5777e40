"""The fleet simulator's world against the real store and sources: one script, the same reads.

One scripted sequence of events (label moves, refused logins, periodic
refreshes, the agent's misses) runs twice: through the real `CredentialStore`
with `SecretsManagerSource` (moto over HTTP) or `AgentSource` (the `LocalAgent`
stand-in over HTTP), and through one process of the simulator's `World`
(`benchmarks.fleet_model`, virtual time). Both must make the same reads in the
same order (Secrets Manager calls on the direct path, agent requests through
the agent), answer each refusal with the same version and hold the same one
after each event. A change to either side alone fails here.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from benchmarks.fleet_model import World, WorldConfig
from benchmarks.fleet_services import Version
from rotating_pool import AgentSource, CredentialStore, SecretsManagerSource
from rotating_pool.core.plan import Refetch
from rotating_pool.secret import AWSCURRENT, AWSPENDING, Credentials
from rotating_pool.testing import LocalAgent
from tests.support import current_document, put_version

WAIT = 20.0
STEP = 5.0  # seconds between events, on both clocks: past the 1 s reuse window, within 60 s

Event = tuple[Any, ...]

# ("pending", label): createSecret (and setSecret); ("finish", label): AWSCURRENT
# moves there; ("refuse", label or None for the one in use, reuse_for): a
# refused login's refetch; ("refresh",): the periodic refresh.
DIRECT: list[Event] = [
    ("refuse", None, 1.0),  # no rotation: DescribeSecret, nothing new
    ("refuse", None, 60.0),  # within the window: no call
    ("pending", "v2"),
    ("refuse", None, 1.0),  # AWSCURRENT not moved: AWSPENDING read by id
    ("finish", "v2"),
    ("refresh",),  # AWSCURRENT is the version held: DescribeSecret only
    ("pending", "v3"),
    ("refuse", None, 1.0),  # credentials read as AWSPENDING refused: GetSecretValue(AWSPENDING)
    ("refuse", "v1", 1.0),  # a caller still on v1 takes the one in use, no call
    ("finish", "v3"),
    ("finish", "v2"),  # AWSCURRENT moved back to a version refused lately
    ("refresh",),  # read from memory, and not adopted
    ("pending", "v4"),
    ("refuse", None, 1.0),  # AWSPENDING refused again: the next AWSPENDING
]
# Not in the script: refusing credentials read as AWSPENDING while both labels
# name versions refused lately; the shipped source then reads AWSPENDING and
# AWSCURRENT in turn without end (tests/test_rules.py, the xfail on it).

AGENT: list[Event] = [
    ("refuse", None, 1.0),  # no rotation: the agent has no AWSPENDING (a miss, 404)
    ("pending", "v2"),
    ("refuse", None, 1.0),  # the 404 was not cached: the agent reads AWSPENDING
    ("finish", "v2"),
    ("refresh",),  # the agent's cached AWSCURRENT is still the refused v1
    ("pending", "v3"),
    ("refuse", None, 1.0),  # cached AWSPENDING is the refused v2: refreshNow
    ("refuse", None, 60.0),  # v3 refused too: every ask, nothing new
    ("refuse", None, 60.0),  # within the window: no request
    ("finish", "v3"),
    ("refuse", "v2", 1.0),  # a caller still on v2 takes the one in use
]


class RealSide:
    """The shipped store and source against moto (directly or through the agent stand-in)."""

    def __init__(self, secretsmanager: Any, arn: str, agent: LocalAgent | None) -> None:
        self.rotation = secretsmanager.client()
        self.arn = arn
        self.now = 0.0
        self.reads: list[tuple[Any, ...]] = []
        self.labels: dict[str | None, str] = {}
        self.agent = agent
        source: Any
        if agent is None:
            reader = secretsmanager.client()
            reader.meta.events.register("provide-client-params.secrets-manager.*", self._record)
            source = SecretsManagerSource(arn, client=reader)
        else:
            source = AgentSource(
                arn, endpoint=agent.endpoint_url, token=agent.token, lock_dir=False
            )
        self.store = CredentialStore(source, refresh_interval=1, clock=lambda: self.now)
        first = self.store.current(WAIT)
        self.labels[first.version_id] = "v1"
        self.ids = {"v1": first.version_id}
        self.seen: dict[str, Credentials] = {"v1": first}
        self.in_use = first
        self.store.subscribe(self._changed)
        self.document = current_document(self.rotation, arn)
        self.reads.clear()
        if agent is not None:
            agent.reset_counts()

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        version = params.get("VersionId")
        if version is None and params.get("VersionStage"):
            self.reads.append((model.name, f"stage:{params['VersionStage']}"))
        else:
            self.reads.append((model.name, self.labels.get(version, version)))

    def _changed(self, _previous: Credentials | None, new: Credentials) -> None:
        self.in_use = new

    def label(self, credentials: Any) -> str | None:
        if not isinstance(credentials, Credentials):
            return None
        label = self.labels[credentials.version_id]
        self.seen.setdefault(label, credentials)
        return label

    def pending(self, label: str) -> None:
        document = {**self.document, "password": f"pw-{label}"}
        version_id = put_version(self.rotation, self.arn, document, AWSPENDING)
        self.labels[version_id], self.ids[label] = label, version_id

    def finish(self, label: str) -> None:
        stages = self.rotation.describe_secret(SecretId=self.arn)["VersionIdsToStages"]
        old = next(v for v, s in stages.items() if AWSCURRENT in s)
        self.rotation.update_secret_version_stage(
            SecretId=self.arn,
            VersionStage=AWSCURRENT,
            MoveToVersionId=self.ids[label],
            RemoveFromVersionId=old,
        )
        if AWSPENDING in stages.get(self.ids[label], ()):
            self.rotation.update_secret_version_stage(
                SecretId=self.arn, VersionStage=AWSPENDING, RemoveFromVersionId=self.ids[label]
            )

    def refuse(self, label: str | None, reuse_for: float) -> str | None:
        rejected = self.in_use if label is None else self.seen[label]
        return self.label(self.store.refetch(rejected, WAIT, reuse_for))

    def refresh(self) -> None:
        done = self.store.stats().background_refreshes + self.store.stats().failed_refreshes
        self.store.refresh_if_due()
        deadline = time.monotonic() + WAIT
        while self.store.stats().background_refreshes + self.store.stats().failed_refreshes == done:
            assert time.monotonic() < deadline, "the refresh did not finish"
            time.sleep(0.005)  # the refresh thread signals nothing but its counter

    def step(self) -> None:
        self.now += STEP

    def journal(self) -> list[tuple[Any, ...]]:
        if self.agent is None:
            return list(self.reads)
        return [(r.version_stage, r.refresh_now) for r in self.agent.history]


class SimSide:
    """One process of the simulator's world, driven by the same script."""

    def __init__(self, agent: bool) -> None:
        config = WorldConfig(
            tasks=1, workers=1, agent=agent, refresh_interval=1e9, agent_ttl=1e9, seed=7
        )
        self.world = world = World(config)
        # No logins of its own: the script drives every event.
        world.on_refresh = lambda process: None  # type: ignore[method-assign]
        self.process = world.processes[0]
        self.seen: dict[str, Credentials] = {"v1": world.initial}
        world.sm.journal = []
        self.agent = getattr(self.process.source, "agent", None)
        if self.agent is not None:
            # The first read filled the agent's cache just now, as on the real side.
            self.agent.cache[(None, None)] = (1e18, world.sm.versions["v1"])
            self.agent.journal = []

    def label(self, credentials: Any) -> str | None:
        if not isinstance(credentials, Credentials):
            return None
        self.seen.setdefault(str(credentials.version_id), credentials)
        return credentials.version_id

    def pending(self, label: str) -> None:
        self.world.sm.add_pending(
            Version(label, Credentials("app_a", f"pw-{label}", version_id=label))
        )

    def finish(self, label: str) -> None:
        self.world.sm.finish(label)

    def refuse(self, label: str | None, reuse_for: float) -> str | None:
        rejected = self.process.current if label is None else self.seen[label]
        answers: list[Any] = []
        self.process.refetch(Refetch(rejected, WAIT, reuse_for), answers.append)
        self.world.loop.run(self.world.loop.now + STEP / 2)
        assert answers, "the simulated refetch did not answer"
        return self.label(answers[0])

    def refresh(self) -> None:
        self.process.refresh()
        self.world.loop.run(self.world.loop.now + STEP / 2)

    @property
    def in_use(self) -> Credentials:
        return self.process.current

    def step(self) -> None:
        self.world.loop.run(self.world.loop.now + STEP / 2)

    def journal(self) -> list[tuple[Any, ...]]:
        if self.agent is not None:
            return list(self.agent.journal or [])
        out = []
        for operation, argument in self.world.sm.journal or []:
            if argument is None or argument.startswith("id:"):
                out.append((operation, argument and argument[3:]))
            else:
                out.append((operation, f"stage:{argument}"))
        return out


def run(side: RealSide | SimSide, script: list[Event]) -> list[tuple[Any, ...]]:
    """Play `script`; per event: (the event, its answer, the reads it made, the version in use)."""
    trace = []
    for event in script:
        before = len(side.journal())
        answer = None
        if event[0] == "refuse":
            answer = side.refuse(event[1], event[2])
        elif event[0] == "refresh":
            side.refresh()
        else:
            getattr(side, event[0])(event[1])
        side.step()
        reads = side.journal()[before:]
        held = side.in_use.version_id
        held_label = side.labels.get(held, held) if isinstance(side, RealSide) else held
        trace.append((event, answer, reads, held_label))
    return trace


@pytest.fixture
def agent(secretsmanager: Any) -> Any:
    with LocalAgent(secretsmanager.client(), port=0) as local_agent:
        yield local_agent


@pytest.mark.parametrize("path", ["direct", "agent"])
def test_the_simulator_makes_the_reads_the_shipped_store_and_source_make(
    secretsmanager, make_secret, request, path
):
    script = DIRECT if path == "direct" else AGENT
    local_agent = request.getfixturevalue("agent") if path == "agent" else None
    real = run(RealSide(secretsmanager, make_secret("single"), local_agent), script)
    simulated = run(SimSide(agent=path == "agent"), script)
    for number, (mine, theirs) in enumerate(zip(real, simulated, strict=True)):
        assert mine == theirs, f"event {number}: real {mine} != simulated {theirs}"
    # The script is not empty of reads: each side read, refused and recovered.
    assert sum(len(reads) for _, _, reads, _ in real) >= 6
    assert {answer for _, answer, _, _ in real} >= {None, "v2", "v3"}
