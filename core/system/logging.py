"""Log records carry the request id; anything shaped like an API key is masked."""

from __future__ import annotations

import logging
import re

import orjson

from .request_id import current_request_id

_KEY_PATTERN = re.compile(r"rk_[0-9a-f]{8}_[A-Za-z0-9_\-]+")
_BEARER_PATTERN = re.compile(r"(?i)(bearer\s+)\S+")


def redact(text: str) -> str:
    return _BEARER_PATTERN.sub(r"\1[redacted]", _KEY_PATTERN.sub("rk_[redacted]", text))


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", current_request_id()),
        }
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(payload).decode()
