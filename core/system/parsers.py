import re
from typing import Any

import orjson
from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from .exceptions import PayloadTooLarge

# A JSON-escaped NUL (an odd number of backslashes before u0000): PostgreSQL text cannot hold it.
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class OrjsonParser(BaseParser):
    """JSON bodies, bounded by API_MAX_BODY_BYTES (413 beyond it)."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        limit = settings.API_MAX_BODY_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
        if not body:
            raise ParseError("Empty request body: expected JSON.")
        if b"\\u0000" in body and _ESCAPED_NUL.search(body):
            raise ParseError("NUL characters (\\u0000) are not accepted.")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"Malformed JSON: {exc}") from exc
