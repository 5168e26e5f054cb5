"""Push: send a batch to the vendor and turn its answer, or its failure, into row updates.

Rows the vendor answered keep their answer whatever happens to the rest of the batch. A batch
that fails as a whole spends an attempt per row (`state.retry_or_give_up`), except where the
CRM is paused (429, credentials, configuration) or in an outage, or the request was never sent:
those rows go back unattempted (`state.release`). The CRM's pauses and the outage breaker are
the gate's (`gate.py`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from crmsync import metrics
from crmsync.clock import Clock
from crmsync.connectors.base import (
    AuthFailed,
    Connector,
    ConnectorError,
    Misconfigured,
    RateLimited,
    Retry,
    RowResult,
    Transient,
    Unreachable,
)
from crmsync.enums import Crm
from crmsync.settings import CrmSettings
from crmsync.sync import control, outage
from crmsync.sync.gate import Gate
from crmsync.sync.state import (
    Claimed,
    Outcome,
    RetryPolicy,
    RowUpdate,
    apply_result,
    release,
    retry_or_give_up,
)

__all__ = ["Push"]

log = logging.getLogger(__name__)


class Push:
    """Pushes one CRM's batches: `await push(rows, fingerprints)` gives their row updates."""

    def __init__(
        self,
        crm: Crm,
        connector: Connector,
        settings: CrmSettings,
        policy: RetryPolicy,
        gate: Gate,
        clock: Clock,
    ) -> None:
        self.crm = crm
        self.connector = connector
        self.settings = settings
        self.policy = policy
        self.gate = gate
        self.clock = clock

    async def __call__(
        self, rows: list[Claimed], fingerprints: list[str], *, probe: bool = False
    ) -> list[RowUpdate]:
        now = self.clock()
        try:
            results = await self.connector.push([row.payload for row in rows])
            if len(results) != len(rows):
                raise ConnectorError(
                    f"connector returned {len(results)} results for {len(rows)} rows"
                )
        except RateLimited as exc:
            await self.gate.vendor_answered(probe)
            metrics.RATE_LIMITED.labels(self.crm.value).inc()
            until = now + dt.timedelta(seconds=exc.retry_after)
            await self.gate.pause(control.PauseKind.rate_limit, until, exc.message)
            return self._partial(rows, fingerprints, exc, Outcome.rate_limited, until, None)
        except (AuthFailed, Misconfigured) as exc:
            await self.gate.vendor_answered(probe)
            kind = (
                control.PauseKind.auth
                if isinstance(exc, AuthFailed)
                else control.PauseKind.configuration
            )
            until = now + dt.timedelta(seconds=self.settings.auth_retry_seconds)
            await self.gate.pause(kind, until, exc.message)
            outcome = Outcome.auth_failed if isinstance(exc, AuthFailed) else Outcome.misconfigured
            return self._partial(rows, fingerprints, exc, outcome, until, exc.message)
        except ConnectorError as exc:
            # Transient or another batch-wide failure: rows the vendor answered before it keep
            # their answer (an accepted row is Complete, with its vendor id); the others retry.
            partial: list[RowResult | None] = exc.partial or [None] * len(rows)
            down = outage.vendor_down(partial)
            if isinstance(exc, Transient) and down is None:
                down = True  # a timeout or no connection before any answer
            held = await self.gate.judge(down, exc.message, probe)
            if held is None and isinstance(exc, Unreachable):
                # Never sent, so never attempted: back soon, no attempt spent.
                held = now + self.gate.outage.interval(0)
            return self._after_failure(rows, fingerprints, partial, exc, held, now)
        except Exception as exc:
            log.exception("%s: connector failed unexpectedly", self.crm.value)
            if probe:
                await self.gate.judge(None, "", probe)
            reason = f"internal error in the {self.crm.value} connector: {type(exc).__name__}"
            return [retry_or_give_up(row, reason, None, self.policy, now) for row in rows]
        down = outage.vendor_down(results)
        if down:
            reason = next(r.reason for r in results if isinstance(r, Retry))
            held = await self.gate.judge(down, reason, probe)
            if held is not None:
                return self._after_failure(rows, fingerprints, results, None, held, now)
        else:
            await self.gate.judge(down, "", probe)
        return [
            apply_result(row, result, fingerprint, self.policy, now)
            for row, result, fingerprint in zip(rows, results, fingerprints, strict=True)
        ]

    def _after_failure(
        self,
        rows: list[Claimed],
        fingerprints: list[str],
        results: Sequence[RowResult | None],
        exc: ConnectorError | None,
        held: dt.datetime | None,
        now: dt.datetime,
    ) -> list[RowUpdate]:
        """A batch that failed as a whole (`exc`) or on the vendor's side: rows the vendor
        answered keep their answer. The others spend an attempt, unless they are `held`: the
        CRM is in an outage or the request was never sent. Those go back unattempted, due again
        at `held`.
        """
        out = []
        for row, fingerprint, result in zip(rows, fingerprints, results, strict=True):
            if held is not None and (result is None or outage.vendor_failure(result)):
                # A row's own vendor failure (a Retry) says more than the batch's exception.
                cause = result if isinstance(result, Retry) else exc
                assert cause is not None
                reason = cause.reason if isinstance(cause, Retry) else cause.message
                out.append(release(row, Outcome.unavailable, held, reason, cause.http_status))
            elif result is None:
                assert exc is not None
                out.append(retry_or_give_up(row, exc.message, exc.http_status, self.policy, now))
            else:
                out.append(apply_result(row, result, fingerprint, self.policy, now))
        return out

    def _partial(
        self,
        rows: list[Claimed],
        fingerprints: list[str],
        exc: ConnectorError,
        outcome: Outcome,
        until: dt.datetime,
        message: str | None,
    ) -> list[RowUpdate]:
        """Rows the vendor answered keep their result; the others go back, no attempt spent."""
        now = self.clock()
        partial: list[RowResult | None] = exc.partial or [None] * len(rows)
        out = []
        for row, fingerprint, result in zip(rows, fingerprints, partial, strict=True):
            if result is None:
                out.append(release(row, outcome, until, message, exc.http_status))
            else:
                out.append(apply_result(row, result, fingerprint, self.policy, now))
        return out
