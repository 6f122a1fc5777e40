"""Writers that are not SQLAlchemy engines: a psycopg pool, a Django view, an HTTP app.

`CallLoad(write, threads)` runs `write(worker)` in a loop in each thread until
stopped, counting commits (returns) and failures (raises), as
`rotating_pool.testing.workload.WriteLoad` does for engines. Also the rotation
pace the load tests share.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from rotating_pool.rotation import Rotator
from rotating_pool.testing.workload import WriteLoadResult

WINDOW = 0.5  # seconds between testSecret and finishSecret: the rotation's own pace


def pause_after(step_name: str, seconds: float) -> Callable[[str, float], None]:
    """An `on_step` for `Rotator.rotate` that pauses after `step_name`."""

    def on_step(step: str, _elapsed: float) -> None:
        if step == step_name:
            time.sleep(seconds)  # the rotation's own pace, not synchronisation

    return on_step


def rotate(client, arn: str, rotations: int, after: Callable[[], None] | None = None) -> None:
    """`rotations` whole rotations by the project's rotator, each with its window."""
    rotator = Rotator(client)
    for _ in range(rotations):
        rotator.rotate(arn, on_step=pause_after("testSecret", WINDOW))
        if after is not None:
            after()


class CallLoad:
    """`threads` workers calling ``write(worker)`` until stopped; see the module docstring."""

    def __init__(self, write: Callable[[int], None], *, threads: int = 16) -> None:
        self.write = write
        self.threads = threads
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._result = WriteLoadResult(errors=Counter())
        self._workers: list[threading.Thread] = []
        self._started = 0.0

    def __enter__(self) -> CallLoad:
        self._started = time.perf_counter()
        for number in range(self.threads):
            worker = threading.Thread(target=self._work, args=(number,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def result(self) -> WriteLoadResult:
        """What the workers counted (final once stopped)."""
        return self._result

    def stop(self) -> WriteLoadResult:
        """Stop the workers and wait for them."""
        self._stop.set()
        for worker in self._workers:
            worker.join()
        self._result.seconds = time.perf_counter() - self._started
        return self._result

    def _work(self, number: int) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                self.write(number)
            except Exception as error:  # counted: the test reports every failure
                line = str(error).splitlines()[0][:160] if str(error) else ""
                with self._lock:
                    self._result.failures += 1
                    self._result.errors[f"{type(error).__name__}: {line}"] += 1
                    self._result.latencies.append(time.perf_counter() - began)
            else:
                with self._lock:
                    self._result.commits += 1
                    self._result.latencies.append(time.perf_counter() - began)
