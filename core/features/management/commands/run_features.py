import orjson
from django.core.management.base import BaseCommand

from core.features.services import (
    features_catalog_sync,
    features_neighbours_refresh,
    features_refresh,
    features_status,
)


class Command(BaseCommand):
    help = (
        "Run the feature jobs once, in this process, until caught up (what the worker does on "
        "each trigger), then print where each consumer stands."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--no-neighbours", action="store_true")
        parser.add_argument("--status", action="store_true", help="Only print the status.")

    def handle(self, *args, no_neighbours: bool = False, status: bool = False, **options):
        if not status:
            features_catalog_sync()
            run = features_refresh(trigger="command", budget=float("inf"))
            self.stdout.write(f"activity: {run.status}, {run.events_processed} events")
            if not no_neighbours:
                run = features_neighbours_refresh(trigger="command", budget=float("inf"))
                self.stdout.write(f"neighbours: {run.status}, {run.events_processed} events")
        for line in features_status():
            self.stdout.write(orjson.dumps(line).decode())
