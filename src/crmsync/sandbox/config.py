"""What a sandbox run is configured with: credentials, per-vendor fault/limit options, seed.

Two layers:

- `SandboxConfig` is fixed when the app starts (credentials, the n8n webhook registry, whether
  the vendors start with crmsync's custom fields, the random seed).
- Each vendor's *options* (`BrevoOptions`, `HubSpotOptions`, ...) hold its faults, rate limits and
  behaviour switches. They start from the dataclass defaults, then `SandboxConfig.faults`, then
  `no_rate_limits`; they can be changed at run time with `PUT /_sandbox/{crm}/faults` and go back
  to their start values on `POST /_sandbox/reset?faults=true`.

Every way of setting an option (CLI spec, config, HTTP) goes through `validate_updates`, so a bad
key or value gives the same clear message everywhere.

Options whose vendor behaviour is UNVERIFIED in `crm-apis.md` (HubSpot's invalid email in a batch,
Mautic's over-limit status and the JSON shape of its `errors`) are switches here, defaulting to
the behaviour the reference considers most likely.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

VENDORS: tuple[str, ...] = ("brevo", "hubspot", "mautic", "n8n")
# How a fake counts requests against a limit: per fixed window, or over a rolling one.
WINDOW_KINDS: tuple[str, ...] = ("fixed", "rolling")

_RATE = {"min": 0.0, "max": 1.0}
_NON_NEGATIVE = {"min": 0}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field carrying its validation rules (min/max/choices) and a one-line help."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(slots=True)
class FaultOptions:
    """Faults every vendor fake can inject (see `common.Vendor.dispatch` for the order)."""

    # A vendor outage, switched on and off at run time: every request fails before it reaches
    # the vendor's app ("5xx": answered 503; "drop": the connection is cut before an answer).
    outage: str = _opt(
        "off",
        "vendor outage: every request answered 503 (5xx) or its connection dropped (drop)",
        choices=("off", "5xx", "drop"),
    )
    error_rate: float = _opt(0.0, "share of requests answered 500/502/503", **_RATE)
    # A write path that is degraded while reads still work, as when a vendor's database is
    # overloaded: the worker's field check passes and its pushes fail.
    faults_on: str = _opt(
        "all",
        "which requests error_rate and timeout_rate hit: all, or writes (not GET) only",
        choices=("all", "writes"),
    )
    latency_ms: float = _opt(0.0, "added delay before every answer", **_NON_NEGATIVE)
    timeout_rate: float = _opt(0.0, "share of requests that hang for timeout_ms", **_RATE)
    timeout_ms: float = _opt(30_000.0, "how long a timed-out request hangs", **_NON_NEGATIVE)
    timeout_action: str = _opt(
        "504", "after hanging: answer 504, or drop the connection", choices=("504", "drop")
    )
    burst_429: int = _opt(0, "answer the next N rate-limited requests 429", **_NON_NEGATIVE)
    # A lost answer: the vendor did the write, the client never hears of it (crm-apis.md has
    # no source for how often; a reset connection or a proxy timeout does exactly this).
    apply_then_drop: int = _opt(
        0, "apply the next N requests, then drop the connection unanswered", **_NON_NEGATIVE
    )
    apply_then_drop_rate: float = _opt(
        0.0, "share of requests applied, then dropped unanswered", **_RATE
    )
    bad_credentials: bool = _opt(False, "refuse every credential")
    # No source shows Retry-After on these vendors' 429s (crm-apis.md 1.3, 2.5): off by default.
    retry_after: bool = _opt(False, "add a Retry-After header to 429 answers")

    # Option names that are rate limits (0 disables); `no_rate_limits` zeroes them.
    limit_fields: ClassVar[tuple[str, ...]] = ()


@dataclass(slots=True)
class BrevoOptions(FaultOptions):
    # General tier for /v3/contacts/* (crm-apis.md 1.3).
    rate_limit_per_second: int = _opt(10, "requests per second on /contacts*", **_NON_NEGATIVE)
    rate_limit_per_hour: int = _opt(36_000, "requests per hour on /contacts*", **_NON_NEGATIVE)
    # Brevo does not say how it slices time; both kinds, so a client can be tested on each.
    rate_window: str = _opt(
        "fixed",
        "count /contacts* limits per clock-aligned window, or over a rolling one",
        choices=WINDOW_KINDS,
    )
    # Endpoints Brevo's limits table does not list get 100 requests/hour (General tier).
    processes_limit_per_hour: int = _opt(
        100, "requests per hour on /processes (import status)", **_NON_NEGATIVE
    )
    import_queued_ms: float = _opt(200.0, "time an import stays 'queued'", **_NON_NEGATIVE)
    import_processing_ms: float = _opt(300.0, "time an import stays 'in_process'", **_NON_NEGATIVE)

    limit_fields: ClassVar[tuple[str, ...]] = (
        "rate_limit_per_second",
        "rate_limit_per_hour",
        "processes_limit_per_hour",
    )


@dataclass(slots=True)
class HubSpotOptions(FaultOptions):
    # Free/Starter tier (crm-apis.md 2.5).
    rate_limit_per_10s: int = _opt(100, "requests per 10 s window", **_NON_NEGATIVE)
    # HubSpot reports the window's length in X-HubSpot-RateLimit-Interval-Milliseconds; a
    # shorter one lets a test see several windows in seconds with the same semantics.
    rate_limit_interval_ms: int = _opt(10_000, "length of that window", min=100)
    # HubSpot's policy is TEN_SECONDLY_ROLLING; "fixed" counts per clock-aligned window.
    rate_window: str = _opt(
        "rolling", "count the window rolling, or per clock-aligned window", choices=WINDOW_KINDS
    )
    daily_limit: int = _opt(250_000, "requests per UTC day", **_NON_NEGATIVE)
    # UNVERIFIED whether one invalid email in batch/upsert fails the row (207) or the batch (400).
    invalid_email_mode: str = _opt(
        "multi_status",
        "invalid email in batch upsert: 207 per row, or 400 for the batch",
        choices=("multi_status", "batch_400"),
    )
    # Real batch answers are not promised in input order; turn on to catch clients that assume it.
    shuffle_results: bool = _opt(False, "return batch results in random order")
    # A 207 error's `context` and message are not promised to name the input (crm-apis.md 2.2).
    error_identity: str = _opt(
        "context",
        "207 errors name their input in context and message, or not at all",
        choices=("context", "none"),
    )

    limit_fields: ClassVar[tuple[str, ...]] = ("rate_limit_per_10s", "daily_limit")


@dataclass(slots=True)
class MauticOptions(FaultOptions):
    # Mautic ships with the limiter off (`api_rate_limiter_limit: 0`, crm-apis.md 3.4).
    rate_limit_per_hour: int = _opt(0, "requests per hour on /api (0 = off)", **_NON_NEGATIVE)
    # noxlogic's bundle counts a fixed hour from the first call; "rolling" is stricter.
    rate_window: str = _opt(
        "fixed",
        "count the hour from the first call (noxlogic), or over a rolling hour",
        choices=WINDOW_KINDS,
    )
    batch_limit: int = _opt(200, "api_batch_max_limit", min=1)
    # 500 in the code read, 400 per a newer docs PR (crm-apis.md 3.3): version dependent.
    over_limit_status: int = _opt(500, "status for a batch over batch_limit", choices=(400, 500))
    errors_format: str = _opt(
        "object",
        "batch 'errors' as an object keyed by index, or a list",
        choices=("object", "list"),
    )
    contacts_format: str = _opt(
        "list",
        "batch 'contacts': always a list, or an object keyed by index when an item failed",
        choices=("list", "object_on_gaps"),
    )
    api_disabled: bool = _opt(False, "answer 403 api_disabled to every /api call")
    basic_auth_enabled: bool = _opt(True, "accept HTTP basic auth")

    limit_fields: ClassVar[tuple[str, ...]] = ("rate_limit_per_hour",)


@dataclass(slots=True)
class N8nOptions(FaultOptions):
    response_mode: str = _opt(
        "onReceived", "webhook response mode", choices=("onReceived", "lastNode")
    )
    test_url_single_shot: bool = _opt(
        False, "a /webhook-test/ path answers once, then 404 until reset (as in the editor)"
    )


OPTION_CLASSES: dict[str, type[FaultOptions]] = {
    "brevo": BrevoOptions,
    "hubspot": HubSpotOptions,
    "mautic": MauticOptions,
    "n8n": N8nOptions,
}


@dataclass
class SandboxConfig:
    """Everything fixed when the sandbox starts.

    `faults` maps a vendor name to option overrides, e.g. `{"hubspot": {"error_rate": 0.2}}`
    (`parse_faults` builds it from CLI specs). `no_rate_limits` then zeroes every rate limit.
    `seed` makes injected faults repeatable (None: a fresh random sequence per run).
    `push_log` records who wrote which contact when (see `ContactStore`).
    """

    seed: int | None = 0
    no_rate_limits: bool = False
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Log every accepted contact write with its time and sender (`GET /_sandbox/{crm}/pushes`).
    # Off by default: the log grows with every write.
    push_log: bool = False
    # Log every request a vendor receives, with its time, endpoint, status and sender
    # (`GET /_sandbox/{crm}/requests`). Off by default: the log grows with every request.
    request_log: bool = False

    brevo_api_key: str = "sandbox-brevo-key"
    hubspot_access_token: str = "pat-na1-sandbox-token"
    # Start as an account where crmsync's custom fields already exist (as after `crmsync setup`):
    # Brevo attributes DOMAIN_ID, PAGE_ID, EMAIL_TYPE, SOURCE_URL, HAS_GMAIL; HubSpot properties
    # and Mautic contact fields scrapersky_domain_id, ... (crmsync's default names). False, the
    # default, is a fresh account: only the vendor's own fields exist.
    custom_fields: bool = False
    hubspot_portal_id: int = 12345678
    mautic_username: str = "sandbox"
    mautic_password: str = "sandbox-pass"
    mautic_client_id: str = "sandbox-client"
    mautic_client_secret: str = "sandbox-secret"
    mautic_version: str = "5.2.1"
    n8n_secret: str = "sandbox-n8n-secret"
    # "header": header `n8n_auth_header_name` must equal `n8n_auth_header_value`
    # (default "Bearer <n8n_secret>"); "basic": user `n8n_basic_user`, password `n8n_secret`.
    n8n_auth: str = "header"
    n8n_auth_header_name: str = "Authorization"
    n8n_auth_header_value: str | None = None
    n8n_basic_user: str = "sandbox"
    n8n_webhooks: tuple[str, ...] = ("crmsync",)

    def __post_init__(self) -> None:
        if self.n8n_auth not in ("header", "basic", "none"):
            raise ValueError(f"n8n_auth must be 'header', 'basic' or 'none', got {self.n8n_auth!r}")
        self.n8n_webhooks = tuple(path.strip("/") for path in self.n8n_webhooks)
        for vendor, updates in self.faults.items():
            validate_updates(vendor, updates)

    @property
    def n8n_expected_header(self) -> str:
        if self.n8n_auth_header_value is not None:
            return self.n8n_auth_header_value
        return f"Bearer {self.n8n_secret}"

    def initial_options(self, vendor: str) -> FaultOptions:
        """The vendor's options at start (and after a reset with faults)."""
        cls = _options_class(vendor)
        options = cls(**validate_updates(vendor, self.faults.get(vendor, {})))
        if self.no_rate_limits:
            for name in cls.limit_fields:
                setattr(options, name, 0)
        return options

    def to_json(self) -> str:
        """Serialised form, to hand the config to a sandbox in a subprocess."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SandboxConfig:
        data = json.loads(text)
        data["n8n_webhooks"] = tuple(data.get("n8n_webhooks", ()))
        return cls(**data)


def _options_class(vendor: str) -> type[FaultOptions]:
    try:
        return OPTION_CLASSES[vendor]
    except KeyError:
        raise ValueError(f"unknown CRM {vendor!r}; expected one of {', '.join(VENDORS)}") from None


def option_help(vendor: str) -> dict[str, str]:
    """Option name -> one-line description, for error messages and `--help`."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(_options_class(vendor))}


def options_dict(options: FaultOptions) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def validate_updates(
    vendor: str, updates: Mapping[str, Any], *, from_text: bool = False
) -> dict[str, Any]:
    """Check option updates for `vendor` and return them with proper Python types.

    `from_text` accepts strings for every type (CLI specs); otherwise JSON types must match
    (a bool is not a number, a float is not an int). Raises ValueError naming the bad key/value.
    """
    cls = _options_class(vendor)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    clean: dict[str, Any] = {}
    for key, raw in updates.items():
        spec = fields.get(key)
        if spec is None:
            raise ValueError(
                f"unknown {vendor} option {key!r}; known options: {', '.join(sorted(fields))}"
            )
        clean[key] = _coerce(vendor, key, str(spec.type), spec.metadata, raw, from_text)
    return clean


def _coerce(
    vendor: str, key: str, kind: str, meta: Mapping[str, Any], raw: Any, from_text: bool
) -> Any:
    where = f"{vendor} option {key!r}"
    value: Any
    if kind == "bool":
        if isinstance(raw, bool):
            value = raw
        elif from_text and isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            value = raw.strip().lower() in _TRUE
        else:
            raise ValueError(f"{where} must be true or false, got {raw!r}")
    elif kind in ("int", "float"):
        if from_text and isinstance(raw, str):
            try:
                raw = float(raw)  # "2.5" for an int option is "not whole", not "not a number"
            except ValueError:
                raise ValueError(f"{where} must be a number, got {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError(f"{where} must be a number, got {raw!r}")
        if kind == "int" and not float(raw).is_integer():
            raise ValueError(f"{where} must be a whole number, got {raw!r}")
        value = int(raw) if kind == "int" else float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where} must be a finite number, got {raw!r}")
    else:
        if not isinstance(raw, str):
            raise ValueError(f"{where} must be a string, got {raw!r}")
        value = raw.strip() if from_text else raw
    if "min" in meta and value < meta["min"]:
        raise ValueError(f"{where} must be >= {meta['min']}, got {raw!r}")
    if "max" in meta and value > meta["max"]:
        raise ValueError(f"{where} must be <= {meta['max']}, got {raw!r}")
    if "choices" in meta and value not in meta["choices"]:
        choices = ", ".join(str(c) for c in meta["choices"])
        raise ValueError(f"{where} must be one of {choices}, got {raw!r}")
    return value


