"""Shared connector pieces: the once-per-batch payload memo, hashing."""

from __future__ import annotations

import uuid

from crmsync.connectors.base import ContactPayload, MappedOnce, stable_hash


def _contact(email: str) -> ContactPayload:
    return ContactPayload(contact_id=uuid.uuid4(), email=email)


def test_a_payload_is_built_once_between_fingerprint_and_push() -> None:
    calls: list[str] = []

    def build(contact: ContactPayload) -> dict[str, str]:
        calls.append(contact.email)
        return {"email": contact.email}

    memo = MappedOnce(build)
    a, b = _contact("a@x.com"), _contact("b@x.com")
    first = memo.remember(a)
    assert memo.take(a) is first and calls == ["a@x.com"]
    assert memo.take(a) == {"email": "a@x.com"} and calls == ["a@x.com"] * 2  # taken: rebuilt
    assert memo.take(b) == {"email": "b@x.com"}  # never remembered: built on demand
    # An equal but different object is not confused with the remembered one.
    twin = ContactPayload(contact_id=a.contact_id, email="a@x.com")
    memo.remember(a)
    assert memo.take(twin) is not None and len(calls) == 5


def test_unpushed_payloads_do_not_pile_up() -> None:
    memo = MappedOnce(lambda c: c.email, limit=3)
    contacts = [_contact(f"{i}@x.com") for i in range(10)]
    for contact in contacts:
        memo.remember(contact)
    assert len(memo._items) == 3
    assert memo.take(contacts[-1]) == "9@x.com"


def test_stable_hash_ignores_key_order() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
