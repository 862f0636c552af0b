"""Fixtures of the browser tests: a live stack (tests/support/e2e.py), Chromium, pages.

Debian's Chromium (/usr/bin/chromium, `apt-get install chromium`) is driven by Playwright;
no browser is ever downloaded. Without it the tests are skipped, saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.e2e import CHROMIUM, CHROMIUM_ARGS, Shots, Stack

ACTION_TIMEOUT_MS = 20_000
EXPECT_TIMEOUT_MS = 15_000  # Playwright's 5 s is short on a busy 2-core CI machine


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)  # read by the `page` fixture
    return report


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    require_chromium()  # before starting anything
    server = Stack(tmp_path_factory.mktemp("e2e-stack"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)

    with sync_playwright() as playwright:
        # launch() starts the browser on a fresh temporary profile (user-data dir).
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def shots(request) -> Shots:
    return Shots(request.node.name)


@pytest.fixture
def page(request, browser, stack: Stack, shots: Shots) -> Iterator[Any]:
    """A page in a browser context of its own (own cookies): each test logs in itself."""
    context = browser.new_context(
        base_url=stack.url,
        accept_downloads=True,
        viewport={"width": 1280, "height": 900},
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            try:
                shots(page, "failure")
            except Exception as exc:  # the page may be gone; the logs still help
                print(f"no failure screenshot: {exc}")
            print(stack.tails())
        context.close()
