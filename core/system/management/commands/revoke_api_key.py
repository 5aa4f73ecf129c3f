from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.system.models import ApiKey
from core.system.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key by its prefix (the 8 characters after 'rk_')."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args, prefix: str, **options) -> None:
        keys = list(ApiKey.objects.filter(prefix=prefix.removeprefix("rk_")[:16]))
        if not keys:
            raise CommandError(f"No API key with prefix {prefix!r}.")
        if len(keys) > 1:
            raise CommandError(f"Prefix {prefix!r} matches {len(keys)} keys; revoke in the admin.")
        api_key_revoke(api_key=keys[0])
        self.stdout.write(f"Revoked {keys[0]}.")
