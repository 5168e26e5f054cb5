"""Every body the Brevo connector sends validates against Brevo's own spec (brevo_swagger.yaml).

Swagger 2.0 `definitions` are a JSON Schema draft 4 dialect, so bodies are validated with
`jsonschema`'s Draft4Validator against the schema each operation declares for its body parameter
(resolved through `#/definitions/...`). The spec's objects are open (unknown keys allowed) and
Brevo would silently ignore a misspelt key such as `updateEnable`, so the definitions are closed
here: an object that lists its properties accepts no others. Free-form objects (`attributes`,
declared with no properties) stay open.
"""

from __future__ import annotations

import copy
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError

from crmsync.connectors.base import ContactPayload
from crmsync.connectors.brevo import BrevoConnector
from crmsync.settings import BrevoSettings

SPEC = Path(__file__).with_name("brevo_swagger.yaml")
BASE = "https://api.brevo.com/v3"


@cache
def spec() -> dict[str, Any]:
    with SPEC.open(encoding="utf-8") as handle:
        loaded: dict[str, Any] = yaml.load(
            handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
    return loaded


def closed(node: Any) -> Any:
    """A copy of a schema tree in which every object with listed properties is closed."""
    if isinstance(node, list):
        return [closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: closed(value) for key, value in node.items()}
    if out.get("properties") and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@cache
def body_validator(path: str, method: str) -> Draft4Validator:
    """The validator of the body parameter the spec declares for `method path`."""
    operation = spec()["paths"][path][method]
    (parameter,) = [p for p in operation["parameters"] if p["in"] == "body"]
    schema = {
        "definitions": closed(copy.deepcopy(spec()["definitions"])),
        **parameter["schema"],
    }
    Draft4Validator.check_schema(schema)
    return Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)


def contacts_validator() -> Draft4Validator:
    return body_validator("/contacts", "post")


def import_validator() -> Draft4Validator:
    return body_validator("/contacts/import", "post")


def make_settings(**overrides: Any) -> BrevoSettings:
    values: dict[str, Any] = {
        "api_key": "contract-test-key",
        "api_base_url": BASE,
        "list_id": 30,
        "rate_limit_per_second": 0,
        "import_threshold": 1000,
    }
    values.update(overrides)
    return BrevoSettings(_env_file=None, **values)  # type: ignore[call-arg]


DOMAIN = uuid.UUID("11111111-1111-1111-1111-111111111111")
PAGE = uuid.UUID("22222222-2222-2222-2222-222222222222")

SAMPLES = [
    ContactPayload(
        contact_id=uuid.UUID(int=1),
        email="jane.doe@example.com",
        name="Jane van Dyke",
        phone_number="+33 1 42 68 53 00",
        email_type="CORPORATE",
        has_gmail=False,
        context="Team page",
        source_url="https://example.com/team",
        domain_id=DOMAIN,
        page_id=PAGE,
        source_job_id=uuid.UUID(int=9),
        external_id="73878",
    ),
    ContactPayload(
        contact_id=uuid.UUID(int=2),
        email="info@example.com",
        name="Contact at example.com",
        phone_number="Phone not found",
        has_gmail=True,
    ),
    ContactPayload(contact_id=uuid.UUID(int=3), email="bare@example.org"),
    ContactPayload(
        contact_id=uuid.UUID(int=4),
        email="zoë@exämple.de",
        name="Zoë Ødegård-Ünal",
        phone_number="0044 20 7946 0958",
        email_type="UNKNOWN",
        source_url="https://exämple.de/über",
        domain_id=DOMAIN,
        page_id=PAGE,
    ),
]


class Capture:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v3/contacts/import":
            return httpx.Response(202, json={"processId": 1})
        if request.url.path.startswith("/v3/processes/"):
            return httpx.Response(200, json={"id": 1, "name": "IMPORTUSER", "status": "completed"})
        return httpx.Response(201, json={"id": 1})


async def nothing(seconds: float) -> None:
    return None


async def captured(**overrides: Any) -> list[httpx.Request]:
    capture = Capture()
    client = httpx.AsyncClient(transport=httpx.MockTransport(capture))
    connector = BrevoConnector(make_settings(**overrides), client, sleep=nothing)
    await connector.push(SAMPLES)
    await client.aclose()
    return capture.requests


def spec_path(request: httpx.Request) -> str:
    path = request.url.path.removeprefix(spec()["basePath"])
    if path.startswith("/processes/"):
        return "/processes/{processId}"
    return path


# -- the spec and the validator ------------------------------------------------------------------


def test_spec_is_brevos_v3_swagger() -> None:
    assert spec()["swagger"] == "2.0"
    assert spec()["basePath"] == "/v3"
    assert spec()["info"]["license"]["name"] == "MIT"


