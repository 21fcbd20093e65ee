"""Open a report page in headless Chromium: script errors, network use, a screenshot.

Drives Debian's ``chromium`` (or ``$MOE_PROFILER_CHROMIUM``) through Playwright.
Every request the page makes other than for its own file is blocked and recorded,
so a page that needs the network shows up in ``BrowserVisit.requests``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class BrowserVisit:
    """What happened while the page loaded (and while ``actions`` ran)."""

    errors: list[str] = field(default_factory=list)  # uncaught exceptions, console errors
    requests: list[str] = field(default_factory=list)  # URLs other than the page itself
    broken_images: list[str] = field(default_factory=list)  # <img> that did not decode
    results: list = field(default_factory=list)  # what each action returned


def chromium_path() -> str:
    """The Chromium executable, or RuntimeError saying how to install it."""
    path = os.environ.get("MOE_PROFILER_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise RuntimeError(
            "no Chromium found: apt-get install -y chromium (Debian), "
            "or set MOE_PROFILER_CHROMIUM to its executable"
        )
    return path


def visit(
    page_path: Path, screenshot: Path | None = None, actions=(), width: int = 1200
) -> BrowserVisit:
    """Load ``page_path`` offline; run ``actions`` (callables taking the Playwright page)."""
    from playwright.sync_api import sync_playwright

    url = Path(page_path).resolve().as_uri()
    seen = BrowserVisit()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("pageerror", lambda error: seen.errors.append(f"uncaught: {error}"))
            page.on(
                "console",
                lambda message: (
                    seen.errors.append(f"console: {message.text}")
                    if message.type == "error"
                    else None
                ),
            )

            def only_the_page(route):
                if route.request.url == url:
                    route.continue_()
                else:
                    seen.requests.append(route.request.url)
                    route.abort()

            page.route("**/*", only_the_page)
            page.goto(url, wait_until="load")
            seen.broken_images = page.eval_on_selector_all(
                "img",
                "images => images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)",
            )
            seen.results = [action(page) for action in actions]
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return seen
