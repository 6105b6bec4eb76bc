# Real headless Chromium (Debian's package, driven by Playwright) against a real farm and monitor.

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.farm import ROOT, Farm
from tests.web.conftest import Monitor, monitor, shared_monitor  # noqa: F401  (fixtures)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts" / "browser"


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `bash deploy/test.sh` installs it "
                    "(Debian: apt-get install chromium)")
    # Not `with sync_playwright()`: its exit never returns once eventlet has patched the
    # process (tests/conftest.py). The driver ends when the test process does.
    playwright = sync_playwright().start()
    instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield instance
    instance.close()
    # Between its calls Playwright's sync API leaves its event loop marked as running in this
    # thread, so every later test's asyncio.run() would refuse to start; with the browser closed
    # and stop() unusable, clear the mark (what stop() itself does) once this package is done.
    asyncio._set_running_loop(None)


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (no cookies); a screenshot of its last state is kept."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    yield tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    finally:
        context.close()


@pytest.fixture
def farm(tmp_path: Path, amqp_uri: str, vhost: str) -> Iterator[Farm]:
    instance = Farm(tmp_path, amqp_uri, vhost)
    yield instance
    instance.stop()
