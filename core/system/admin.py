from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import ApiKey
from .scopes import ALL_SCOPES, parse_scopes
from .services import api_key_create, api_key_revoke


class ApiKeyCreateForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in ALL_SCOPES], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = ApiKey
        fields = ["name", "scopes"]

    def clean_scopes(self) -> list[str]:
        try:
            return parse_scopes(self.cleaned_data["scopes"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scope_list", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    actions = ["revoke"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None):
        if obj is None:
            return []
        return ["name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"]

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            return  # keys are immutable; revoke and create a new one instead
        created = api_key_create(name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"])
        obj.pk = created.api_key.pk
        obj.refresh_from_db()
        self.message_user(
            request,
            f"API key created. Copy it now, it is not shown again: {created.raw_key}",
            messages.WARNING,
        )

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
