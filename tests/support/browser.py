"""Debian's Chromium driven by Playwright, as the people using the console and its public pages."""

from __future__ import annotations

import asyncio
from pathlib import Path

from playwright.async_api import Page, Playwright, Request

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000


class People:
    """Opens a page for each person, each in a fresh Chromium profile of its own (no shared cookies)."""

    def __init__(self, playwright: Playwright, profiles: Path) -> None:
        self._playwright = playwright
        self._profiles = profiles
        self._contexts: list = []
        self.requests: dict[Page, list[Request]] = {}

    async def open(self, locale: str = "en-US") -> Page:
        """A new person's browser tab; the test certificate is accepted, dialogs are answered yes."""
        context = await self._playwright.chromium.launch_persistent_context(
            str(self._profiles / f"chromium-profile-{len(self._contexts)}"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            ignore_https_errors=True,
            locale=locale,
        )
        self._contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        tab = context.pages[0] if context.pages else await context.new_page()
        # The console asks before sending; the person at the browser says yes.
        tab.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        seen: list[Request] = []
        context.on("request", lambda request: seen.append(request))
        self.requests[tab] = seen
        return tab

    async def referers(self, tab: Page) -> list[tuple[str, str]]:
        """(method and URL, Referer) of every request this person's browser sent that carried a Referer."""
        found = []
        for request in self.requests[tab]:
            referer = (await request.all_headers()).get("referer")
            if referer:
                found.append((f"{request.method} {request.url}", referer))
        return found

    async def close(self) -> None:
        """Close every browser opened."""
        for context in self._contexts:
            await context.close()


async def log_in(page: Page, base: str, login: str, password: str) -> None:
    """Fill and submit the login form."""
    await page.goto(f"{base}/login")
    await page.fill("#login", login)
    await page.fill("#password", password)
    await page.click("#login-submit")
