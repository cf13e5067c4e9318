"""A real headless Chromium driven by Selenium (Debian's chromium and chromium-driver)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support import need, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: where the tests leave their screenshots (.ci/run keeps the folder)
SCREENSHOTS = Path(os.environ.get("ALPACON_SCREENSHOTS", Path(__file__).resolve().parent.parent / "artifacts" /
                                  "screenshots"))


class Browser:
    """One Chromium window: navigation, waiting for the console to settle, screenshots."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def get(self, url: str) -> None:
        self.driver.get(url)

    def ready(self, timeout: float = 20) -> None:
        """Until the console has drawn the current route (``body[data-ready="1"]``)."""
        wait_until(lambda: self.driver.execute_script("return document.body.dataset.ready") == "1", timeout,
                   what="the console to finish drawing")

    def route(self, hash_: str) -> None:
        """Go to a console route and wait for it to be drawn."""
        self.driver.execute_script("document.body.dataset.ready = ''; location.hash = arguments[0];", hash_)
        self.ready()

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def one(self, selector: str) -> Any:
        found = self.css(selector)
        assert found, f"nothing matches {selector!r}"
        return found[0]

    def table(self, selector: str = "table.rows") -> list[dict[str, str]]:
        """The rows of a table as {data-col: text} (detail rows left out)."""
        return self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' tbody tr:not(.detail)')].map(tr =>"
            " Object.fromEntries([...tr.children].map(td => [td.dataset.col, td.textContent])))", selector)

    def headers(self, selector: str = "table.rows") -> list[str]:
        return [th.get_attribute("textContent") for th in self.css(f"{selector} thead th")]

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@contextlib.contextmanager
def open_browser() -> Iterator[Browser]:
    """A fresh headless Chromium (no shared profile, no background networking); the ``browser``
    fixture of conftest.py."""
    need(os.access(CHROMIUM, os.X_OK), "chromium (Debian package chromium)")
    need(os.access(CHROMEDRIVER, os.X_OK), "chromedriver (Debian package chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need(False, "selenium (Python package)")
        raise
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1400,1000", "--lang=en-US"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
