"""CredentialStore with a fake source: single-flight reads, deadlines, refresh, stale values."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

import rotating_pool.core.classify as classify
from rotating_pool import CredentialStore, RetryBudget, SecretsManagerUnavailableError
from rotating_pool.connect import login, login_async
from rotating_pool.core.ledger import REFUSED_VERSIONS_KEPT, Ledger
from rotating_pool.errors import RotatingPoolError
from rotating_pool.secret import AWSPENDING, Credentials
from rotating_pool.sources import VersionMemo

A1 = Credentials("app_a", "pw-1", version_id="v1")
B2 = Credentials("app_b", "pw-2", version_id="v2")
A3 = Credentials("app_a", "pw-3", version_id="v3", stage=AWSPENDING)
WAIT = 10.0  # the longest any test waits for an event that must come


class FakeSource:
    """A secret in memory. `gate`, when set, holds every read until opened."""

    secret_id = "db"

    def __init__(self) -> None:
        self.current = A1
        self.pending: Credentials | None = None
        self.error: BaseException | None = None
        self.reads: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def _enter(self, what: str) -> None:
        with self.lock:
            self.reads.append(what)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never opened the gate"
        if self.error is not None:
            raise self.error

    def load(self) -> Credentials:
        self._enter("load")
        return self.current

    def poll(self, held: Credentials) -> Credentials | None:
        self._enter("poll")
        return None if self.current == held else self.current

    def newer(
        self, rejected: Credentials, refused: Sequence[str | None], *, use_pending: bool
    ) -> Credentials | None:
        self._enter("newer")
        for candidate in (self.current, self.pending if use_pending else None):
            if candidate is None or candidate == rejected or candidate.version_id in refused:
                continue
            return candidate
        return None

    def after_fork(self) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def loaded_store(source: FakeSource, **kwargs) -> CredentialStore:
    store = CredentialStore(source, **kwargs)
    assert store.current(WAIT) == A1
    source.reads.clear()
    return store


def in_threads(count: int, target) -> list[object]:
    results: list[object] = [None] * count

    def run(i: int) -> None:
        results[i] = target()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def joined(threads, within: float = WAIT) -> None:
    for thread in threads:
        thread.join(within)
        assert not thread.is_alive(), "a thread did not finish in time"


# -- first load -----------------------------------------------------------------------------


def test_nothing_is_read_until_first_use_then_once():
    source = FakeSource()
    store = CredentialStore(source)
    assert source.reads == []
    assert store.held() is None
    assert store.current(WAIT) == A1
    assert store.current(WAIT) == A1
    assert source.reads == ["load"]


def test_concurrent_first_loads_share_one_read():
    source = FakeSource()
    source.gate = threading.Event()
    store = CredentialStore(source)
    threads, results = in_threads(8, lambda: store.current(WAIT))
    assert source.entered.wait(WAIT)
    source.gate.set()
    joined(threads)
    assert results == [A1] * 8
    assert source.reads == ["load"]
    assert store.stats().loads == 1


def test_concurrent_first_loads_share_one_failure_too_and_the_next_caller_reads_again():
    source = FakeSource()
    source.gate = threading.Event()
    source.error = SecretsManagerUnavailableError("ThrottlingException", secret_id="db")
    store = CredentialStore(source)
    threads, results = in_threads(8, lambda: store.answer(store.join_load(), WAIT, blocking=True))
    assert source.entered.wait(WAIT)
    source.gate.set()
    joined(threads)
    assert all(result is source.error for result in results)
    assert source.reads == ["load"]
    source.error = None
    assert store.current(WAIT) == A1
    assert source.reads == ["load", "load"]


def test_a_waiter_stops_waiting_at_its_deadline_while_the_read_hangs():
    source = FakeSource()
    source.gate = threading.Event()
    store = CredentialStore(source)
    answer = store.answer(store.join_load(), 0.2, blocking=True)
    assert isinstance(answer, SecretsManagerUnavailableError)
    assert "did not answer within 0.2 s" in str(answer)
    source.gate.set()  # the read finishes later and still lands
    assert store.current(WAIT) == A1
    assert source.reads == ["load"]


def test_a_read_that_cannot_get_a_thread_answers_an_error_instead_of_hanging(monkeypatch):
    store = CredentialStore(FakeSource())

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    flight = store.join_load()
    assert flight.done.is_set()
    assert isinstance(flight.answer, RotatingPoolError)
    assert store._load_flight is None  # the next caller tries again


# -- refetch --------------------------------------------------------------------------------


def test_a_moved_awscurrent_is_returned_and_becomes_current():
    source = FakeSource()
    store = loaded_store(source)
    source.current = B2
    assert store.refetch(A1, WAIT) == B2
    assert store.held() == B2
    assert source.reads == ["newer"]


def test_awspending_is_offered_when_awscurrent_has_not_moved():
    source = FakeSource()
    store = loaded_store(source)
    source.pending = A3
    assert store.refetch(A1, WAIT) == A3


def test_awspending_is_not_offered_when_switched_off():
    source = FakeSource()
    store = loaded_store(source, use_pending=False)
    source.pending = A3
    assert store.refetch(A1, WAIT) is None


def test_versions_refused_lately_are_not_offered_again():
    source = FakeSource()
    store = loaded_store(source)
    source.pending = A3
    assert store.refetch(A1, WAIT) == A3
    source.pending = None
    source.current = A1  # A3 refused too: AWSCURRENT is A1, which was refused before
    assert store.refetch(A3, WAIT) is None


def test_a_caller_refused_with_superseded_credentials_gets_the_new_ones_without_a_read():
    source = FakeSource()
    store = loaded_store(source)
    source.current = B2
    assert store.refetch(A1, WAIT) == B2
    assert store.refetch(A1, WAIT) == B2
    assert source.reads == ["newer"]


def test_concurrent_refusals_share_one_read():
    source = FakeSource()
    store = loaded_store(source)
    source.gate = threading.Event()
    source.current = B2
    threads, results = in_threads(16, lambda: store.refetch(A1, WAIT))
    assert source.entered.wait(WAIT)
    source.gate.set()
    joined(threads)
    assert results == [B2] * 16
    assert source.reads == ["newer"]
    stats = store.stats()
    assert stats.refetches == 1
    assert stats.refetch_joins + stats.refetches <= 16


def test_a_read_error_is_an_answer_shared_by_every_waiter_and_not_reused():
    source = FakeSource()
    store = loaded_store(source)
    source.gate = threading.Event()
    source.error = SecretsManagerUnavailableError("ThrottlingException", secret_id="db")
    threads, results = in_threads(4, lambda: store.refetch(A1, WAIT, reuse_for=60))
    assert source.entered.wait(WAIT)
    source.gate.set()
    joined(threads)
    assert all(result is source.error for result in results)
    source.error = None
    source.gate = None
    assert store.refetch(A1, WAIT, reuse_for=60) is None
    assert source.reads == ["newer", "newer"]


def test_nothing_new_is_reused_within_the_window_without_a_read():
    source = FakeSource()
    clock = FakeClock()
    store = loaded_store(source, clock=clock)
    assert store.refetch(A1, WAIT, reuse_for=60) is None
    clock.now = 59
    assert store.refetch(A1, WAIT, reuse_for=60) is None
    assert source.reads == ["newer"]
    assert store.stats().refetch_reuses == 1
    clock.now = 61
    assert store.refetch(A1, WAIT, reuse_for=60) is None
    assert source.reads == ["newer", "newer"]


# -- background refresh -----------------------------------------------------------------------


def test_new_connections_do_not_wait_for_a_due_refresh():
    source = FakeSource()
    clock = FakeClock()
    store = loaded_store(source, clock=clock, refresh_interval=10)
    source.gate = threading.Event()  # the refresh's read hangs until the end of the test
    clock.now = 11
    threads, results = in_threads(8, store.held)
    joined(threads, within=2.0)  # returned while the refresh's read is still held
    assert results == [A1] * 8
    assert source.entered.wait(WAIT)
    assert source.reads == ["poll"]  # one refresh, however many callers saw it due
    source.gate.set()


def test_a_due_refresh_adopts_a_new_awscurrent():
    source = FakeSource()
    clock = FakeClock()
    store = loaded_store(source, clock=clock, refresh_interval=10)
    source.current = B2
    clock.now = 11
    store.held()
    assert _eventually(lambda: store.held() == B2)
    assert store.stats().background_refreshes == 1


def test_a_failed_refresh_keeps_the_credentials_in_use():
    source = FakeSource()
    clock = FakeClock()
    store = loaded_store(source, clock=clock, refresh_interval=10)
    source.error = SecretsManagerUnavailableError("Secrets Manager is down", secret_id="db")
    clock.now = 11
    assert store.held() == A1
    assert _eventually(lambda: store.stats().failed_refreshes == 1)
    assert store.held() == A1
    assert store.stats().background_refreshes == 0


def test_a_refresh_never_undoes_a_recovery_made_meanwhile():
    source = FakeSource()
    clock = FakeClock()
    store = loaded_store(source, clock=clock, refresh_interval=10)
    source.gate = threading.Event()
    source.current = B2
    clock.now = 11
    store.held()  # the poll starts from A1 and hangs
    assert source.entered.wait(WAIT)
    store.confirm(A3)  # a refusal meanwhile recovered with AWSPENDING
    source.gate.set()
    assert _eventually(lambda: store.stats().background_refreshes == 1)
    assert store.held() == A3


def test_repr_shows_no_password():
    source = FakeSource()
    store = loaded_store(source)
    assert "pw-1" not in repr(store)


def _eventually(condition) -> bool:
    """Poll `condition` until true, within WAIT: the refresh thread signals nothing."""
    tick = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return True
        tick.wait(0.01)
    return False


@pytest.mark.parametrize("interval", [10.0])
def test_refresh_times_are_jittered_between_half_and_all_of_the_interval(interval):
    source = FakeSource()
    store = loaded_store(source, refresh_interval=interval)
    delays = {store._poll_delay(interval) for _ in range(50)}
    assert all(interval / 2 <= d <= interval for d in delays)
    assert len(delays) > 1


# -- the ledger: the store's rules as a value ------------------------------------------------


def test_the_ledger_keeps_the_last_four_refused_versions_newest_first():
    ledger = Ledger()
    for version in ("v1", "v2", "v1", "v3", "v4", "v5"):
        ledger = ledger.refusing(Credentials("u", "p", version_id=version))
    assert ledger.refused == ("v5", "v4", "v3", "v2")
    assert REFUSED_VERSIONS_KEPT == 4


def test_the_ledger_reuses_nothing_new_only_for_the_same_credentials_within_the_window():
    ledger = Ledger().answered(A1, None, now=10.0)
    assert ledger.reuses_nothing_new(A1, now=10.9, reuse_for=1.0)
    assert not ledger.reuses_nothing_new(A1, now=11.0, reuse_for=1.0)
    assert not ledger.reuses_nothing_new(B2, now=10.1, reuse_for=1.0)
    assert not ledger.answered(A1, B2, now=10.5).reuses_nothing_new(A1, 10.6, 1.0)
    errored = ledger.answered(A1, RotatingPoolError("x"), now=10.5)
    assert errored.reuses_nothing_new(A1, 10.6, 1.0)  # an error is no news either way


def test_the_refresh_may_adopt_only_over_what_it_polled_and_never_a_refused_version():
    ledger = Ledger().refusing(B2)
    assert not ledger.refresh_may_adopt(B2, current=A1, polled=A1)  # B2 was refused
    assert ledger.refresh_may_adopt(A3, current=A1, polled=A1)
    assert not ledger.refresh_may_adopt(A3, current=B2, polled=A1)  # a recovery meanwhile
    assert not ledger.refresh_may_adopt(None, current=A1, polled=A1)


def test_a_refresh_never_adopts_a_version_refused_lately():
    # A cache or a lagging replica may still label a refused version AWSCURRENT.
    source = FakeSource()
    clock = FakeClock()
    store = loaded_store(source, refresh_interval=10.0, clock=clock)
    source.current = B2
    assert store.refetch(A1, WAIT) == B2  # B2 in use
    assert store.refetch(B2, WAIT) is None  # then B2 refused too: nothing new
    store.confirm(A1)  # A1 logged in after all (a pooler had lagged)
    clock.now = 100.0
    source.gate, source.entered = threading.Event(), threading.Event()
    before = set(threading.enumerate())
    store.held()  # the refresh is due: its poll answers B2, still AWSCURRENT
    assert source.entered.wait(WAIT)
    (refresh,) = set(threading.enumerate()) - before  # the refresh, held at the gate
    source.gate.set()
    refresh.join(WAIT)
    assert source.reads[-1] == "poll"
    assert store.stats().background_refreshes == 1
    assert store.held() == A1


def test_a_refused_login_is_classified_once_whoever_counts_it(monkeypatch):
    calls = []
    real = classify.classify_login_error

    def counting(error):
        calls.append(error)
        return real(error)

    monkeypatch.setattr(classify, "classify_login_error", counting)
    source = FakeSource()
    store = loaded_store(source)
    source.current = B2
    refusal = OSError('FATAL:  password authentication failed for user "app_a"')

    def connect(credentials, timeout):
        if credentials == A1:
            raise refusal
        return "connection"

    assert login(store, RetryBudget(), connect) == "connection"
    assert calls == [refusal]
    stats = store.stats()
    assert (stats.logins, stats.rejected_logins, stats.recovered_logins) == (2, 1, 1)
    assert store.held() == B2


def test_login_async_recovers_from_a_refusal_awaiting_the_shared_read():
    source = FakeSource()
    store = loaded_store(source)
    source.current = B2
    source.gate = threading.Event()  # the refetch waits until the test opens it
    source.entered.clear()
    refusal = OSError('FATAL:  password authentication failed for user "app_a"')
    tried = []

    async def connect(credentials, timeout):
        tried.append((credentials, timeout))
        if credentials == A1:
            raise refusal
        return "connection"

    async def scenario():
        task = asyncio.create_task(login_async(store, RetryBudget(), connect))
        def read_started() -> float:
            assert source.entered.wait(WAIT)
            return time.monotonic()

        started = await asyncio.to_thread(read_started)
        # Back on the loop at once: the task awaits the read without blocking it.
        assert time.monotonic() - started < 1.0 and not task.done()
        source.gate.set()
        return await asyncio.wait_for(task, WAIT)

    assert asyncio.run(scenario()) == "connection"
    assert [credentials for credentials, _ in tried] == [A1, B2]
    assert tried[0][1] == 20  # the first login gets the whole deadline
    stats = store.stats()
    assert (stats.logins, stats.rejected_logins, stats.recovered_logins) == (2, 1, 1)


def test_the_version_memo_tells_a_version_read_after_the_refused_one():
    memo = VersionMemo()
    memo.add(A1)
    assert not memo.holds_other_than(("v1",), A1)
    memo.add(B2)  # e.g. the periodic refresh read the new AWSCURRENT
    assert memo.holds_other_than(("v1",), A1)
    assert not memo.holds_other_than(("v1", "v2"), A1)  # refused too
    assert not memo.holds_other_than(("v2",), B2)  # A1 was read before B2: older
