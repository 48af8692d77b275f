"""``almat serve`` fixtures: Debian's chromium driven by Selenium.

The browser tests skip, saying why, without ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them). Screenshots go to ``tests/serve/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

from serve_helpers import CHROMIUM_FLAGS


def pytest_configure(config):
    # FireWorks' class lookup (checking a firework out, say) imports its own test modules, whose `mongodb`
    # marker --strict-markers would reject (test_http's queue test)
    config.addinivalue_line("markers", "mongodb: a marker of FireWorks' own tests")


@pytest.fixture(scope="module")
def browser():
    """A headless Debian chromium (fresh profile) driven through chromedriver."""
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="almat-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
