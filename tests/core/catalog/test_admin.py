"""The admin pages load, and deleting there follows the API's rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model

from core.catalog.models import Item, User
from core.events.models import Event
from core.events.services import events_ingest
from core.events.validation import EventValidator

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    admin_user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin_user)
    return client


def test_admin_lists_and_event_detail_load(staff_client):
    events, _ = EventValidator().validate(
        [{"event_id": "a1", "user_id": "u", "item_id": "i", "type": "view"}]
    )
    events_ingest(events=events)

    for url in [
        "/admin/catalog/item/",
        "/admin/catalog/user/",
        "/admin/events/event/",
        "/admin/events/event/?type__exact=view",
        f"/admin/events/event/{Event.objects.get().pk}/change/",
    ]:
        assert staff_client.get(url).status_code == 200, url


def test_admin_delete_of_a_user_forgets_them_and_of_an_item_soft_deletes_it(staff_client):
    now = datetime.now(tz=UTC)
    events, _ = EventValidator().validate(
        [{"event_id": "a1", "user_id": "u", "item_id": "i", "type": "view"}]
    )
    events_ingest(events=events)
    user, item = User.objects.get(), Item.objects.get()

    staff_client.post(f"/admin/catalog/user/{user.pk}/delete/", {"post": "yes"})
    staff_client.post(f"/admin/catalog/item/{item.pk}/delete/", {"post": "yes"})

    assert not User.objects.exists()
    assert not Event.objects.exists()
    assert Item.objects.get().deleted_at >= now


def test_event_list_count_is_capped_when_filtered(staff_client, monkeypatch):
    from core.events import admin as events_admin

    monkeypatch.setattr(events_admin, "COUNT_CAP", 2)
    events, _ = EventValidator().validate(
        [{"event_id": f"c{n}", "user_id": "u", "item_id": "i", "type": "view"} for n in range(5)]
    )
    events_ingest(events=events)

    response = staff_client.get("/admin/events/event/?type__exact=view")

    assert response.status_code == 200
    assert response.context["cl"].result_count == 3
