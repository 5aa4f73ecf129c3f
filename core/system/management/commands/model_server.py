"""`manage.py model_server ...`: the local TF-Serving-compatible model server, with
tensorflow_model_server's flags; defaults come from the settings (MODEL_SERVER_TARGET's port,
MODEL_SERVER_REST_PORT, MODEL_NAME, MODEL_REPOSITORY)."""

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Run the local TensorFlow-Serving-compatible model server (tensorflow_model_server flags)."
    )

    def run_from_argv(self, argv: list[str]) -> None:
        # Flags pass through untouched; TensorFlow loads only in this process.
        from ml.serving.server.__main__ import main

        given = {arg.split("=", 1)[0].lstrip("-") for arg in argv[2:] if arg.startswith("--")}
        defaults = {
            "port": settings.MODEL_SERVER_TARGET.rsplit(":", 1)[1],
            "rest_api_port": str(settings.MODEL_SERVER_REST_PORT),
        }
        if "model_config_file" not in given:
            defaults["model_name"] = settings.MODEL_NAME
            defaults["model_base_path"] = f"{settings.MODEL_REPOSITORY}/{settings.MODEL_NAME}"
        extra = [f"--{flag}={value}" for flag, value in defaults.items() if flag not in given]
        raise SystemExit(main([*extra, *argv[2:]]))
