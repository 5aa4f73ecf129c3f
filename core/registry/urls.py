from django.urls import path

from . import api

urlpatterns = [
    path("models", api.ModelListApi.as_view(), name="models"),
    path("models/<str:name>", api.ModelDetailApi.as_view(), name="model"),
    path("models/<str:name>/versions", api.VersionListApi.as_view(), name="model-versions"),
    path(
        "models/<str:name>/versions/<int:number>",
        api.VersionDetailApi.as_view(),
        name="model-version",
    ),
    path(
        "models/<str:name>/versions/<int:number>/deploy",
        api.DeployApi.as_view(),
        name="model-version-deploy",
    ),
    path("models/<str:name>/pushes/<int:push_id>", api.PushDetailApi.as_view(), name="model-push"),
    path("models/<str:name>/promote", api.PromoteApi.as_view(), name="model-promote"),
    path("models/<str:name>/rollback", api.RollbackApi.as_view(), name="model-rollback"),
    path("models/<str:name>/experiment", api.ExperimentApi.as_view(), name="model-experiment"),
    path(
        "models/<str:name>/experiment/stop",
        api.ExperimentStopApi.as_view(),
        name="model-experiment-stop",
    ),
    path("models/<str:name>/audit", api.AuditApi.as_view(), name="model-audit"),
]
