"""Driver-level helpers of the hot paths behave like the library types they stand in for."""

from __future__ import annotations

import pickle
import uuid

from hypothesis import given
from hypothesis import strategies as st

from crmsync.sqlutil import uuid_from_hex


@given(st.uuids())
def test_uuid_from_hex_equals_the_parsed_uuid(value: uuid.UUID) -> None:
    made = uuid_from_hex(value.hex)
    assert made == value and hash(made) == hash(value)
    assert str(made) == str(value) and repr(made) == repr(value)
    assert made.is_safe is uuid.SafeUUID.unknown
    assert pickle.loads(pickle.dumps(made)) == value
    assert {made: 1}[value] == 1
