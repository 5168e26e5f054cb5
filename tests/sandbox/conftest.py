"""One sandbox per test session (thread variant, rate limits off), reset before every test.

The vendors start with crmsync's custom fields (`custom_fields=True`). Tests that need a rate
limit set it with `PUT /_sandbox/{crm}/faults`; tests that need another start-up config (a fresh
account without those fields, n8n basic auth) start their own `SandboxServer`.
Tests may freeze a vendor's clock through `sb.sandbox.<vendor>.clock`; it is restored here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from crmsync.sandbox import SandboxConfig, SandboxServer

CONFIG = SandboxConfig(no_rate_limits=True, custom_fields=True)


@pytest.fixture(scope="session")
def _server() -> Iterator[SandboxServer]:
    with SandboxServer(CONFIG) as server:
        yield server


@pytest.fixture
def sb(_server: SandboxServer) -> Iterator[SandboxServer]:
    _server.reset(faults=True)
    yield _server
    for vendor in _server.sandbox.vendors.values():
        vendor.clock = time.time


@pytest.fixture
def http(sb: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sb.url, timeout=10) as client:
        yield client
