"""Alerts to people: contacts reaching Error, a CRM paused for auth or configuration, and a high
error rate, sent to a Slack-compatible webhook and/or by e-mail without ever slowing the sync.

Operator's view: docs/OPERATIONS.md ("Alerts"). Modules: `rules` (when), `messages` (what it
says), `channels` (webhook, SMTP), `outbox` (queue and retries), `alerter` (listeners, lifecycle).
"""

from crmsync.alerts.alerter import Alerter, from_settings
from crmsync.alerts.messages import Alert, Kind

__all__ = ["Alert", "Alerter", "Kind", "from_settings"]
