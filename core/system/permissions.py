from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework import exceptions
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from .models import ApiKey

if TYPE_CHECKING:
    from rest_framework.views import APIView

# For endpoints any valid key may call, whatever its scopes.
ANY_SCOPE = "*"


class HasScope(BasePermission):
    """The view's `required_scope` must be granted to the key. A view without one is closed."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        api_key = request.user
        if not isinstance(api_key, ApiKey):
            raise exceptions.NotAuthenticated(
                "Missing API key: send 'Authorization: Bearer <key>'."
            )
        scope = getattr(view, "required_scope", None)
        if scope is None:
            raise exceptions.PermissionDenied("This endpoint declares no scope.")
        if scope == ANY_SCOPE:
            return True
        if not api_key.has_scope(scope):
            raise exceptions.PermissionDenied(f"This API key lacks the scope '{scope}'.")
        return True
