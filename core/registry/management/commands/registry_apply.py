import getpass
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.registry import deployment, services


class Command(BaseCommand):
    help = (
        "Apply the registry's deployment (stable, canary, previous versions and labels) to the "
        "model server again, e.g. after it restarted without --model_config_file. With "
        "--file-only, only write REGISTRY_MODEL_CONFIG_FILE (before the model server's first "
        "start; with nothing deployed yet it serves MODEL_NAME's latest version)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file-only", action="store_true")
        parser.add_argument("--actor", default=f"cli:{getpass.getuser()}")

    def handle(self, *args, file_only: bool, actor: str, **options) -> None:
        state = services.serving_state()
        if file_only:
            if not state:
                # Nothing deployed: the same as --model_name/--model_base_path (latest version).
                from ml.serving.client import ModelConfig, model_config_text

                base = Path(settings.MODEL_REPOSITORY).resolve() / settings.MODEL_NAME
                text = model_config_text(
                    [ModelConfig(name=settings.MODEL_NAME, base_path=str(base))]
                )
                target = Path(settings.REGISTRY_MODEL_CONFIG_FILE)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            else:
                target = deployment.write_config_file(state)
            self.stdout.write(f"wrote {target}")
            return
        if not state:
            raise CommandError("nothing is deployed: deploy a version as stable first")
        try:
            services.registry_redeploy(actor=actor)
        except services.RegistryError as error:
            raise CommandError(str(error)) from error
        served = "; ".join(f"{m.name} {list(m.versions)} {dict(m.labels)}" for m in state)
        self.stdout.write(self.style.SUCCESS(f"model server serves {served}"))
