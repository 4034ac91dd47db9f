"""A real headless Chromium for the browser tests: Debian's ``chromium`` package,
driven by Playwright (never a browser Playwright downloads).

``make test`` installs the package where it is missing and the machine lets it
(``make chromium``). Without a browser the tests skip, saying so, except under
``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

BROWSER_ENV = "TESSERA_CHROMIUM"  # another Chromium binary, if not on PATH


def chromium_path() -> str | None:
    return os.environ.get(BROWSER_ENV) or shutil.which("chromium")


# One per test module, not per session: while Playwright's sync API runs, its event loop
# counts as running in this thread, and a later test of the same worker that calls
# asyncio.run() (tests/coordinator/test_mail_signal.py) would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    found = chromium_path()
    if found is None:
        reason = "no chromium on PATH (apt-get install chromium, or set TESSERA_CHROMIUM)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true needs the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's own sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=found, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    """A fresh page in its own context (no cookies shared between tests)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    try:
        yield context.new_page()
    finally:
        context.close()
