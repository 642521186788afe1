"""A headless Chromium for the report tests, driven by Selenium with the system's chromedriver.

Found on PATH (Debian/Ubuntu: `apt-get install -y chromium chromium-driver`) or given by
$IMGCLF_CHROMIUM and $IMGCLF_CHROMEDRIVER. When either is missing, `start()` raises BrowserMissing
with the install command: the browser tests then FAIL (a silent skip would hide a report nobody checked).
Selenium Manager is never asked to download anything: both paths are given explicitly.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import List, Optional

INSTALL_HINT = ("the report tests need Chromium and its driver: on Debian/Ubuntu run "
                "`apt-get install -y chromium chromium-driver` (Ubuntu's chromium-browser snap also works); "
                "elsewhere install Chromium or Chrome with a matching chromedriver and set IMGCLF_CHROMIUM=/path/"
                "to/chromium and IMGCLF_CHROMEDRIVER=/path/to/chromedriver; and `pip install -e \".[test]\"` for "
                "selenium")

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
DRIVERS = ("chromedriver", "chromium.chromedriver")  # the second: Ubuntu's chromium snap (as install-browser.sh)


class BrowserMissing(AssertionError):
    pass


def find_executables():
    browser = os.environ.get("IMGCLF_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = os.environ.get("IMGCLF_CHROMEDRIVER") or next(filter(None, map(shutil.which, DRIVERS)), None)
    return browser, driver


def start(width: int = 1280, height: int = 1000):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserMissing(f"selenium is not installed; {INSTALL_HINT}") from None
    browser, driver = find_executables()
    missing = [what for what, path in (("a Chromium browser", browser), ("chromedriver", driver))
               if not path or not os.path.exists(path)]
    if missing:
        raise BrowserMissing(f"{' and '.join(missing)} not found; {INSTALL_HINT}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def console_errors(driver) -> List[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]


def requested_urls(driver) -> List[str]:
    """Every URL the page asked for (CDP Network.requestWillBeSent events from the performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def alert_text(driver) -> Optional[str]:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert.text
    except NoAlertPresentException:
        return None
