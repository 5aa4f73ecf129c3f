from django.apps import AppConfig


class RecommendationsConfig(AppConfig):
    name = "core.recommendations"
    label = "recommendations"
