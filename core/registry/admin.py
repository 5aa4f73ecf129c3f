from django.contrib import admin

from .models import BusinessRule


@admin.register(BusinessRule)
class BusinessRuleAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "kind",
        "category",
        "position",
        "factor",
        "starts_at",
        "ends_at",
        "enabled",
    ]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "category"]
    list_editable = ["enabled"]
