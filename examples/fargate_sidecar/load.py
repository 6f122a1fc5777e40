"""The demo's load generator: keep-alive HTTP clients, half writes and half reads, counted."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

# The load generator's request timeout: far above any answer the app should
# give, so that a slow answer shows as latency, not as an error.
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Sample:
    """One HTTP request: when it finished (seconds since the load started), how long
    it took, what it was, and whether it got a 2xx answer."""

    at: float
    latency: float
    write: bool
    ok: bool


@dataclass
class LoadResult:
    """What the load generator counted."""

    samples: list[Sample] = field(default_factory=list)
    writes_2xx: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        """Requests sent (answered or not)."""
        return len(self.samples)

    @property
    def ok(self) -> int:
        """Requests answered 2xx."""
        return sum(sample.ok for sample in self.samples)

    @property
    def failed(self) -> int:
        """Requests not answered 2xx (error status or no answer)."""
        return self.requests - self.ok


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100, nearest rank) of `values`; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class LoadGenerator:
    """`threads` clients, each on one keep-alive connection, half writes and half reads.

    A write is ``POST /orders``; a read is ``GET /orders/<id>`` of an order an
    earlier write got a 201 for, so every read should find its row.
    """

    def __init__(self, host: str, port: int, *, threads: int) -> None:
        self.host = host
        self.port = port
        self.threads = threads
        self.started = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._result = LoadResult()
        self._ids: list[int] = []
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        """Start the clients; sample times count from now."""
        self.started = time.monotonic()
        for number in range(self.threads):
            worker = threading.Thread(
                target=self._run, args=(number,), name=f"load-{number}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def stop(self) -> LoadResult:
        """Stop the clients after their request in flight and return the counts."""
        self._stop.set()
        for worker in self._workers:
            worker.join()
        return self._result

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.started

    def samples_since(self, index: int) -> list[Sample]:
        """Samples recorded from position `index` on."""
        with self._lock:
            return self._result.samples[index:]

    def totals(self) -> tuple[int, int]:
        """(requests, failed) so far."""
        with self._lock:
            samples = self._result.samples
            return len(samples), sum(not s.ok for s in samples)

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)

    def _run(self, number: int) -> None:
        chooser = random.Random(number)
        connection = self._connect()
        sequence = 0
        while not self._stop.is_set():
            with self._lock:
                order_id = chooser.choice(self._ids) if self._ids else None
            write = order_id is None or chooser.random() < 0.5
            if write:
                sequence += 1
                body = json.dumps(
                    {"item": f"item-{number}-{sequence}", "quantity": chooser.randint(1, 9)}
                )
                method, path = "POST", "/orders"
                headers = {"Content-Type": "application/json"}
            else:
                method, path, body, headers = "GET", f"/orders/{order_id}", None, {}
            began = time.monotonic()
            status, answer, error = 0, b"", None
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                status = response.status
                if response.will_close:
                    connection.close()
                    connection = self._connect()
            except (OSError, http.client.HTTPException) as exc:
                error = type(exc).__name__
                connection.close()
                connection = self._connect()
            finished = time.monotonic()
            ok = 200 <= status < 300
            created = _created_id(answer) if write and status == 201 else None
            with self._lock:
                self._result.samples.append(
                    Sample(finished - self.started, finished - began, write, ok)
                )
                if not ok:
                    what = error or f"HTTP {status} {_short(answer)}"
                    self._result.errors[f"{method} {path.split('/')[1]}: {what}"] += 1
                if write and ok:
                    self._result.writes_2xx += 1
                if created is not None:
                    self._ids.append(created)
        connection.close()


def _created_id(answer: bytes) -> int | None:
    try:
        value = json.loads(answer)["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None


def _short(answer: bytes) -> str:
    return " ".join(answer.decode("utf-8", "replace").split())[:80]

