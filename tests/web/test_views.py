"""The small calculations behind the pages: states, bars, sparklines, paging."""

from __future__ import annotations

import datetime as dt

from crmsync.enums import Crm
from crmsync.ops import overview
from crmsync.ops.repository import WorkerRow
from crmsync.settings import Settings
from crmsync.sync.control import Control
from crmsync.web import views

NOW = dt.datetime(2026, 12, 6, 12, 30, 40, tzinfo=dt.UTC)


def _worker(*crms: str) -> WorkerRow:
    return WorkerRow("w1", "host", 1, crms, NOW, NOW, NOW, 0)


def _settings() -> Settings:
    return Settings(
        brevo={"api_key": "k"},  # type: ignore[arg-type]
        hubspot={"access_token": "t"},  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )


def test_a_crms_state_follows_configuration_pauses_work_and_workers() -> None:
    rows = {("brevo", "Selected"): 2, ("brevo", "Complete"): 5, ("hubspot", "Complete"): 7}
    minute = overview.window_start(NOW)
    built = overview.build(
        NOW,
        _settings(),
        10,
        rows,
        [_worker("brevo", "hubspot")],
        {Crm.n8n: Control(Crm.n8n, manual_pause=True)},
        {
            "brevo": {
                minute + dt.timedelta(minutes=59): 4,
                minute: 1,
                minute - dt.timedelta(minutes=1): 9,
            }
        },
    )
    cards = {card.crm: card for card in built.cards}
    assert cards[Crm.brevo].state is overview.CrmState.syncing
    assert cards[Crm.brevo].counts["New"] == 3 and cards[Crm.brevo].waiting == 2
    # The window is the current minute and the 59 before it; older minutes are not in it.
    assert cards[Crm.brevo].per_minute[0] == 1 and cards[Crm.brevo].per_minute[-1] == 4
    assert cards[Crm.brevo].synced_last_hour == 5
    assert cards[Crm.hubspot].state is overview.CrmState.idle
    assert cards[Crm.mautic].state is overview.CrmState.disabled
    assert cards[Crm.mautic].missing == "MAUTIC_BASE_URL is not set"
    # Not configured here, but a worker elsewhere could serve it: not configured wins only
    # when no live worker serves the CRM.
    assert cards[Crm.n8n].state is overview.CrmState.disabled
    served = overview.build(
        NOW, _settings(), 10, rows, [_worker("n8n")], {Crm.n8n: Control(Crm.n8n, True)}, {}
    )
    n8n = next(card for card in served.cards if card.crm is Crm.n8n)
    assert n8n.state is overview.CrmState.paused
    assert n8n.pauses == (overview.Pause("operator", None, None),)
    assert dict(n8n.credentials) == {"N8N_WEBHOOK_URL": False, "N8N_WEBHOOK_SECRET": False}


def test_an_ended_pause_is_no_pause() -> None:
    ended = Control(Crm.brevo, False, NOW - dt.timedelta(seconds=1), "outage", "503s")
    built = overview.build(NOW, _settings(), 0, {}, [_worker("brevo")], {Crm.brevo: ended}, {})
    assert built.cards[0].state is overview.CrmState.idle


def test_bar_segments_add_up_and_leave_out_zeros() -> None:
    segments = views.bar_segments({"Complete": 3, "Error": 1, "New": 0, "Selected": 0})
    assert [(s.status, s.x, s.width) for s in segments] == [
        ("Complete", 0.0, 75.0),
        ("Error", 75.0, 25.0),
    ]
    assert views.bar_segments({"New": 0}) == []


def test_sparkline_spans_the_box() -> None:
    points = views.sparkline([0, 5, 10])
    assert points == "0.0,38.0 120.0,20.0 240.0,2.0"
    assert views.sparkline([0, 0]) == "0.0,38.0 240.0,38.0"


def test_pager_and_query() -> None:
    pager = views.Pager(offset=50, limit=50, total=120, shown=50)
    assert (pager.first, pager.last, pager.previous, pager.next) == (51, 100, 0, 100)
    last = views.Pager(offset=100, limit=50, total=120, shown=20)
    assert last.next is None and last.last == 120
    assert views.query({"search": "a b", "error": ""}, offset=0) == "search=a+b&error="
    assert views.query({"search": "x"}, offset=50) == "search=x&offset=50"
