from django.apps import AppConfig


class FeaturesConfig(AppConfig):
    name = "core.features"
    label = "features"

    def ready(self) -> None:
        from core.catalog.hooks import user_eraser_register

        from .services import features_user_erase

        user_eraser_register("features", features_user_erase)