@pytest.mark.parametrize(
    "wrong",
    [
        {"email": 42},
        {"email": "not-an-email"},
        {"email": "a@example.com", "listIds": ["30"]},
        {"email": "a@example.com", "listIds": 30},
        {"email": "a@example.com", "updateEnabled": "true"},
        {"email": "a@example.com", "updateEnable": True},  # misspelt: unknown key
        {"email": "a@example.com", "attributes": ["FIRSTNAME", "Jane"]},
        ["a@example.com"],
    ],
)
def test_validator_rejects_wrong_contact_bodies(wrong: Any) -> None:
    with pytest.raises(ValidationError):
        contacts_validator().validate(wrong)


@pytest.mark.parametrize(
    "wrong",
    [
        {"jsonBody": {"email": "a@example.com"}, "listIds": [30]},
        {"jsonBody": [{"email": 1}], "listIds": [30]},
        {"jsonBody": [{"email": "a@example.com", "attrs": {}}], "listIds": [30]},
        {"jsonBody": [], "listIds": [30], "updateExistingContacts": "yes"},
        {"jsonBody": [], "listIds": [30], "disableNotifications": True},
        {"jsonBody": [], "listIds": "30"},
    ],
)
def test_validator_rejects_wrong_import_bodies(wrong: Any) -> None:
    with pytest.raises(ValidationError):
        import_validator().validate(wrong)


def test_validator_accepts_the_specs_own_shape() -> None:
    contacts_validator().validate(
        {"email": "elly@example.com", "attributes": {"FNAME": "Elly"}, "listIds": [36]}
    )
    import_validator().validate(
        {"jsonBody": [{"email": "a@example.com", "attributes": {"X": 1}}], "listIds": [76]}
    )


# -- what the connector sends --------------------------------------------------------------------


@pytest.mark.parametrize("list_id", [30, None])
async def test_single_upsert_bodies_match_the_spec(list_id: int | None) -> None:
    requests = await captured(list_id=list_id)
    assert len(requests) == len(SAMPLES)
    for request in requests:
        assert (request.method, spec_path(request)) == ("POST", "/contacts")
        assert "api-key" in request.headers  # the spec's securityDefinitions header name
        contacts_validator().validate(orjson.loads(request.content))


async def test_sms_retry_body_matches_the_spec() -> None:
    answers = iter(
        [
            httpx.Response(
                400,
                json={
                    "code": "duplicate_parameter",
                    "message": "SMS is already associated with another Contact",
                    "metadata": {"duplicate_identifiers": ["SMS"]},
                },
            ),
            httpx.Response(204),
        ]
    )
    capture: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        capture.append(request)
        return next(answers)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    await BrevoConnector(make_settings(), client).push([SAMPLES[0]])
    assert len(capture) == 2
    for request in capture:
        contacts_validator().validate(orjson.loads(request.content))


async def test_import_bodies_match_the_spec() -> None:
    requests = await captured(import_threshold=2)
    imports = [r for r in requests if spec_path(r) == "/contacts/import"]
    assert len(imports) == 1
    assert imports[0].method == "POST"
    sent = orjson.loads(imports[0].content)
    import_validator().validate(sent)
    assert sent["listIds"] == [30]
    polls = [r for r in requests if spec_path(r) == "/processes/{processId}"]
    assert polls and all(r.method == "GET" for r in polls)
    for request in requests:
        assert request.method.lower() in spec()["paths"][spec_path(request)]
        if spec_path(request) == "/contacts":  # the non-ASCII address is sent one by one
            contacts_validator().validate(orjson.loads(request.content))


_text = st.one_of(st.none(), st.text(max_size=40))


@settings(max_examples=60, deadline=None)
@given(
    email=st.emails(),
    name=_text,
    phone=st.one_of(_text, st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)),
    email_type=st.one_of(st.none(), st.sampled_from(["SERVICE", "CORPORATE", "FREE", "UNKNOWN"])),
    has_gmail=st.one_of(st.none(), st.booleans()),
    source_url=_text,
    domain_id=st.one_of(st.none(), st.uuids()),
    list_id=st.one_of(st.none(), st.integers(min_value=1, max_value=2**62)),
)
def test_any_contact_maps_to_valid_bodies(
    email: str,
    name: str | None,
    phone: str | None,
    email_type: str | None,
    has_gmail: bool | None,
    source_url: str | None,
    domain_id: uuid.UUID | None,
    list_id: int | None,
) -> None:
    connector = BrevoConnector(make_settings(list_id=list_id), httpx.AsyncClient())
    row = ContactPayload(
        contact_id=uuid.uuid4(),
        email=email,
        name=name,
        phone_number=phone,
        email_type=email_type,
        has_gmail=has_gmail,
        source_url=source_url,
        domain_id=domain_id,
        page_id=domain_id,
    )
    contacts_validator().validate(connector.contact_body(row))
    if list_id is not None:
        import_validator().validate(connector.import_body([row, row]))
