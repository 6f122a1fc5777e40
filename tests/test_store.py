"""CredentialStore with a fake source: single-flight, refresh, stale values."""

from __future__ import annotations

import threading

from rotating_pool import CredentialStore, SecretsManagerUnavailableError
from rotating_pool.secret import AWSCURRENT, AWSPENDING, Credentials

A1 = Credentials("app_a", "pw-1", version_id="v1")
B2 = Credentials("app_b", "pw-2", version_id="v2")
A3 = Credentials("app_a", "pw-3", version_id="v3", stage=AWSPENDING)


class FakeSource:
    """A secret in memory; `gate` (when set) holds every fetch until opened."""

    secret_id = "db"

    def __init__(self) -> None:
        self.stages: dict[str, Credentials] = {AWSCURRENT: A1}
        self.cached: Credentials | BaseException = A1
        self.fetches: list[str] = []
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()

    def fetch(self, stage: str) -> Credentials | None:
        with self.lock:
            self.fetches.append(stage)
        if self.gate is not None:
            self.gate.wait(10)
        return self.stages.get(stage)

    def load(self) -> Credentials:
        current = self.fetch(AWSCURRENT)
        assert current is not None
        return current

    def read_cached(self) -> Credentials:
        if isinstance(self.cached, BaseException):
            raise self.cached
        return self.cached

    def after_fork(self) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def store_with(source: FakeSource, **kwargs) -> CredentialStore:
    return CredentialStore(source, **kwargs)


def test_nothing_is_fetched_until_first_use_then_once():
    source = FakeSource()
    store = store_with(source)
    assert source.fetches == []
    assert store.current() == A1
    assert store.current() == A1
    assert source.fetches == [AWSCURRENT]


def test_a_moved_awscurrent_is_returned_and_becomes_current():
    source = FakeSource()
    store = store_with(source)
    store.current()
    source.stages[AWSCURRENT] = B2
    assert store.refetch(A1) == B2
    assert store.current() == B2
    assert source.fetches == [AWSCURRENT, AWSCURRENT]


def test_awspending_is_offered_when_awscurrent_has_not_moved():
    source = FakeSource()
    source.stages[AWSPENDING] = A3
    store = store_with(source)
    store.current()
    assert store.refetch(A1) == A3
    assert source.fetches == [AWSCURRENT, AWSCURRENT, AWSPENDING]


def test_awspending_is_not_offered_when_switched_off():
    source = FakeSource()
    source.stages[AWSPENDING] = A3
    store = store_with(source, use_pending=False)
    store.current()
    assert store.refetch(A1) is None


def test_a_caller_refused_with_superseded_credentials_gets_the_new_ones_without_a_fetch():
    source = FakeSource()
    store = store_with(source)
    store.current()
    source.stages[AWSCURRENT] = B2
    store.refetch(A1)
    fetched = len(source.fetches)
    assert store.refetch(A1) == B2
    assert len(source.fetches) == fetched


def test_concurrent_refusals_share_one_fetch():
    source = FakeSource()
    store = store_with(source)
    store.current()
    source.stages[AWSCURRENT] = B2
    source.gate = threading.Event()
    answers: list[object] = []
    threads = [
        threading.Thread(target=lambda: answers.append(store.refetch(A1))) for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    # The leader is inside fetch; wait until the other 15 have joined its flight.
    joined = threading.Event()
    while not joined.wait(0.01):
        if store.stats().refetch_joins == 15:
            joined.set()
    source.gate.set()
    for thread in threads:
        thread.join(10)
    assert answers == [B2] * 16
    assert source.fetches == [AWSCURRENT, AWSCURRENT]
    assert (store.stats().refetches, store.stats().refetch_joins) == (1, 15)


def test_a_fetch_error_is_an_answer_shared_by_every_waiter():
    source = FakeSource()
    store = store_with(source)
    store.current()
    down = SecretsManagerUnavailableError("down", secret_id="db")

    def failing_fetch(stage: str) -> Credentials | None:
        raise down

    source.fetch = failing_fetch  # type: ignore[method-assign]
    assert store.refetch(A1) is down
    assert store.current() == A1  # the last good credentials stay in use


def test_a_due_refresh_runs_in_the_background_and_adopts_what_the_cache_learned():
    source = FakeSource()
    clock = FakeClock()
    store = store_with(source, refresh_interval=100, clock=clock)
    store.current()
    source.cached = B2
    clock.now = 30  # past the poll interval (a quarter of the TTL)
    assert store.current() == A1  # the caller does not wait for the refresh
    deadline = threading.Event()
    while store.stats().background_refreshes == 0 and not deadline.wait(0.01):
        pass
    assert store.current() == B2


def test_the_cache_remembering_an_older_value_does_not_undo_a_recovery():
    source = FakeSource()
    clock = FakeClock()
    store = store_with(source, refresh_interval=100, clock=clock)
    store.current()
    clock.now = 30
    store.current()  # first refresh: the cache says A1
    waiter = threading.Event()
    while store.stats().background_refreshes < 1 and not waiter.wait(0.01):
        pass
    source.stages[AWSCURRENT] = B2
    assert store.refetch(A1) == B2  # a recovery moved on; the cache still says A1
    clock.now = 60
    store.current()
    while store.stats().background_refreshes < 2 and not waiter.wait(0.01):
        pass
    assert store.current() == B2


def test_a_failed_refresh_keeps_the_credentials_in_use():
    source = FakeSource()
    clock = FakeClock()
    store = store_with(source, refresh_interval=100, clock=clock)
    store.current()
    source.cached = SecretsManagerUnavailableError("down", secret_id="db")
    clock.now = 30
    assert store.current() == A1
    assert store.current() == A1


def test_repr_shows_no_password():
    source = FakeSource()
    store = store_with(source)
    store.current()
    assert "pw-1" not in repr(store)
