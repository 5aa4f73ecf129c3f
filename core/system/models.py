from __future__ import annotations

from django.db import models

from .scopes import ADMIN


class ApiKey(models.Model):
    """A storefront's or operator's credential. Only a hash of the key is stored."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True, help_text="Shown to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    # DRF treats the authenticated principal as request.user.
    is_authenticated = True
    is_anonymous = False

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes
