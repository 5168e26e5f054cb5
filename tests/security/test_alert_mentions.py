"""Text from a vendor or a contact cannot ping a chat room through an alert."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest

from crmsync.alerts import messages
from crmsync.alerts.messages import Digest, ErrorSample, RateReading
from crmsync.enums import Crm

NOW = dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)
HOSTILE = (
    "invalid name '<!channel> <!here> <!everyone> <@U123ABC> <#C42> <!subteam^S1|team>' "
    "@here @channel @all @everyone @alice (contact ann.lee@example.com, +tag@x.io)"
)
# What a chat service would notify on: Slack's control sequences, and @word not inside a word.
MENTION = re.compile(r"<[!@#]|(?<![\w.+-])@\w")


def _alerts() -> list[messages.Alert]:
    sample = ErrorSample(Crm.hubspot, uuid.uuid4(), HOSTILE)
    digest = Digest({Crm.hubspot: 1}, [sample], NOW, NOW)
    reading = RateReading(Crm.brevo, 10, 5, 1, 0.2, 15, HOSTILE)
    return [
        messages.digest_alert(digest, 300, "host"),
        messages.pause_alert(Crm.mautic, "configuration", HOSTILE, 300, "host", NOW),
        messages.rate_alert(reading, False, 300, "host", NOW),
    ]


@pytest.mark.parametrize("alert", _alerts(), ids=["digest", "pause", "rate"])
def test_no_mention_survives_into_an_alert(alert: messages.Alert) -> None:
    assert MENTION.search(alert.text) is None, alert.text
    # Still readable: the words are there, and e-mail addresses are untouched.
    visible = alert.text.replace(messages.ZERO_WIDTH_SPACE, "")
    assert "<!channel>" in visible and "@here" in visible
    assert "ann.lee@example.com" in alert.text and "+tag@x.io" in alert.text


def test_our_own_text_is_left_alone() -> None:
    assert messages.neutralise_mentions("retry at 12:00, see <https://x>") == (
        "retry at 12:00, see <https://x>"
    )
