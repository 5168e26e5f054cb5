"""SQLite claim rows become `Claimed` objects without SQLAlchemy: the conversion must match the
typed path PostgreSQL takes, and the ids contacts share are built once."""

from __future__ import annotations

import uuid

from crmsync.sync import claim


def test_a_raw_sqlite_row_converts_like_a_typed_one() -> None:
    cid, domain, page, job = (uuid.uuid4() for _ in range(4))
    raw = (7, 2, "ext-1", "hash", "old@b.com", cid.hex, "a@b.com", "Ann Lee", "+44", "FREE", 1,
           "ctx", "https://b.com", domain.hex, page.hex, job.hex)  # fmt: skip
    typed = (7, 2, "ext-1", "hash", "old@b.com", cid, "a@b.com", "Ann Lee", "+44", "FREE", True,
             "ctx", "https://b.com", domain, page, job)  # fmt: skip
    assert claim.from_sqlite(raw) == claim.claimed(*typed)
    assert claim.from_sqlite(raw).payload.previous_email == "old@b.com"
    nulls = (*raw[:10], None, None, None, None, None, None)
    converted = claim.from_sqlite(nulls).payload
    assert converted.has_gmail is None and converted.domain_id is None
    assert converted.page_id is None and converted.source_job_id is None
    assert claim.from_sqlite((*raw[:10], 0, *raw[11:])).payload.has_gmail is False


def test_shared_ids_are_built_once_and_the_memo_stays_bounded() -> None:
    shared = claim.SharedIds(size=2)
    a, b, c = (uuid.uuid4() for _ in range(3))
    first = shared(a.hex)
    assert first == a and shared(a.hex) is first
    assert shared(None) is None
    assert shared(b.hex) == b
    assert shared(c.hex) == c  # a third id: the memo started over
    assert shared(a.hex) == a and shared(a.hex) is not first
