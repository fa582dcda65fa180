"""Fixtures for the viewer tests: a free local port, and headless Chromium driven by Selenium."""
from __future__ import annotations

import shutil
import socket

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"


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
