from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from core.catalog.models import Item, User
from core.events.models import Event
from core.registry.models import ModelVersion
from core.registry.services import model_version_push, model_version_validate

NUM_ITEMS = 40


def push_and_validate(
    archive: Path, *, name: str = "recommender", force: bool = False
) -> ModelVersion:
    with open(archive, "rb") as stream:
        version = model_version_push(name=name, archive=stream, pushed_by="test", force=force)
    return model_version_validate(version_id=version.pk)


def shoppers_who_buy_pairs(users: int) -> None:
    """Each shopper views item 2j, then item 2j+1: the paired model predicts that."""
    now = timezone.now()
    items = {
        item.external_id: item
        for item in Item.objects.bulk_create(
            Item(external_id=f"item-{i}", created_at=now, updated_at=now) for i in range(NUM_ITEMS)
        )
    }
    created = User.objects.bulk_create(
        User(external_id=f"u{u}", created_at=now, updated_at=now) for u in range(users)
    )
    events = []
    for index, user in enumerate(created):
        pair = (index % (NUM_ITEMS // 2)) * 2
        for offset, item in enumerate((pair, pair + 1)):
            moment = now - timedelta(hours=2) + timedelta(minutes=offset)
            events.append(
                Event(
                    event_id=f"e{index}-{offset}",
                    user=user,
                    item=items[f"item-{item}"],
                    type="view",
                    timestamp=moment,
                    ingested_at=moment,
                )
            )
    Event.objects.bulk_create(events)
