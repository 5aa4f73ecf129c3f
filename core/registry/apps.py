from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "core.registry"
    label = "registry"
