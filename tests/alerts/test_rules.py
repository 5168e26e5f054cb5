"""When alerts fire: the digest, pause dedup and the error-rate window, with time passed in."""

from __future__ import annotations

import datetime as dt
import uuid

from crmsync.alerts import messages
from crmsync.alerts.rules import Dedup, ErrorDigest, ErrorRateWatch
from crmsync.enums import Crm
from crmsync.sync.state import Outcome, RowUpdate

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
HUB, BREVO = Crm.hubspot, Crm.brevo


def rows(outcome: Outcome, n: int, message: str = "boom") -> list[RowUpdate]:
    return [
        RowUpdate(i, uuid.uuid4(), outcome, 1, message=f"{message} {i}" if message else None)
        for i in range(n)
    ]


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_digest_waits_for_the_gather_then_the_interval_and_loses_nothing() -> None:
    digest = ErrorDigest(min_interval=300)
    assert digest.take(at(0)) is None and digest.due_at() is None
    assert digest.add(HUB, rows(Outcome.error, 3) + rows(Outcome.ok, 5), at(0)) == 3
    assert digest.due_at() == at(10)
    assert digest.take(at(9)) is None
    digest.add(BREVO, rows(Outcome.error, 2), at(5))
    first = digest.take(at(10))
    assert first is not None
    assert dict(first.counts) == {HUB: 3, BREVO: 2} and first.total == 5
    assert first.since == at(0) and first.until == at(10)
    # Errors in the quiet interval are counted for the next digest, not before it.
    digest.add(HUB, rows(Outcome.error, 4), at(20))
    digest.add(HUB, rows(Outcome.error, 1), at(250))
    assert digest.pending == 5 and digest.due_at() == at(310)
    assert digest.take(at(309)) is None
    second = digest.take(at(310))
    assert second is not None and dict(second.counts) == {HUB: 5} and second.since == at(20)
    assert digest.pending == 0 and digest.take(at(10_000)) is None


def test_digest_shows_ten_errors_taken_in_turn_from_each_crm() -> None:
    digest = ErrorDigest(min_interval=0)
    digest.add(HUB, rows(Outcome.error, 40, "hub"), at(0))
    digest.add(BREVO, rows(Outcome.error, 2, "brevo"), at(0))
    taken = digest.take(at(0))
    assert taken is not None and taken.total == 42
    assert [s.crm for s in taken.samples].count(BREVO) == 2
    assert [s.message for s in taken.samples if s.crm is HUB] == [f"hub {i}" for i in range(8)]


def test_forced_digest_goes_out_before_it_is_due() -> None:
    digest = ErrorDigest(min_interval=300)
    digest.add(HUB, rows(Outcome.error, 1), at(0))
    assert digest.take(at(1)) is None
    forced = digest.take(at(1), force=True)
    assert forced is not None and forced.total == 1


def test_dedup_lets_a_key_through_once_per_interval() -> None:
    dedup = Dedup(300)
    assert dedup.allow(("hubspot", "auth", "401"), at(0))
    assert not dedup.allow(("hubspot", "auth", "401"), at(299))
    assert dedup.allow(("hubspot", "auth", "other reason"), at(1))
    assert dedup.allow(("brevo", "auth", "401"), at(1))
    assert dedup.allow(("hubspot", "auth", "401"), at(300))


