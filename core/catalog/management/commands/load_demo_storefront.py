"""Load the synthetic storefront (catalog and events) that `make demo` runs on."""

from __future__ import annotations

import json
import time
from decimal import Decimal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.catalog.models import Item
from core.catalog.services import items_upsert
from core.catalog.validation import ItemIn
from core.events.importing import events_load
from core.events.models import Event
from ml.synthetic import generate_storefront

SIZES = {
    "small": {"users": 300, "items": 200, "events": 20_000},
    "default": {"users": 2_000, "items": 2_000, "events": 100_000},
}


class Command(BaseCommand):
    help = (
        "Generate a synthetic storefront whose shoppers have learnable tastes and load its "
        "catalog and events through the ingestion services. Skips when items already exist."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--small", action="store_true", help="a small storefront (fast)")
        parser.add_argument("--users", type=int)
        parser.add_argument("--items", type=int)
        parser.add_argument("--events", type=int)
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--force", action="store_true", help="load even if items exist")
        parser.add_argument(
            "--print-sample",
            action="store_true",
            help="print only a JSON sample (a shopper with history, an available item)",
        )

    def handle(self, *args, **options) -> None:
        if options["print_sample"]:
            self.stdout.write(json.dumps(_sample()))
            return
        size = SIZES["small" if options["small"] else "default"]
        users = options["users"] or size["users"]
        items = options["items"] or size["items"]
        events = options["events"] if options["events"] is not None else size["events"]
        if min(users, items) < 1 or events < 0:
            raise CommandError("--users and --items must be at least 1, --events at least 0")
        if Item.objects.exists() and not options["force"]:
            self.stdout.write("Storefront already loaded (items exist); --force loads again.")
            return
        started = time.perf_counter()
        shop = generate_storefront(
            n_users=users,
            n_items=items,
            n_events=events,
            seed=options["seed"],
            end=int(time.time()),
        )
        rows = [
            ItemIn(
                external_id=str(item["item_id"]),
                title=str(item["title"]),
                category=str(item["category"]),
                tags=tuple(str(tag) for tag in item["tags"]),  # type: ignore[attr-defined]
                price=Decimal(str(item["price"])),
                available=bool(item["available"]),
            )
            for item in shop.iter_items()
        ]
        batch = settings.CATALOG_MAX_BATCH
        for start in range(0, len(rows), batch):
            items_upsert(items=rows[start : start + batch])
        report = events_load(events=shop.iter_events())
        self.stdout.write(
            f"Loaded {len(rows)} items and {report.accepted} events "
            f"({report.duplicates} already stored, {report.rejected} rejected) "
            f"in {time.perf_counter() - started:.1f} s."
        )


def _sample() -> dict[str, str | None]:
    """A shopper with the most events, and an available item, for the demo's curl commands."""
    item = Item.objects.filter(deleted_at__isnull=True, available=True).order_by("id").first()
    event = Event.objects.order_by("-id").select_related("user").first()
    return {
        "user_id": event.user.external_id if event else None,
        "item_id": item.external_id if item else None,
    }
