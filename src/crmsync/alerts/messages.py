"""The text of every alert: plain sentences a person can act on, the same for chat and e-mail.

Each alert has a one-line subject (the e-mail subject; the first line in chat) and a body that
says what happened, to which CRM, how many contacts, the first errors, and what to do next.
Contacts are named by id only: alerts go to chat rooms and mailboxes, so no e-mail addresses.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from crmsync.enums import Crm

# Vendor messages in an alert are cut to this many characters (the API shows them in full).
MESSAGE_CHARS = 200

# Where each CRM's credentials come from, for the "what to do" line of an auth alert.
CREDENTIALS: dict[Crm, str] = {
    Crm.brevo: "BREVO_API_KEY",
    Crm.hubspot: "HUBSPOT_ACCESS_TOKEN",
    Crm.mautic: "MAUTIC_USERNAME/MAUTIC_PASSWORD (or MAUTIC_CLIENT_ID/MAUTIC_CLIENT_SECRET)",
    Crm.n8n: "N8N_AUTH_HEADER_NAME/N8N_AUTH_HEADER_VALUE",
}


class Kind(StrEnum):
    errors = "errors"  # contacts reached Error (the digest)
    paused = "paused"  # a CRM was paused for auth or configuration
    error_rate = "error_rate"  # the 15-minute error rate went above the threshold
    error_rate_ok = "error_rate_ok"  # ... and came back down


@dataclass(frozen=True, slots=True)
class Alert:
    kind: Kind
    subject: str
    body: str

    @property
    def text(self) -> str:
        """Chat text: the subject, a blank line, the body."""
        return f"{self.subject}\n\n{self.body}"


@dataclass(frozen=True, slots=True)
class ErrorSample:
    crm: Crm
    contact_id: uuid.UUID
    message: str


@dataclass(frozen=True, slots=True)
class Digest:
    """Contacts that reached Error between `since` and `until`, all counted, a few shown."""

    counts: Mapping[Crm, int]
    samples: list[ErrorSample]
    since: dt.datetime
    until: dt.datetime

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class RateReading:
    """One CRM's rows over the error-rate window (see `rules.ErrorRateWatch`)."""

    crm: Crm
    attempted: int
    failed: int  # retries + errors
    errors: int  # of which reached Error
    threshold: float
    window_minutes: int
    last_failure: str | None

    @property
    def rate(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0


# Chat mentions that text from a vendor or a contact could carry into an alert: Slack's control
# sequences (`<!channel>`, `<!here>`, `<@U123>`, `<#C123>`, `<!subteam^S1>`) and the plain
# `@here`, `@channel`, `@all`, `@everyone`, `@name` that Mattermost, Rocket.Chat and Discord
# notify on. A zero-width space after the `<` or the `@` keeps the text readable (in chat and in
# e-mail) but no longer a mention. An `@` inside a word (`ann@example.com`) is no mention.
_SLACK_CONTROL = re.compile(r"<(?=[!@#])")
_AT_MENTION = re.compile(r"(?<![\w.+-])@(?=\w)")
ZERO_WIDTH_SPACE = "\u200b"


def neutralise_mentions(text: str) -> str:
    """`text` with every chat mention made inert (see above)."""
    text = _SLACK_CONTROL.sub("<" + ZERO_WIDTH_SPACE, text)
    return _AT_MENTION.sub("@" + ZERO_WIDTH_SPACE, text)


def clip(message: str | None, limit: int = MESSAGE_CHARS) -> str:
    """One line of at most `limit` characters, with no chat mention (it comes from a vendor)."""
    flat = " ".join((message or "no message").split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return neutralise_mentions(flat)


def duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _hms(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%H:%M:%S")


def _footer(source: str, now: dt.datetime) -> str:
    return f"-- {source}, {now.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def digest_alert(digest: Digest, min_interval: float, source: str) -> Alert:
    crms = sorted(digest.counts, key=lambda c: (-digest.counts[c], c.value))
    total = digest.total
    if len(crms) == 1:
        subject = f"[crmsync] {crms[0].value}: {_plural(total, 'contact')} reached Error"
    else:
        split = ", ".join(f"{c.value} {digest.counts[c]}" for c in crms)
        subject = f"[crmsync] {_plural(total, 'contact')} reached Error ({split})"
    lines = [
        f"{_plural(total, 'contact')} reached Error between {_hms(digest.since)} and "
        f"{_hms(digest.until)} UTC: the CRM rejected them, or their retries ran out. "
        "crmsync will not try them again by itself.",
        "",
    ]
    width = max(len(c.value) for c in crms)
    lines += [f"  {c.value:<{width}}  {digest.counts[c]}" for c in crms]
    lines += ["", "First errors:"]
    lines += [
        f"  {s.crm.value:<{width}}  {s.contact_id}  {clip(s.message)}" for s in digest.samples
    ]
    more = total - len(digest.samples)
    if more > 0:
        lines.append(f"  ... and {more} more.")
    lines += ["", "What to do:"]
    for crm in crms:
        lines.append(
            f"  - {crm.value}: list them with GET /api/v3/crm/status/failed?crm={crm.value}; "
            f"once the cause is fixed, `crmsync retry --crm {crm.value} --all-failed`."
        )
    lines += [
        "",
        f"Errors from now on go into the next digest (at most one every {duration(min_interval)}).",
        _footer(source, digest.until),
    ]
    return Alert(Kind.errors, subject, "\n".join(lines))


def pause_alert(
    crm: Crm, kind: str, reason: str, retry_seconds: float, source: str, now: dt.datetime
) -> Alert:
    name = crm.value
    if kind == "outage":
        return _outage_alert(crm, reason, source, now)
    if kind == "budget":
        return _budget_alert(crm, reason, source, now)
    if kind == "auth":
        subject = f"[crmsync] {name} paused: authentication failed"
        what = f"{name} refused crmsync's credentials, so crmsync stopped pushing to {name}."
        fix = (
            f"  - Fix {CREDENTIALS[crm]} in crmsync's environment (.env) and restart the "
            "workers (settings are read at start)."
        )
    else:
        subject = f"[crmsync] {name} paused: configuration problem"
        what = f"crmsync stopped pushing to {name} because of a configuration problem."
        fix = "  - Fix the setting named in the reason above and restart the workers."
        if crm is not Crm.n8n:
            fix = (
                f"  - A custom field is missing: `crmsync setup {name}` (no restart needed); "
                "another setting: fix it and restart the workers."
            )
    lines = [
        what,
        f"Contacts selected for {name} wait in Queued; no attempts are spent while paused.",
        "",
        f"Reason: {clip(reason, 500)}",
        "",
        "What to do:",
        fix,
        f"  - Then `crmsync resume --crm {name}` to go on at once; otherwise crmsync tries "
        f"again by itself every {duration(retry_seconds)}.",
        "  - Watch it recover: GET /api/v3/crm/health.",
        "",
        _footer(source, now),
    ]
    return Alert(Kind.paused, subject, "\n".join(lines))


def _outage_alert(crm: Crm, reason: str, source: str, now: dt.datetime) -> Alert:
    name = crm.value
    lines = [
        f"{name} failed every request of several batches in a row, so crmsync paused it.",
        f"Contacts selected for {name} wait in Queued; no attempts are spent while it is down.",
        "",
        f"Last failure: {clip(reason, 500)}",
        "",
        f"crmsync tests recovery itself: one worker sends one contact to {name}, first after "
        f"{name.upper()}_OUTAGE_PROBE_SECONDS, then at doubling intervals up to "
        f"{name.upper()}_OUTAGE_MAX_PROBE_SECONDS. When it goes through, syncing resumes.",
        "",
        "What to do:",
        f"  - Check {name}'s status page, and the network from crmsync's host to it.",
        "  - The next probe time: GET /api/v3/crm/health or `crmsync status`.",
        "",
        _footer(source, now),
    ]
    return Alert(Kind.paused, f"[crmsync] {name} paused: vendor outage", "\n".join(lines))


def _budget_alert(crm: Crm, reason: str, source: str, now: dt.datetime) -> Alert:
    name = crm.value
    lines = [
        f"crmsync paused {name}: {clip(reason, 500)}.",
        f"Contacts selected for {name} wait in Queued; no attempts are spent while paused.",
        "",
        "What to do:",
        "  - Nothing, if the budget is right: syncing goes on when the vendor's day resets.",
        f"  - Otherwise raise {name.upper()}_DAILY_REQUEST_LIMIT and restart the workers.",
        "",
        _footer(source, now),
    ]
    return Alert(
        Kind.paused, f"[crmsync] {name} paused: daily request budget used", "\n".join(lines)
    )


def rate_alert(
    reading: RateReading, again: bool, min_interval: float, source: str, now: dt.datetime
) -> Alert:
    name = reading.crm.value
    pct = f"{reading.rate:.0%}"
    subject = (
        f"[crmsync] {name}: error rate {pct} over the last {reading.window_minutes} min "
        f"(threshold {reading.threshold:.0%})"
    )
    retried = reading.failed - reading.errors
    lines = [
        f"{'Still: in' if again else 'In'} the last {reading.window_minutes} minutes, "
        f"{reading.failed} of {reading.attempted} rows pushed to {name} failed "
        f"({retried} will be retried, {reading.errors} reached Error).",
        "",
        f"Most recent failure: {clip(reading.last_failure)}",
        "",
        "What to do:",
        f"  - Look at GET /api/v3/crm/health and {name}'s own status page; a vendor outage "
        "heals by itself through the retries.",
        f"  - Contacts that reached Error: GET /api/v3/crm/status/failed?crm={name}; once "
        f"the cause is fixed, `crmsync retry --crm {name} --all-failed`.",
        "",
        f"Repeated at most every {duration(min_interval)} while the rate stays above "
        "the threshold.",
        _footer(source, now),
    ]
    return Alert(Kind.error_rate, subject, "\n".join(lines))


def rate_ok_alert(reading: RateReading, source: str, now: dt.datetime) -> Alert:
    name = reading.crm.value
    subject = (
        f"[crmsync] {name}: error rate back to {reading.rate:.0%} "
        f"(threshold {reading.threshold:.0%})"
    )
    body = (
        f"In the last {reading.window_minutes} minutes, {reading.failed} of "
        f"{reading.attempted} rows pushed to {name} failed.\n\n{_footer(source, now)}"
    )
    return Alert(Kind.error_rate_ok, subject, body)
