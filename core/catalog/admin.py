from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from . import hooks
from .models import Item, User
from .services import item_delete, user_forget


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    """Deleting here is the API's delete: the item leaves the catalog and every recommendation,
    its row stays (events refer to it)."""

    list_display = ["external_id", "title", "category", "price", "available", "deleted_at"]
    list_filter = ["available", ("deleted_at", admin.EmptyFieldListFilter)]
    search_fields = ["=external_id", "title"]
    readonly_fields = ["created_at", "updated_at", "deleted_at"]
    show_full_result_count = False
    ordering = ["-id"]

    def save_model(self, request: HttpRequest, obj: Item, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # Serving filters by the feature store's hot set: tell it now, not at the next sweep.
        if obj.available and obj.deleted_at is None:
            external_ids = [obj.external_id]
            transaction.on_commit(lambda: hooks.items_restored(external_ids=external_ids))
        else:
            ids = [obj.pk]
            transaction.on_commit(lambda: hooks.items_removed(item_ids=ids))

    def delete_model(self, request: HttpRequest, obj: Item) -> None:
        item_delete(external_id=obj.external_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Item]) -> None:
        for external_id in queryset.values_list("external_id", flat=True):
            item_delete(external_id=external_id)


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    """Deleting here is the right to be forgotten (`user_forget`): events and features go too."""

    list_display = ["external_id", "created_at", "updated_at"]
    search_fields = ["=external_id"]
    readonly_fields = ["created_at", "updated_at"]
    show_full_result_count = False
    ordering = ["-id"]

    def delete_model(self, request: HttpRequest, obj: User) -> None:
        user_forget(external_id=obj.external_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for external_id in queryset.values_list("external_id", flat=True):
            user_forget(external_id=external_id)
