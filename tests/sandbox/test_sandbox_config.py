"""Unit tests of the option model: fault specs, validation, start-up options."""

from __future__ import annotations

import pytest

from crmsync.sandbox import SandboxConfig, parse_faults
from crmsync.sandbox.config import BrevoOptions, options_dict, validate_updates


def test_parse_faults_types_values_and_merges_specs() -> None:
    faults = parse_faults(
        [
            "hubspot:error_rate=0.2,latency_ms=50",
            "brevo:burst_429=3,bad_credentials=true",
            "hubspot:invalid_email_mode=batch_400;mautic:over_limit_status=400",
        ]
    )
    assert faults == {
        "hubspot": {"error_rate": 0.2, "latency_ms": 50.0, "invalid_email_mode": "batch_400"},
        "brevo": {"burst_429": 3, "bad_credentials": True},
        "mautic": {"over_limit_status": 400},
    }


def test_parse_faults_single_string_and_all() -> None:
    faults = parse_faults("all:latency_ms=5")
    assert set(faults) == {"brevo", "hubspot", "mautic", "n8n"}
    assert all(options == {"latency_ms": 5.0} for options in faults.values())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hubspot", "must look like 'vendor:key=value"),
        ("hubspot:", "must look like 'vendor:key=value"),
        ("salesforce:error_rate=0.1", "unknown CRM 'salesforce'"),
        ("hubspot:error_rate", "'error_rate' is not key=value"),
        ("hubspot:nonsense=1", "unknown hubspot option 'nonsense'"),
        ("hubspot:error_rate=lots", "hubspot option 'error_rate' must be a number, got 'lots'"),
        ("hubspot:error_rate=1.5", "hubspot option 'error_rate' must be <= 1.0"),
        ("brevo:latency_ms=-1", "brevo option 'latency_ms' must be >= 0"),
        ("brevo:burst_429=2.5", "brevo option 'burst_429' must be a whole number"),
        ("n8n:bad_credentials=maybe", "n8n option 'bad_credentials' must be true or false"),
        ("n8n:response_mode=streaming", "must be one of onReceived, lastNode"),
        ("mautic:over_limit_status=404", "must be one of 400, 500"),
        ("mautic:rate_limit_per_10s=5", "unknown mautic option 'rate_limit_per_10s'"),
    ],
)
def test_parse_faults_errors_are_clear(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match="fault spec") as info:
        parse_faults(spec)
    assert message in str(info.value)


def test_json_updates_are_strict_about_types() -> None:
    assert validate_updates("hubspot", {"error_rate": 1, "burst_429": 2}) == {
        "error_rate": 1.0,
        "burst_429": 2,
    }
    with pytest.raises(ValueError, match="must be a number, got True"):
        validate_updates("hubspot", {"error_rate": True})
    with pytest.raises(ValueError, match="must be true or false, got 'true'"):
        validate_updates("hubspot", {"bad_credentials": "true"})
    with pytest.raises(ValueError, match="must be a string"):
        validate_updates("n8n", {"response_mode": 1})


def test_config_rejects_bad_faults_and_auth_mode() -> None:
    with pytest.raises(ValueError, match="unknown brevo option 'x'"):
        SandboxConfig(faults={"brevo": {"x": 1}})
    with pytest.raises(ValueError, match="unknown CRM 'zoho'"):
        SandboxConfig(faults={"zoho": {}})
    with pytest.raises(ValueError, match="n8n_auth must be"):
        SandboxConfig(n8n_auth="jwt")


def test_initial_options_apply_faults_then_no_rate_limits() -> None:
    config = SandboxConfig(faults={"brevo": {"error_rate": 0.5, "rate_limit_per_second": 3}})
    options = config.initial_options("brevo")
    assert isinstance(options, BrevoOptions)
    assert (options.error_rate, options.rate_limit_per_second) == (0.5, 3)
    assert options.rate_limit_per_hour == 36_000

    off = SandboxConfig(no_rate_limits=True, faults={"brevo": {"rate_limit_per_second": 3}})
    brevo = off.initial_options("brevo")
    assert isinstance(brevo, BrevoOptions)
    assert (brevo.rate_limit_per_second, brevo.rate_limit_per_hour) == (0, 0)
    hubspot = options_dict(off.initial_options("hubspot"))
    assert (hubspot["rate_limit_per_10s"], hubspot["daily_limit"]) == (0, 0)


def test_defaults_follow_the_reference() -> None:
    config = SandboxConfig()
    assert options_dict(config.initial_options("brevo"))["rate_limit_per_second"] == 10
    assert options_dict(config.initial_options("hubspot"))["rate_limit_per_10s"] == 100
    assert options_dict(config.initial_options("hubspot"))["daily_limit"] == 250_000
    assert options_dict(config.initial_options("mautic"))["rate_limit_per_hour"] == 0
    assert options_dict(config.initial_options("mautic"))["batch_limit"] == 200


def test_config_json_round_trip() -> None:
    config = SandboxConfig(
        seed=7,
        no_rate_limits=True,
        faults=parse_faults("n8n:response_mode=lastNode"),
        n8n_webhooks=("a", "b/c"),
        custom_fields=True,
    )
    assert SandboxConfig.from_json(config.to_json()) == config
