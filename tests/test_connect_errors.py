"""Connect errors provoked live on the real bed, through every driver, classified.

The refusals (PostgreSQL, PgBouncer, the RDS Proxy stand-in) must be
recognised as refusals, and the errors that are not about credentials (a
refused port, a timeout, an unknown host, a full server, a missing database, a
server that requires TLS, a server starting up or shutting down) as transient.
The unit tests of the classifier use a snapshot of these texts
(tests/data/connect_errors.json); the last test keeps it from going stale.
"""

from __future__ import annotations

import json

import pytest

from rotating_pool.policy import classify_login_error
from tests.connect_errors import PENDING, SNAPSHOT, TIMING_DEPENDENT, capture, snapshot_row


@pytest.fixture(scope="module")
def captured(postgres, secretsmanager):
    return capture(postgres, secretsmanager)


def situations(captured, *, pending: bool):
    return [c for c in captured if (c.situation in PENDING) == pending]


def test_every_situation_was_provoked_through_every_driver(captured):
    by_situation: dict[str, set[str]] = {}
    for c in captured:
        by_situation.setdefault(c.situation, set()).add(c.driver)
    assert len(by_situation) >= 12, sorted(by_situation)
    for situation, drivers in by_situation.items():
        assert "psycopg" in drivers, situation


def test_refusals_and_transient_errors_are_classified_as_expected(captured):
    wrong = [
        (c.situation, c.driver, c.message, classify_login_error(c.exception).value)
        for c in situations(captured, pending=False)
        if classify_login_error(c.exception).value != c.expected
    ]
    assert wrong == []


def test_no_error_text_holds_a_password(captured, postgres):
    for c in captured:
        for secret in ("not-it", "plain-password", postgres.admin_password):
            assert secret not in c.message, (c.situation, c.driver)


def test_the_snapshot_holds_what_the_bed_says_now(captured):
    def steady(rows):
        return [row for row in rows if not any(m in row["situation"] for m in TIMING_DEPENDENT)]

    recorded = steady(json.loads(SNAPSHOT.read_text()))
    live = steady([snapshot_row(c) for c in situations(captured, pending=False)])
    assert [row for row in live if row not in recorded] == []
    assert [row for row in recorded if row not in live] == []
