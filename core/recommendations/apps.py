from django.apps import AppConfig


class RecommendationsConfig(AppConfig):
    name = "core.recommendations"
    label = "recommendations"

    def ready(self) -> None:
        from core.catalog.hooks import user_eraser_register

        from .services import recommendations_user_erase

        # DELETE /users/{id} reports it as "recommendations": impressions and cached lists.
        user_eraser_register("recommendations", recommendations_user_erase)
