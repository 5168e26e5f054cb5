"""What the templates draw, computed in Python: bar segments, sparkline points, page links.

Kept out of the templates so they stay markup, and so that these small calculations are tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from crmsync.enums import Crm, EmailType, SyncStatus
from crmsync.web.templating import STATUS_ORDER

SPARK_WIDTH = 240
SPARK_HEIGHT = 40
CRMS = tuple(crm.value for crm in Crm)
STATUS_FILTERS = tuple(f"{crm}_sync_status" for crm in CRMS)
SYNC_STATUSES = tuple(status.value for status in SyncStatus)
EMAIL_TYPES = tuple(kind.value for kind in EmailType)
# The list filters the Contacts page offers (a subset of the API's), by query parameter.
LIST_FILTERS = ("search", *STATUS_FILTERS, "email_type")


@dataclass(frozen=True, slots=True)
class Segment:
    status: str
    count: int
    x: float  # percent of the bar
    width: float  # percent of the bar


def bar_segments(counts: Mapping[str, int]) -> list[Segment]:
    """The stacked bar of a CRM's contacts per status, in `STATUS_ORDER`, zeros left out."""
    total = sum(counts.get(status, 0) for status in STATUS_ORDER)
    segments: list[Segment] = []
    x = 0.0
    for status in STATUS_ORDER:
        count = counts.get(status, 0)
        if count <= 0 or total <= 0:
            continue
        width = 100.0 * count / total
        segments.append(Segment(status, count, round(x, 3), round(width, 3)))
        x += width
    return segments


def sparkline(values: Sequence[int]) -> str:
    """SVG polyline points for `values` (oldest first) in a SPARK_WIDTH x SPARK_HEIGHT box."""
    if not values:
        return ""
    peak = max(values) or 1
    step = SPARK_WIDTH / max(1, len(values) - 1)
    usable = SPARK_HEIGHT - 4  # room for the stroke at the top and bottom
    return " ".join(
        f"{i * step:.1f},{SPARK_HEIGHT - 2 - usable * v / peak:.1f}" for i, v in enumerate(values)
    )


def query(params: Mapping[str, str | int | None], **changes: str | int | None) -> str:
    """A query string of `params` with `changes`, leaving out None and a zero offset."""
    merged = {**params, **changes}
    return urlencode(
        {k: v for k, v in merged.items() if v is not None and not (k == "offset" and v == 0)}
    )


@dataclass(frozen=True, slots=True)
class Pager:
    offset: int
    limit: int
    total: int
    shown: int
    exact: bool = True  # False: more than `total` match

    @property
    def first(self) -> int:
        return self.offset + 1 if self.shown else 0

    @property
    def last(self) -> int:
        return self.offset + self.shown

    @property
    def previous(self) -> int | None:
        return max(0, self.offset - self.limit) if self.offset > 0 else None

    @property
    def next(self) -> int | None:
        more = self.offset + self.shown < self.total or (
            not self.exact and self.shown == self.limit
        )
        return self.offset + self.limit if more else None
