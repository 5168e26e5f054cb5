"""The health rules on hand-made snapshots: the cases a live system rarely shows on demand."""

from __future__ import annotations

import datetime as dt

from crmsync.enums import Crm
from crmsync.ops import repository as repo
from crmsync.ops.health import assess
from crmsync.ops.snapshot import Snapshot
from crmsync.settings import Settings
from crmsync.sync.control import Control

NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)


def settings(*configured: Crm) -> Settings:
    values: dict[str, object] = {
        "brevo": {"api_key": "k" if Crm.brevo in configured else None},
        "hubspot": {"access_token": "t" if Crm.hubspot in configured else None},
        "mautic": {"base_url": "http://m" if Crm.mautic in configured else None},
        "n8n": {"webhook_url": "http://n" if Crm.n8n in configured else None},
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def worker(*crms: Crm) -> repo.WorkerRow:
    return repo.WorkerRow("w1", "host", 1, tuple(c.value for c in crms), NOW, NOW, NOW, 0)


def snapshot(
    *,
    workers: list[repo.WorkerRow] | None = None,
    controls: dict[Crm, Control] | None = None,
    due: dict[str, repo.Due] | None = None,
    outcomes: dict[str, repo.Outcomes] | None = None,
) -> Snapshot:
    return Snapshot(
        now=NOW,
        counts=repo.StatusCounts(10, {("hubspot", "Complete"): 4}),
        due=due or {},
        workers=workers if workers is not None else [worker(*Crm)],
        controls={crm: Control(crm) for crm in Crm} | (controls or {}),
        outcomes=outcomes or {},
    )


def test_all_served_and_quiet_is_ok() -> None:
    health = assess(snapshot(), settings(*Crm), 900)
    assert health.status == "ok" and health.reasons == []
    queue = health.crms["hubspot"].queue
    assert queue["New"] == 6 and queue["Complete"] == 4 and sum(queue.values()) == 10


def test_a_rate_limit_pause_is_routine_but_shown() -> None:
    until = NOW + dt.timedelta(seconds=10)
    ctl = Control(Crm.hubspot, False, until, "rate_limit", "429")
    health = assess(snapshot(controls={Crm.hubspot: ctl}), settings(*Crm), 900)
    hubspot = health.crms["hubspot"]
    assert health.status == "ok" and hubspot.status == "ok"
    assert hubspot.paused and hubspot.pause_kind == "rate_limit" and hubspot.paused_until == until


def test_an_expired_pause_is_not_shown() -> None:
    ctl = Control(Crm.hubspot, False, NOW - dt.timedelta(seconds=1), "auth", "401")
    hubspot = assess(snapshot(controls={Crm.hubspot: ctl}), settings(*Crm), 900).crms["hubspot"]
    assert not hubspot.paused and hubspot.pause_kind is None and hubspot.pause_reason is None
    assert hubspot.status == "ok"


def test_lag_above_the_bound_is_degraded() -> None:
    due = {"n8n": repo.Due(5, NOW - dt.timedelta(seconds=1000))}
    health = assess(snapshot(due=due), settings(*Crm), 900)
    n8n = health.crms["n8n"]
    assert n8n.lag_seconds == 1000 and n8n.due == 5 and n8n.status == "degraded"
    assert health.reasons == ["n8n: oldest due row has waited 1000 s (more than 900 s)"]
    assert assess(snapshot(due=due), settings(*Crm), 1200).status == "ok"


def test_one_auth_paused_crm_degrades_and_all_of_them_is_down() -> None:
    ctl = Control(Crm.hubspot, False, NOW + dt.timedelta(minutes=5), "auth", "401")
    health = assess(snapshot(controls={Crm.hubspot: ctl}), settings(*Crm), 900)
    assert health.crms["hubspot"].status == "down" and health.status == "degraded"
    alone = snapshot(controls={Crm.hubspot: ctl}, workers=[worker(Crm.hubspot)])
    only = assess(alone, settings(Crm.hubspot), 900)
    assert only.status == "down" and only.reasons[0] == "every configured CRM is down"


def test_error_rate_is_judged_against_the_alert_threshold() -> None:
    outcomes = {"brevo": repo.Outcomes(successes=7, failures=3, recent_successes=5)}
    health = assess(snapshot(outcomes=outcomes), settings(*Crm), 900)
    brevo = health.crms["brevo"]
    assert brevo.error_rate == 0.3 and brevo.throughput_per_minute == 1.0
    assert brevo.status == "degraded"
    lenient = settings(*Crm)
    lenient.alert_error_rate = 0.5
    assert assess(snapshot(outcomes=outcomes), lenient, 900).crms["brevo"].status == "ok"


def test_no_crm_configured_is_degraded() -> None:
    health = assess(snapshot(workers=[]), settings(), 900)
    assert health.status == "degraded" and health.reasons == ["no CRM is configured"]
    assert all(c.status == "disabled" and not c.enabled for c in health.crms.values())


def test_a_crm_served_by_a_live_worker_counts_as_configured() -> None:
    # The API host need not hold the vendor secrets when workers run elsewhere.
    health = assess(snapshot(workers=[worker(Crm.mautic)]), settings(), 900)
    mautic = health.crms["mautic"]
    assert mautic.enabled and mautic.disabled_reason is None and mautic.status == "ok"
    assert health.crms["brevo"].disabled_reason == "BREVO_API_KEY is not set"
    assert health.status == "ok"


def test_rows_due_with_no_worker_at_all_is_down_even_if_one_crm_is_affected() -> None:
    due = {"brevo": repo.Due(2, NOW)}
    health = assess(snapshot(workers=[], due=due), settings(*Crm), 900)
    assert health.status == "down"
    assert health.reasons[0] == "2 row(s) are due and no worker is alive"
    assert health.crms["brevo"].status == "down" and health.crms["n8n"].status == "degraded"
