"""The sandbox enforces fields as each vendor does, lists and creates them, and updates contacts
by id (crm-apis.md; issue 20 sections 4 and 7)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from crmsync.sandbox import SandboxConfig, SandboxServer


@pytest.fixture(scope="module")
def fresh() -> Iterator[SandboxServer]:
    """A fresh account: only the vendors' own fields exist."""
    with SandboxServer(SandboxConfig(no_rate_limits=True)) as server:
        yield server


@pytest.fixture
def account(fresh: SandboxServer) -> SandboxServer:
    fresh.reset(faults=True)
    return fresh


def client(sb: SandboxServer, crm: str) -> httpx.Client:
    return httpx.Client(base_url=sb.url, headers=sb.auth_headers(crm), timeout=10)


# -- fields ---------------------------------------------------------------------------------------


def test_brevo_drops_unknown_attributes_and_wrong_types_until_they_exist(
    account: SandboxServer,
) -> None:
    with client(account, "brevo") as http:
        body = {
            "email": "a@example.com",
            "updateEnabled": True,
            "attributes": {"FIRSTNAME": "Ann", "DOMAIN_ID": "d-1", "HAS_GMAIL": True},
        }
        assert http.post("/brevo/v3/contacts", json=body).status_code == 201  # no complaint
        kept = account.contacts("brevo")[0]["fields"]["attributes"]
        assert kept == {"FIRSTNAME": "Ann"}

        made = http.post("/brevo/v3/contacts/attributes/normal/domain_id", json={"type": "text"})
        assert made.status_code == 201
        assert (
            http.post(
                "/brevo/v3/contacts/attributes/normal/HAS_GMAIL", json={"type": "boolean"}
            ).status_code
            == 201
        )
        again = http.post("/brevo/v3/contacts/attributes/normal/DOMAIN_ID", json={"type": "text"})
        assert again.status_code == 400 and again.json()["code"] == "invalid_parameter"
        names = [a["name"] for a in http.get("/brevo/v3/contacts/attributes").json()["attributes"]]
        assert names == ["FIRSTNAME", "LASTNAME", "SMS", "DOMAIN_ID", "HAS_GMAIL"]

        body["attributes"] = {"DOMAIN_ID": "d-2", "HAS_GMAIL": "yes"}  # a string for a boolean
        assert http.post("/brevo/v3/contacts", json=body).status_code == 204
        assert account.contacts("brevo")[0]["fields"]["attributes"] == {"DOMAIN_ID": "d-2"}


def test_mautic_drops_unknown_fields_pages_its_field_list_and_suffixes_taken_aliases(
    account: SandboxServer,
) -> None:
    with client(account, "mautic") as http:
        item = {"email": "a@example.com", "firstname": "Ann", "scrapersky_page_id": "p-1"}
        saved = http.post("/mautic/api/contacts/new", json=item)
        assert saved.status_code == 201
        assert "scrapersky_page_id" not in saved.json()["contact"]["fields"]["all"]

        page = http.get("/mautic/api/fields/contact").json()
        assert page["total"] == 28 and len(page["fields"]) == 28  # one default page (30)
        new = {"label": "ScraperSky page ID", "alias": "scrapersky_page_id", "type": "text"}
        assert http.post("/mautic/api/fields/contact/new", json=new).json()["field"]["alias"] == (
            "scrapersky_page_id"
        )
        twice = http.post("/mautic/api/fields/contact/new", json=new).json()["field"]
        assert twice["alias"] == "scrapersky_page_id1"  # Mautic never refuses: it renames
        long = {"label": "x", "alias": "A Very Long Alias For A Contact Field"}
        cut = http.post("/mautic/api/fields/contact/new", json=long).json()["field"]["alias"]
        assert cut == "a_very_long_alias_for_a_c" and len(cut) == 25
        first = http.get("/mautic/api/fields/contact").json()
        assert first["total"] == 31 and len(first["fields"]) == 30
        rest = http.get("/mautic/api/fields/contact", params={"start": 30}).json()["fields"]
        assert [f["alias"] for f in rest] == ["a_very_long_alias_for_a_c"]
        missing = http.post("/mautic/api/fields/contact/new", json={"type": "text"})
        assert missing.status_code == 400 and "label" in missing.json()["errors"][0]["details"]

        assert http.post("/mautic/api/contacts/new", json=item).status_code == 200
        stored = account.contacts("mautic")[0]["fields"]
        assert stored["scrapersky_page_id"] == "p-1"


def test_hubspot_starts_without_custom_properties(account: SandboxServer) -> None:
    with client(account, "hubspot") as http:
        names = {
            p["name"] for p in http.get("/hubspot/crm/v3/properties/contacts").json()["results"]
        }
        assert "email" in names and not any(n.startswith("scrapersky_") for n in names)


def test_the_fields_option_starts_with_crmsyncs_fields() -> None:
    with SandboxServer(SandboxConfig(custom_fields=True)) as sb:
        with client(sb, "brevo") as http:
            found = http.get("/brevo/v3/contacts/attributes").json()["attributes"]
            assert {"DOMAIN_ID", "HAS_GMAIL"} <= {a["name"] for a in found}
        with client(sb, "mautic") as http:
            fields = http.get("/mautic/api/fields/contact", params={"limit": 100}).json()
            assert "scrapersky_has_gmail" in {f["alias"] for f in fields["fields"]}


