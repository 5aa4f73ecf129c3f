from django.apps import AppConfig


class SystemConfig(AppConfig):
    name = "core.system"
    label = "system"
    verbose_name = "System: API keys and health"
