"""OpenAPI links: how the id a response returns feeds the next request.

A client (or a stateful fuzzer such as schemathesis) reads from them that a created contact can
then be read, edited, selected for a CRM, retried and deleted, and so can a listed one. They are
added to the document FastAPI generates, by path and method (`operationRef`), so that they do
not depend on generated operation ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

CONTACTS = "/api/v3/contacts"
ONE = f"{CONTACTS}/{{contact_id}}"


def _ref(path: str, method: str) -> str:
    pointer = path.replace("~", "~0").replace("/", "~1")
    return f"#/paths/{pointer}/{method}"


def _contact_links(source: str) -> dict[str, dict[str, Any]]:
    """Links from a response whose body holds a contact id at the JSON pointer `source`."""
    expression = f"$response.body#{source}"
    by_path = {"parameters": {"path.contact_id": expression}}
    ids = [expression]
    return {
        "GetContact": {"operationRef": _ref(ONE, "get"), **by_path},
        "GetSyncHistory": {"operationRef": _ref(f"{ONE}/sync-history", "get"), **by_path},
        "UpdateContact": {"operationRef": _ref(ONE, "put"), **by_path},
        "PatchContact": {"operationRef": _ref(ONE, "patch"), **by_path},
        "DeleteContact": {"operationRef": _ref(ONE, "delete"), **by_path},
        "SelectForCrms": {
            "operationRef": _ref(f"{CONTACTS}/crm/select", "put"),
            "requestBody": {"contact_ids": ids, "crms": ["brevo", "hubspot", "mautic", "n8n"]},
        },
        "UnselectFromCrms": {
            "operationRef": _ref(f"{CONTACTS}/crm/select", "put"),
            "requestBody": {"contact_ids": ids, "crms": ["brevo"], "action": "unselect"},
        },
        "SetCurationStatus": {
            "operationRef": _ref(f"{CONTACTS}/status", "put"),
            "requestBody": {"contact_ids": ids, "status": "Queued"},
        },
        "RetryFailed": {
            "operationRef": _ref("/api/v3/crm/retry", "post"),
            "requestBody": {"crm": "hubspot", "contact_ids": ids},
        },
    }


# (path, method, status) -> the links of that response.
LINKS: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {
    (CONTACTS, "post", "201"): _contact_links("/id"),
    (CONTACTS, "get", "200"): _contact_links("/0/id"),
    (ONE, "get", "200"): _contact_links("/id"),
    (ONE, "put", "200"): _contact_links("/id"),
    (ONE, "patch", "200"): _contact_links("/id"),
}


def add_links(app: FastAPI) -> None:
    """Make `app.openapi()` return FastAPI's document with `LINKS` in its responses."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        for (path, method, status), links in LINKS.items():
            response = document["paths"][path][method]["responses"][status]
            response["links"] = links
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
