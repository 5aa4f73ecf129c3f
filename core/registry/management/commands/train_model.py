from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from core.registry.services import TrainingRefused, model_train


class Command(BaseCommand):
    help = (
        "Train a model on stored events, print its offline evaluation beside the popularity and "
        "EASE baselines, and export the next version into MODEL_REPOSITORY/MODEL_NAME."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, help="only events of the last N days")
        parser.add_argument("--no-evaluate", action="store_true", help="skip the comparison")
        parser.add_argument("--small", action="store_true", help="fast: no evaluation, no tuning")

    def handle(self, *args, days: int | None, no_evaluate: bool, small: bool, **options) -> None:
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1")
        since = timezone.now() - timedelta(days=days) if days else None
        try:
            outcome = model_train(since=since, evaluate=not (no_evaluate or small), tune=not small)
        except TrainingRefused as exc:
            raise CommandError(f"cannot train: {exc}") from exc
        if outcome.table:
            self.stdout.write(outcome.table)
        self.stdout.write(
            f"Exported version {outcome.version} ({outcome.events} interactions, "
            f"{outcome.train_seconds:.1f} s) to {outcome.version_dir}"
        )