def parse_faults(specs: str | Iterable[str]) -> dict[str, dict[str, Any]]:
    """Parse CLI fault specs into `SandboxConfig.faults`.

    A spec is `vendor:key=value,key=value`; several specs may be given as a list or joined with
    `;`. The vendor `all` applies the options to every vendor. Later values win.

    >>> parse_faults(["hubspot:error_rate=0.2,latency_ms=50", "brevo:burst_429=3"])
    {'hubspot': {'error_rate': 0.2, 'latency_ms': 50.0}, 'brevo': {'burst_429': 3}}
    """
    if isinstance(specs, str):
        specs = [specs]
    result: dict[str, dict[str, Any]] = {}
    for chunk in specs:
        for spec in chunk.split(";"):
            spec = spec.strip()
            if not spec:
                continue
            vendor, sep, body = spec.partition(":")
            vendor = vendor.strip().lower()
            if not sep or not body.strip():
                raise ValueError(
                    f"fault spec {spec!r} must look like 'vendor:key=value[,key=value...]'"
                )
            targets = VENDORS if vendor == "all" else (vendor,)
            if vendor != "all" and vendor not in VENDORS:
                raise ValueError(
                    f"fault spec {spec!r}: unknown CRM {vendor!r}; "
                    f"expected one of {', '.join(VENDORS)} or 'all'"
                )
            pairs: dict[str, str] = {}
            for item in body.split(","):
                key, eq, value = item.partition("=")
                if not eq or not key.strip():
                    raise ValueError(f"fault spec {spec!r}: {item.strip()!r} is not key=value")
                pairs[key.strip()] = value.strip()
            for target in targets:
                try:
                    clean = validate_updates(target, pairs, from_text=True)
                except ValueError as exc:
                    raise ValueError(f"fault spec {spec!r}: {exc}") from None
                result.setdefault(target, {}).update(clean)
    return result
