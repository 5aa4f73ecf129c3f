from django.core.management.base import BaseCommand

from core.features.services import features_rebuild


class Command(BaseCommand):
    help = (
        "Rewrite the hot features in Redis from PostgreSQL. With --recompute, first recompute "
        "every feature table from the events table."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--recompute",
            action="store_true",
            help="Empty the feature tables and fold every stored event again (exactly once).",
        )

    def handle(self, *args, recompute: bool = False, **options) -> None:
        report = features_rebuild(recompute=recompute, trigger="command")
        for name, value in report.items():
            self.stdout.write(f"{name}: {value}")
