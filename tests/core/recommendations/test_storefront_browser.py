"""The storefront demo driven in headless Chromium against a live server: the page loads
recommendations with its key, a click sends click and view events, and the next
recommendations change.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver) and
the `selenium` package; skips, naming what is missing, without them.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from core.events.models import Event
from core.system.services import api_key_create

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_SECONDS = 30

selenium = pytest.importorskip(
    "selenium", reason="selenium is not installed (pip install selenium==4.36.0)"
)
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        "headless Chromium is not installed: apt-get install chromium chromium-driver",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root, in a machine with no network but loopback: no sandbox, nothing that phones home.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for downloads
    service = Service(executable_path=CHROMEDRIVER, port=_free_port())
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def demo_key(settings):
    created = api_key_create(name="demo page", scopes=["events:write", "recommendations:read"])
    settings.DEMO_PAGE_API_KEY = created.raw_key
    return created.raw_key


@pytest.fixture
def popular_catalog(catalog, post_events):
    """Other shoppers made item-30..item-34 popular, so a new shopper starts from those."""
    post_events(
        *(
            {"user_id": f"other-{n}", "item_id": f"item-{30 + n % 5}", "type": "purchase"}
            for n in range(10)
        )
    )


def _wait_for(driver, condition, what: str):
    return WebDriverWait(driver, WAIT_SECONDS).until(
        lambda d: condition(d), message=f"waited {WAIT_SECONDS} s for {what}"
    )


def _section(driver, name: str) -> dict:
    return driver.execute_script(
        """
        const section = document.getElementById(arguments[0]);
        return {
          state: section.dataset.state,
          version: Number(section.dataset.version || 0),
          source: section.dataset.source || null,
          recommendationId: section.dataset.recommendationId || null,
          items: Array.from(section.querySelectorAll('.card'), c => c.dataset.itemId),
          status: document.getElementById('status').textContent,
        };
        """,
        name,
    )


def _loaded(driver, name: str, version: int) -> dict:
    def ready(d):
        section = _section(d, name)
        if section["state"] == "error":
            raise AssertionError(f"{name} failed: {section['status']}")
        return section if section["version"] >= version else None

    return _wait_for(driver, ready, f"{name} list #{version}")


def test_a_click_changes_the_next_recommendations(
    serving, popular_catalog, demo_key, live_server, browser
):
    # given a new shopper on the storefront, served popular items
    shopper = "browser-shopper"
    browser.get(f"{live_server.url}/demo/?user={shopper}")
    before = _loaded(browser, "recommended", 1)
    assert before["source"].startswith("fallback:popular"), before
    assert sorted(before["items"]) == [f"item-{i}" for i in range(30, 35)]
    assert browser.find_element(By.ID, "shopper").text == shopper

    # when they click a product in the grid
    clicked = "item-7"
    browser.find_element(By.CSS_SELECTOR, f'#product-grid .card[data-item-id="{clicked}"]').click()
    after = _loaded(browser, "recommended", 2)
    similar = _loaded(browser, "similar", 1)

    # then the model answers for the new session history with another list, without the click
    assert after["source"] == "model", after
    assert after["items"] != before["items"]
    assert clicked not in after["items"]
    assert similar["items"] and clicked not in similar["items"]
    assert "Similar to Item 7" in browser.find_element(By.ID, "similar-title").text
    events = Event.objects.filter(user__external_id=shopper)
    assert sorted(events.values_list("type", "item__external_id")) == [
        ("click", clicked),
        ("view", clicked),
    ]

    # and a click on a recommendation is attributed to the list that showed it
    recommended = after["items"][0]
    browser.find_element(
        By.CSS_SELECTOR, f'#recommended .card[data-item-id="{recommended}"]'
    ).click()
    third = _loaded(browser, "recommended", 3)
    assert recommended not in third["items"]
    attributed = Event.objects.get(
        user__external_id=shopper, item__external_id=recommended, type="click"
    )
    assert attributed.recommendation_id == after["recommendationId"]
