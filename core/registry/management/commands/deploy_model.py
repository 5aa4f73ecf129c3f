import getpass

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.registry import services


class Command(BaseCommand):
    help = (
        "Change what the model server serves for NAME: deploy a version (as the first stable, a "
        "canary or a shadow), promote the canary, roll back the stable version, or stop the "
        "running experiment."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["deploy", "promote", "rollback", "stop"])
        parser.add_argument("name", help="model name")
        parser.add_argument("--version", type=int, help="deploy: the version number")
        parser.add_argument("--mode", choices=["canary", "shadow", "stable"], default="canary")
        parser.add_argument("--percent", type=float, help="canary: share of shoppers (percent)")
        parser.add_argument("--reason", default="")
        parser.add_argument("--actor", default=f"cli:{getpass.getuser()}")

    def handle(self, *args, action: str, name: str, **options) -> None:
        actor = options["actor"]
        try:
            if action == "deploy":
                if options["version"] is None:
                    raise CommandError("deploy needs --version")
                message = services.model_version_deploy(
                    name=name,
                    number=options["version"],
                    mode=options["mode"],
                    traffic_percent=options["percent"],
                    actor=actor,
                )
            elif action == "promote":
                message = services.model_promote(name=name, actor=actor)
            elif action == "rollback":
                message = services.model_rollback(name=name, actor=actor, reason=options["reason"])
            else:
                message = services.experiment_stop(name=name, actor=actor, reason=options["reason"])
        except services.RegistryError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(self.style.SUCCESS(message))
