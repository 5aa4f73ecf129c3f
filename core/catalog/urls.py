from django.urls import path

from .api import (
    ItemBatchUpsertApi,
    ItemDetailApi,
    ItemListApi,
    UserBatchUpsertApi,
    UserDetailApi,
    UserListApi,
)

# `batch` before `<path:...>`: ids may contain '/', so a catch-all would swallow it.
urlpatterns = [
    path("items", ItemListApi.as_view(), name="item-list"),
    path("items/batch", ItemBatchUpsertApi.as_view(), name="item-batch"),
    path("items/<path:external_id>", ItemDetailApi.as_view(), name="item-detail"),
    path("users", UserListApi.as_view(), name="user-list"),
    path("users/batch", UserBatchUpsertApi.as_view(), name="user-batch"),
    path("users/<path:external_id>", UserDetailApi.as_view(), name="user-detail"),
]
