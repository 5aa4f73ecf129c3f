from django.contrib import admin

from .models import Item, User


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["external_id", "title", "category", "price", "available", "deleted_at"]
    list_filter = ["available", ("deleted_at", admin.EmptyFieldListFilter)]
    search_fields = ["=external_id", "title"]
    readonly_fields = ["created_at", "updated_at"]
    show_full_result_count = False
    ordering = ["-id"]


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    list_display = ["external_id", "created_at", "updated_at"]
    search_fields = ["=external_id"]
    readonly_fields = ["created_at", "updated_at"]
    show_full_result_count = False
    ordering = ["-id"]
