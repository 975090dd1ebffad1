"""Browser fixtures: Playwright (async API) driving Debian's Chromium against the project under a live uvicorn.

Chromium is the system one (`apt-get install -y chromium`; the Makefile's test target installs it when
missing). `playwright install` is never used: there is no internet here. A missing browser FAILS the tests
with the command to fix it; it does not skip them.

The async API, not the sync one: sync Playwright marks its event loop as running between calls, so Django's
ORM would refuse sync queries in the test, and pytest-asyncio's async fixtures (fake_registry) would find a
foreign loop. In an async test everything shares pytest-asyncio's loop and the ORM is used through its async
methods.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_PATH = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PASSWORD = "pw-for-tests-123"  # tests.factories.UserFactory's password


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:  # type: ignore[no-untyped-def]
    # The live server runs in this process, so it uses these settings too.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _close_executor_connections() -> Iterator[None]:
    """Async ORM calls run in asgiref's shared executor thread; close its connections after each test
    (PostgreSQL refuses to drop a test database with sessions still open)."""
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM_PATH.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM_PATH}. Install Debian's package: "
            "`apt-get update && apt-get install -y chromium` (`make test` does this), or set CHROMIUM_PATH.",
            pytrace=False,
        )
    return CHROMIUM_PATH


# Ceilings, not speed assertions: a waiting action or `expect` gives up only after this long. Playwright's
# own default for `expect` is 5 s, which a streamed run on a busy CI machine can exceed.
WAIT_CEILING_MS = 30_000


@pytest.fixture
async def browser(chromium_path: Path) -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        pytest.fail("The `playwright` package is missing: pip install 'playwright>=1.40,<2'.", pytrace=False)
    expect.set_options(timeout=WAIT_CEILING_MS)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium_path), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


class PageProblems:
    """What went wrong in the page that a test would not otherwise see: JS errors, console errors, requests
    that left the live server (a CDN), failed requests."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.errors: list[str] = []
        self.foreign_requests: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: (
                self.errors.append(f"console.{message.type}: {message.text}")
                if message.type == "error"
                else None
            ),
        )
        page.on(
            "request",
            lambda request: (
                None
                if request.url.startswith((self.origin + "/", "data:"))
                else self.foreign_requests.append(request.url)
            ),
        )


@pytest.fixture
async def page(browser: Any, live_server_url: str) -> AsyncIterator[Any]:
    context = await browser.new_context(base_url=live_server_url, viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(WAIT_CEILING_MS)
    problems = PageProblems(live_server_url)
    problems.attach(page)
    page.problems = problems
    try:
        yield page
    finally:
        await context.close()


async def log_in(page: Any, username: str, password: str = PASSWORD) -> None:
    from playwright.async_api import expect

    await page.goto("/")
    await expect(page).to_have_url(f"{page.problems.origin}/login/?next=/")
    await page.get_by_label("Username", exact=True).fill(username)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Log in").click()
    # The module has loaded the agents and the first page of executions.
    await expect(page.locator("#console")).to_have_attribute("data-ready", "true")


def artifact(name: str) -> str:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return str(ARTIFACTS / name)
