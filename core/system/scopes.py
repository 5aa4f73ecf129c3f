"""API key scopes. `admin` grants every scope."""

EVENTS_WRITE = "events:write"
RECOMMENDATIONS_READ = "recommendations:read"
CATALOG_WRITE = "catalog:write"
MODELS_WRITE = "models:write"
ADMIN = "admin"

ALL_SCOPES = (EVENTS_WRITE, RECOMMENDATIONS_READ, CATALOG_WRITE, MODELS_WRITE, ADMIN)


def parse_scopes(raw: str | list[str]) -> list[str]:
    """Scopes from 'a,b c' or a list; raises ValueError naming unknown ones."""
    parts = raw if isinstance(raw, list) else raw.replace(",", " ").split()
    scopes = sorted({part.strip() for part in parts if part.strip()})
    if not scopes:
        raise ValueError(f"at least one scope is required; valid scopes: {', '.join(ALL_SCOPES)}")
    unknown = [scope for scope in scopes if scope not in ALL_SCOPES]
    if unknown:
        raise ValueError(
            f"unknown scope(s): {', '.join(unknown)}; valid scopes: {', '.join(ALL_SCOPES)}"
        )
    return scopes
