from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from core.system import health
from core.system.metrics import metrics_view

api_v1: list[URLPattern | URLResolver] = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularRedocView.as_view(url_name="schema"), name="docs"),
    path("", include("core.system.urls")),
    # Before the catalog: its item and user routes take any path after items/ and users/.
    path("", include("core.recommendations.urls")),
    path("", include("core.registry.urls")),
    path("", include("core.catalog.urls")),
    path("", include("core.events.urls")),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("demo/", include("core.recommendations.storefront")),
]

handler404 = "core.system.errors.not_found"
handler500 = "core.system.errors.server_error"
