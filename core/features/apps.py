from django.apps import AppConfig


class FeaturesConfig(AppConfig):
    name = "core.features"
    label = "features"
