"""The storefront demo driven in headless Chromium against a live server: the page loads
recommendations with its key, a click sends click and view events, and the next
recommendations change.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver),
driven over WebDriver with the standard library (tests/webdriver.py); skips, naming the packages
to install, only when they are missing.
"""

from __future__ import annotations

import pytest

from core.events.models import Event
from core.system.services import api_key_create
from tests.webdriver import Chromium, chromium_missing

if reason := chromium_missing():
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECTION = """
const section = document.getElementById(arguments[0]);
const status = document.getElementById('status').textContent;
if (section.dataset.state === 'error') return {error: status};
if (Number(section.dataset.version || 0) < arguments[1]) return null;
return {
  source: section.dataset.source || null,
  recommendationId: section.dataset.recommendationId || null,
  items: Array.from(section.querySelectorAll('.card'), c => c.dataset.itemId),
  status: status,
};
"""


@pytest.fixture
def browser(tmp_path):
    with Chromium.start(tmp_path / "chromium-profile") as chromium:
        yield chromium


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


def loaded(browser: Chromium, section: str, version: int) -> dict:
    """The section's list once it has been rendered `version` times."""
    state = browser.wait_for(SECTION, section, version, what=f"{section} list #{version}")
    assert "error" not in state, state
    return state


def test_a_click_changes_the_next_recommendations(
    serving, popular_catalog, demo_key, live_server, browser
):
    # given a new shopper on the storefront, served popular items
    shopper = "browser-shopper"
    browser.get(f"{live_server.url}/demo/?user={shopper}")
    before = loaded(browser, "recommended", 1)
    assert before["source"].startswith("fallback:popular"), before
    assert sorted(before["items"]) == [f"item-{i}" for i in range(30, 35)]
    assert browser.text("#shopper") == shopper

    # when they click a product in the grid
    clicked = "item-7"
    browser.click(f'#product-grid .card[data-item-id="{clicked}"]')
    after = loaded(browser, "recommended", 2)
    similar = loaded(browser, "similar", 1)

    # then the model answers for the new session history with another list, without the click
    assert after["source"] == "model", after
    assert after["items"] != before["items"]
    assert clicked not in after["items"]
    assert similar["items"] and clicked not in similar["items"]
    assert "Similar to Item 7" in browser.text("#similar-title")
    events = Event.objects.filter(user__external_id=shopper)
    assert sorted(events.values_list("type", "item__external_id")) == [
        ("click", clicked),
        ("view", clicked),
    ]

    # and a click on a recommendation is attributed to the list that showed it
    recommended = after["items"][0]
    browser.click(f'#recommended .card[data-item-id="{recommended}"]')
    third = loaded(browser, "recommended", 3)
    assert recommended not in third["items"]
    attributed = Event.objects.get(
        user__external_id=shopper, item__external_id=recommended, type="click"
    )
    assert attributed.recommendation_id == after["recommendationId"]
