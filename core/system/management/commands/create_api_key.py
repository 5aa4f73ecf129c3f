from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.system.scopes import ALL_SCOPES
from core.system.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key. The key is printed once and only its hash is stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="Who or what uses the key.")
        parser.add_argument(
            "--scopes",
            required=True,
            nargs="+",
            help=f"One or more of: {', '.join(ALL_SCOPES)} (space or comma separated).",
        )
        parser.add_argument(
            "--quiet", action="store_true", help="Print only the key (for scripts)."
        )

    def handle(self, *args, name: str, scopes: list[str], quiet: bool, **options) -> None:
        try:
            created = api_key_create(name=name, scopes=" ".join(scopes))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if quiet:
            self.stdout.write(created.raw_key)
            return
        self.stdout.write(
            f"Created API key '{created.api_key.name}' with scopes "
            f"{', '.join(created.api_key.scopes)}.\n"
            f"Key (shown once, store it now): {created.raw_key}"
        )
