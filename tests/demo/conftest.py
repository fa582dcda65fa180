"""Fixtures for the viewer tests: a free local port, headless Chromium driven by Selenium, and ``page``, that
browser with the waits and Gradio widget look-ups the browser tests share."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 60
"""Seconds a browser test waits for the page to show something."""


@pytest.fixture
def port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    """Debian's headless Chromium under Selenium (``.ci/run`` installs ``chromium`` and ``chromium-driver``).

    The flags keep Chromium off the network (this machine reaches only package registries) and give it a
    fresh profile; the window is tall enough to lay out the whole page."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    binary = next((b for b in CHROMIUM if shutil.which(b)), None)
    if binary is None or not shutil.which(CHROMEDRIVER):
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1600,2600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


class Page:
    """The demo page in a Selenium ``driver``: waits, and the DOM of the Gradio widgets it uses."""

    def __init__(self, driver):
        self.driver = driver

    def wait(self, condition):
        """``condition(driver)`` once it is truthy (``TimeoutException`` after ``WAIT`` seconds)."""
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, WAIT).until(condition)

    def wait_text(self, css: str, text: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.wait(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    def choose(self, dropdown: str, option: str) -> None:
        """Open the Gradio dropdown ``#dropdown`` and click its ``option``."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.driver.find_element(By.CSS_SELECTOR, f"#{dropdown} input").click()
        css = f"ul[role='listbox'] li[role='option'][aria-label='{option}']"
        self.wait(ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()

    def rows(self, table: str) -> list[list[str]]:
        """The cell texts of a Gradio dataframe's rows (it renders them as ``role=row`` / ``role=gridcell``)."""
        from selenium.webdriver.common.by import By

        rows = self.driver.find_elements(By.CSS_SELECTOR, f"#{table} [role='row'].virtual-row")
        return [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "[role='gridcell']")] for row in rows]

    def header(self, table: str) -> list[str]:
        from selenium.webdriver.common.by import By

        return [h.text for h in self.driver.find_elements(By.CSS_SELECTOR, f"#{table} thead th")]

    def click_cell(self, table: str, row: int, column: int) -> None:
        """Click a cell, scrolled to the bottom of its table's window first (at the top, the sticky header, which
        long names make tall, covers it)."""
        from selenium.webdriver.common.by import By

        cell = self.driver.find_element(By.CSS_SELECTOR, f"#{table} [data-testid='cell-{row}-{column}']")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'end'})", cell)
        cell.click()

    def value(self, textbox: str) -> str:
        """The text in the Gradio textbox ``#textbox``."""
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, f"#{textbox} textarea").get_attribute("value")

    def screenshot(self, name: str) -> None:
        """Save the page as ``name`` in ``$MMRL_TEST_ARTIFACTS`` (default ``test-artifacts/``)."""
        folder = Path(os.environ.get("MMRL_TEST_ARTIFACTS", "test-artifacts"))
        folder.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(folder / name))


@pytest.fixture
def page(browser) -> Page:
    return Page(browser)