def test_error_rate_counts_only_attempted_rows_and_ignores_small_samples() -> None:
    watch = ErrorRateWatch(threshold=0.2, min_interval=300)
    # 19 failures alone: under the 20-row minimum, no judgement.
    assert watch.add(HUB, rows(Outcome.retry, 19), at(0)) is None
    # Rows not attempted change nothing.
    for outcome in (Outcome.unchanged, Outcome.rate_limited, Outcome.auth_failed):
        assert watch.add(HUB, rows(outcome, 50), at(1)) is None
    reading = watch.reading(HUB, at(1))
    assert (reading.attempted, reading.failed, reading.errors) == (19, 19, 0)
    # The 20th attempted row makes the sample: 20 failed of 20 (retries and errors both count).
    change = watch.add(HUB, rows(Outcome.error, 1, "the last"), at(2))
    assert change is not None and change.above and not change.again
    assert (change.reading.attempted, change.reading.failed, change.reading.errors) == (20, 20, 1)
    assert change.reading.rate == 1.0 and change.reading.last_failure == "the last 0"
    # Other CRMs have their own window.
    assert watch.reading(BREVO, at(2)).attempted == 0


def test_error_rate_alerts_on_crossing_reminds_per_interval_and_recovers() -> None:
    watch = ErrorRateWatch(threshold=0.2, min_interval=300)
    assert watch.add(HUB, rows(Outcome.ok, 80), at(0)) is None
    assert watch.add(HUB, rows(Outcome.retry, 20), at(1)) is None  # 20 % is not above 20 %
    crossed = watch.add(HUB, rows(Outcome.retry, 1), at(2))
    assert crossed is not None and crossed.above and not crossed.again
    assert round(crossed.reading.rate, 4) == round(21 / 101, 4)
    # Still above: quiet until the interval has passed, then one reminder.
    assert watch.add(HUB, rows(Outcome.retry, 30), at(60)) is None
    assert watch.add(HUB, rows(Outcome.retry, 1), at(301)) is None  # 299 s after the alert
    reminder = watch.add(HUB, rows(Outcome.retry, 1), at(302))
    assert reminder is not None and reminder.above and reminder.again
    # 16 minutes later the old rows have left the window; healthy pushes bring it down.
    recovered = watch.add(HUB, rows(Outcome.ok, 25), at(302 + 16 * 60))
    assert recovered is not None and not recovered.above
    assert (recovered.reading.attempted, recovered.reading.failed) == (25, 0)
    assert watch.add(HUB, rows(Outcome.ok, 25), at(303 + 16 * 60)) is None  # said once


def test_flapping_around_the_threshold_sends_at_most_one_alert_per_interval() -> None:
    watch = ErrorRateWatch(threshold=0.5, min_interval=300)
    sent = []
    for second in range(0, 200, 2):
        outcome = Outcome.retry if (second // 2) % 2 == 0 else Outcome.ok
        change = watch.add(HUB, rows(outcome, 21), at(second))
        if change is not None:
            sent.append(change.above)
    assert sent == [True, False]


def test_window_slides() -> None:
    watch = ErrorRateWatch(threshold=0.2, min_interval=300)
    watch.add(HUB, rows(Outcome.retry, 10), at(0))
    watch.add(HUB, rows(Outcome.ok, 10), at(600))
    assert watch.reading(HUB, at(899)).attempted == 20
    assert watch.reading(HUB, at(911)).attempted == 10  # the first bucket ended 15 min ago
    assert watch.reading(HUB, at(1600)).attempted == 0


def test_texts_are_plain_and_clip_long_messages() -> None:
    digest = ErrorDigest(min_interval=300, gather=0)
    long = "x" * 500 + "\nsecond line"
    digest.add(HUB, [RowUpdate(1, uuid.UUID(int=7), Outcome.error, 4, message=long)], at(0))
    taken = digest.take(at(0))
    assert taken is not None
    alert = messages.digest_alert(taken, 300, "crmsync on test")
    assert alert.subject == "[crmsync] hubspot: 1 contact reached Error"
    sample_line = next(line for line in alert.body.splitlines() if str(uuid.UUID(int=7)) in line)
    assert sample_line.endswith("x…") and len(sample_line) < 260
    assert "crmsync retry --crm hubspot --all-failed" in alert.body
    assert "at most one every 5 min" in alert.body
    assert alert.body.endswith("-- crmsync on test, 2025-03-01 12:00:00 UTC")
