from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "core.events"
    label = "events"

    def ready(self) -> None:
        from core.catalog.hooks import user_eraser_register

        from .services import events_delete_for_user

        user_eraser_register("events", events_delete_for_user)