# -- updates by id (uses the session sandbox, which has the fields) ------------------------------


def test_brevo_put_by_id_changes_the_email_of_the_same_contact(sb: SandboxServer) -> None:
    with client(sb, "brevo") as http:
        body = {"email": "old@example.com", "updateEnabled": True, "attributes": {"PAGE_ID": "p"}}
        brevo_id = http.post("/brevo/v3/contacts", json=body).json()["id"]
        http.post("/brevo/v3/contacts", json={**body, "email": "other@example.com"})
        moved = http.put(
            f"/brevo/v3/contacts/{brevo_id}", json={"attributes": {"EMAIL": "new@example.com"}}
        )
        assert moved.status_code == 204
        by_email = http.get("/brevo/v3/contacts/new%40example.com").json()
        assert by_email["id"] == brevo_id and by_email["attributes"] == {"PAGE_ID": "p"}
        assert http.get("/brevo/v3/contacts/old%40example.com").status_code == 404
        by_type = http.get(
            f"/brevo/v3/contacts/{brevo_id}", params={"identifierType": "contact_id"}
        )
        assert by_type.json()["email"] == "new@example.com"

        taken = http.put(
            f"/brevo/v3/contacts/{brevo_id}", json={"attributes": {"EMAIL": "other@example.com"}}
        )
        assert taken.status_code == 400
        assert taken.json()["metadata"] == {"duplicate_identifiers": ["email"]}
        gone = http.put("/brevo/v3/contacts/999999", json={"attributes": {}})
        assert gone.status_code == 404
        assert gone.json() == {"code": "document_not_found", "message": "Contact does not exist"}
        bad = http.get("/brevo/v3/contacts/1", params={"identifierType": "nope"})
        assert bad.status_code == 400
    assert sorted(c["email"] for c in sb.contacts("brevo")) == [
        "new@example.com",
        "other@example.com",
    ]


def test_hubspot_batch_update_by_id(sb: SandboxServer) -> None:
    with client(sb, "hubspot") as http:
        upsert = {
            "inputs": [
                {"id": e, "idProperty": "email", "properties": {"email": e, "firstname": "A"}}
                for e in ("old@example.com", "other@example.com")
            ]
        }
        ids = {
            r["properties"]["email"]: r["id"]
            for r in http.post("/hubspot/crm/v3/objects/contacts/batch/upsert", json=upsert).json()[
                "results"
            ]
        }
        update = {
            "inputs": [
                {"id": ids["old@example.com"], "properties": {"email": "New@Example.com"}},
                {"id": "424242", "properties": {"email": "ghost@example.com"}},
                {"id": ids["other@example.com"], "properties": {"email": "new@example.com"}},
            ]
        }
        answer = http.post("/hubspot/crm/v3/objects/contacts/batch/update", json=update)
        assert answer.status_code == 207
        body = answer.json()
        assert [r["id"] for r in body["results"]] == [ids["old@example.com"]]
        assert body["results"][0]["properties"]["firstname"] == "A"  # PATCH semantics
        errors = {e["category"]: e["context"]["ids"] for e in body["errors"]}
        assert errors == {"OBJECT_NOT_FOUND": ["424242"], "CONFLICT": [ids["other@example.com"]]}
        unknown = http.post(
            "/hubspot/crm/v3/objects/contacts/batch/update",
            json={"inputs": [{"id": ids["old@example.com"], "properties": {"nope": "x"}}]},
        )
        assert unknown.status_code == 400 and "PROPERTY_DOESNT_EXIST" in unknown.json()["message"]
    assert sorted(c["email"] for c in sb.contacts("hubspot")) == [
        "new@example.com",
        "other@example.com",
    ]


def test_mautic_patch_edit_by_id_and_merge(sb: SandboxServer) -> None:
    with client(sb, "mautic") as http:
        made = http.post(
            "/mautic/api/contacts/batch/new",
            json=[
                {"email": "old@example.com", "firstname": "Ann"},
                {"email": "other@example.com", "lastname": "Lee"},
            ],
        ).json()["contacts"]
        old_id, other_id = made[0]["id"], made[1]["id"]
        edited = http.patch(
            f"/mautic/api/contacts/{old_id}/edit", json={"email": "new@example.com"}
        )
        assert edited.status_code == 200
        assert edited.json()["contact"]["fields"]["all"]["firstname"] == "Ann"
        assert http.patch("/mautic/api/contacts/99999/edit", json={}).status_code == 404
        # A new email another contact has: Mautic merges that one into the edited contact.
        merged = http.patch(
            f"/mautic/api/contacts/{old_id}/edit", json={"email": "other@example.com"}
        )
        assert merged.status_code == 200 and merged.json()["contact"]["id"] == old_id
        assert http.get(f"/mautic/api/contacts/{other_id}").status_code == 404
    stored = sb.contacts("mautic")
    assert [(c["email"], c["id"]) for c in stored] == [("other@example.com", old_id)]
    assert stored[0]["fields"]["lastname"] == "Lee" and stored[0]["fields"]["firstname"] == "Ann"
