"""Without Debian's Chromium the browser tests skip, saying why; CI makes that a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import browser


def test_a_missing_browser_skips_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.delenv("CRMSYNC_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        browser.require_browser()


def test_ci_fails_on_a_missing_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setenv("CRMSYNC_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="CRMSYNC_REQUIRE_BROWSER=1"):
        browser.require_browser()
