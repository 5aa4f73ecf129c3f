import getpass
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.registry.archives import pack_saved_model
from core.registry.models import VersionStatus
from core.registry.services import PushRefused, model_version_push, model_version_validate


class Command(BaseCommand):
    help = (
        "Push a SavedModel (a folder, or a tar/tar.gz/zip archive of one) as a new version of "
        "NAME: validate it here (contract, load, smoke prediction, offline gate) and place it "
        "in MODEL_REPOSITORY with the next version number. Exits 1 when validation fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="SavedModel folder or archive")
        parser.add_argument("--name", required=True, help="model name, e.g. recommender")
        parser.add_argument("--force", action="store_true", help="pass the offline gate")
        parser.add_argument("--actor", default=f"cli:{getpass.getuser()}")

    def handle(self, *args, path: str, name: str, force: bool, actor: str, **options) -> None:
        source = Path(path)
        if not source.exists():
            raise CommandError(f"{source} does not exist")
        with tempfile.TemporaryDirectory() as scratch:
            archive = source
            if source.is_dir():
                archive = pack_saved_model(source, Path(scratch) / "model.tar.gz")
            try:
                with open(archive, "rb") as stream:
                    version = model_version_push(
                        name=name, archive=stream, pushed_by=actor, force=force
                    )
            except PushRefused as error:
                raise CommandError(str(error)) from error
        self.stdout.write(f"pushed (id {version.pk}, sha256 {version.checksum[:12]}); validating")
        version = model_version_validate(version_id=version.pk)
        if version.status != VersionStatus.READY:
            raise CommandError(f"version refused: {version.status_reason}")
        gate = version.offline_metrics.get("gate", "")
        self.stdout.write(
            self.style.SUCCESS(f"version {version.number} of {name} is ready ({gate} offline gate)")
        )
