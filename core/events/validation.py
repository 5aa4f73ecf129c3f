"""Bulk validation of incoming events: one tight loop in plain Python instead of a serializer per
event (a DRF serializer costs ~100 us an event; this costs a few). Used by the HTTP API and by
`import_events`, so both accept and reject exactly the same things."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings

from core.catalog.validation import MAX_ID_LENGTH, RowError

MAX_EVENT_ID_LENGTH = 128
MAX_SESSION_ID_LENGTH = 128
MAX_RECOMMENDATION_ID_LENGTH = 64
# Epoch numbers above this are read as milliseconds (year 2286 in seconds).
_MILLIS_THRESHOLD = 10_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

EVENT_FIELDS = frozenset(
    {
        "event_id",
        "user_id",
        "item_id",
        "session_id",
        "type",
        "value",
        "timestamp",
        "recommendation_id",
        "context",
    }
)
REQUIRED_FIELDS = ("event_id", "user_id", "item_id", "type")


@dataclass(frozen=True, slots=True)
class EventIn:
    """A valid event. `index` is its position in the request (or line in a file), for errors;
    `context` is already serialized JSON."""

    index: int
    event_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None
    timestamp: datetime
    session_id: str | None
    recommendation_id: str | None
    context: str | None


def _ident(value: Any, max_length: int) -> str | None:
    # Strings, or integers turned into strings; never bool/float/object.
    if type(value) is str:
        return value if 0 < len(value) <= max_length else None
    if type(value) is int:
        return str(value)
    return None


def parse_timestamp(value: Any) -> datetime | None:
    """ISO 8601 (a naive time is UTC) or epoch seconds (milliseconds when large)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return None
        seconds = value / 1000 if abs(value) >= _MILLIS_THRESHOLD else value
        try:
            return _EPOCH + timedelta(seconds=seconds)
        except OverflowError:
            return None
    return None


class EventValidator:
    """Validate many events against one clock and the settings of the moment."""

    def __init__(self, *, now: datetime | None = None) -> None:
        self.now = now or datetime.now(tz=UTC)
        self.latest = self.now + timedelta(seconds=settings.EVENTS_MAX_FUTURE_SECONDS)
        self.types = settings.EVENT_TYPE_WEIGHTS
        self.max_context = settings.EVENTS_MAX_CONTEXT_BYTES

    def validate(
        self, raw_events: list[Any], *, indexes: list[int] | None = None
    ) -> tuple[list[EventIn], list[RowError]]:
        """(valid events, errors). Each carries its position in `raw_events`, or the matching
        entry of `indexes` (e.g. line numbers of a file)."""
        valid: list[EventIn] = []
        errors: list[RowError] = []
        one = self.one
        for offset, raw in enumerate(raw_events):
            event = one(raw, offset if indexes is None else indexes[offset], errors)
            if event is not None:
                valid.append(event)
        return valid, errors

    def validate_text_columns(
        self,
        columns: dict[str, list[str]],
        indexes: list[int],
        raw_row: Callable[[int], Any],
    ) -> tuple[list[EventIn], list[RowError]]:
        """The same answers as `validate` over rows given as columns of file text (CSV cells:
        "" is absent; `type` may be a column or left to `raw_row`), an order of magnitude
        faster: each column is checked in one tight pass and no dict is built for a good row.
        A row failing any of these quick checks is built by `raw_row(position)` and goes
        through `one`, so its answer (and message) is exactly `validate`'s. Only plain columns:
        `context` (JSON) is not handled here."""
        count = len(indexes)
        slow: set[int] = set()
        event_ids = columns["event_id"]
        user_ids = columns.get("user_id")
        item_ids = columns.get("item_id")
        types = columns.get("type")
        if user_ids is None or item_ids is None or types is None or "context" in columns:
            slow.update(range(count))  # a required column is missing: `one` names it
        else:
            for column, limit in (
                (event_ids, MAX_EVENT_ID_LENGTH),
                (user_ids, MAX_ID_LENGTH),
                (item_ids, MAX_ID_LENGTH),
            ):
                if count and not (min(map(len, column)) > 0 and max(map(len, column)) <= limit):
                    slow.update(p for p, text in enumerate(column) if not 0 < len(text) <= limit)
            known = self.types
            if not set(types) <= known.keys():
                slow.update(p for p, text in enumerate(types) if text not in known)
        for name, limit in (
            ("session_id", MAX_SESSION_ID_LENGTH),
            ("recommendation_id", MAX_RECOMMENDATION_ID_LENGTH),
        ):
            optional = columns.get(name)
            if optional is not None and count and max(map(len, optional)) > limit:
                slow.update(p for p, text in enumerate(optional) if len(text) > limit)
        values: list[float | None] = [None] * count
        value_texts = columns.get("value")
        if value_texts is not None:
            isfinite = math.isfinite
            for position, text in enumerate(value_texts):
                if text:
                    try:
                        number = float(text)
                    except ValueError:
                        slow.add(position)
                        continue
                    if isfinite(number):
                        values[position] = number
                    else:
                        slow.add(position)
        if types is not None and "rating" in types:
            slow.update(
                p
                for p, (kind, value) in enumerate(zip(types, values, strict=True))
                if kind == "rating" and value is None
            )
        timestamps: list[datetime] = [self.now] * count
        timestamp_texts = columns.get("timestamp")
        if timestamp_texts is not None:
            # Epoch digits, the common case in files; anything else (ISO 8601, fractions,
            # garbage, the future) is `one`'s.
            latest, epoch, delta = self.latest, _EPOCH, timedelta
            from_epoch = datetime.fromtimestamp
            for position, text in enumerate(timestamp_texts):
                if not text:
                    continue
                if not (text.isascii() and text.isdigit()):
                    slow.add(position)
                    continue
                number = int(text)
                if number < _MILLIS_THRESHOLD:
                    # Whole seconds (year 2286 at most): exactly `_EPOCH + timedelta(...)`,
                    # at half its cost.
                    moment = from_epoch(number, UTC)
                else:
                    try:
                        moment = epoch + delta(seconds=number / 1000)
                    except OverflowError:
                        slow.add(position)
                        continue
                if moment > latest:
                    slow.add(position)
                else:
                    timestamps[position] = moment
        sessions = columns.get("session_id") or [""] * count
        recommendations = columns.get("recommendation_id") or [""] * count
        valid: list[EventIn] = []
        errors: list[RowError] = []
        one = self.one
        for position in range(count):
            if position in slow:
                event = one(raw_row(position), indexes[position], errors)
                if event is not None:
                    valid.append(event)
                continue
            valid.append(
                EventIn(
                    indexes[position],
                    event_ids[position],
                    user_ids[position],  # type: ignore[index]
                    item_ids[position],  # type: ignore[index]
                    types[position],  # type: ignore[index]
                    values[position],
                    timestamps[position],
                    sessions[position] or None,
                    recommendations[position] or None,
                    None,
                )
            )
        return valid, errors

    def one(self, raw: Any, index: int, errors: list[RowError]) -> EventIn | None:
        if type(raw) is not dict:
            errors.append(RowError(index, None, "invalid", "an event must be a JSON object"))
            return None
        problems = len(errors)
        if not raw.keys() <= EVENT_FIELDS:
            unknown = sorted(raw.keys() - EVENT_FIELDS)
            errors.append(
                RowError(
                    index, unknown[0], "unknown_field", f"unknown field(s): {', '.join(unknown)}"
                )
            )
        get = raw.get
        event_id = _ident(get("event_id"), MAX_EVENT_ID_LENGTH)
        user_id = _ident(get("user_id"), MAX_ID_LENGTH)
        item_id = _ident(get("item_id"), MAX_ID_LENGTH)
        event_type = get("type")
        if event_id is None or user_id is None or item_id is None:
            for name, parsed, limit in (
                ("event_id", event_id, MAX_EVENT_ID_LENGTH),
                ("user_id", user_id, MAX_ID_LENGTH),
                ("item_id", item_id, MAX_ID_LENGTH),
            ):
                if parsed is None:
                    if get(name) is None:
                        errors.append(RowError(index, name, "required", "is required"))
                    else:
                        errors.append(
                            RowError(
                                index,
                                name,
                                "invalid",
                                f"must be a string of 1 to {limit} characters (or an integer)",
                            )
                        )
        # isinstance first: a JSON object or list here is unhashable (was a 500, found by fuzzing)
        if not isinstance(event_type, str) or event_type not in self.types:
            if event_type is None:
                errors.append(RowError(index, "type", "required", "is required"))
            else:
                errors.append(
                    RowError(
                        index,
                        "type",
                        "unknown_type",
                        f"unknown event type {str(event_type)[:40]!r}; "
                        f"known: {', '.join(self.types)}",
                    )
                )
        value = get("value")
        if value is not None:
            if type(value) not in (int, float) or not math.isfinite(value):
                errors.append(RowError(index, "value", "invalid", "must be a finite number"))
                value = None
            else:
                value = float(value)
        elif event_type == "rating":
            errors.append(RowError(index, "value", "required", "a rating needs a value"))
        raw_timestamp = get("timestamp")
        timestamp: datetime | None
        if raw_timestamp is None:
            timestamp = self.now
        else:
            timestamp = parse_timestamp(raw_timestamp)
            if timestamp is None:
                errors.append(
                    RowError(
                        index,
                        "timestamp",
                        "invalid",
                        "must be ISO 8601 (e.g. 2026-01-31T12:00:00Z) or epoch seconds",
                    )
                )
            elif timestamp > self.latest:
                errors.append(
                    RowError(
                        index,
                        "timestamp",
                        "future_timestamp",
                        f"is more than {settings.EVENTS_MAX_FUTURE_SECONDS} s in the future",
                    )
                )
            elif timestamp < _EPOCH:
                errors.append(RowError(index, "timestamp", "invalid", "is before 1970"))
        session_id = get("session_id")
        if session_id is not None:
            session_id = _ident(session_id, MAX_SESSION_ID_LENGTH)
            if session_id is None:
                errors.append(
                    RowError(
                        index,
                        "session_id",
                        "invalid",
                        f"must be a string of 1 to {MAX_SESSION_ID_LENGTH} characters",
                    )
                )
        recommendation_id = get("recommendation_id")
        if recommendation_id is not None:
            recommendation_id = _ident(recommendation_id, MAX_RECOMMENDATION_ID_LENGTH)
            if recommendation_id is None:
                errors.append(
                    RowError(
                        index,
                        "recommendation_id",
                        "invalid",
                        f"must be a string of 1 to {MAX_RECOMMENDATION_ID_LENGTH} characters",
                    )
                )
        context = get("context")
        context_json = None
        if context is not None:
            if type(context) is not dict:
                errors.append(RowError(index, "context", "invalid", "must be a JSON object"))
            else:
                context_json = orjson.dumps(context).decode()
                if len(context_json) > self.max_context:
                    errors.append(
                        RowError(
                            index,
                            "context",
                            "too_large",
                            f"is {len(context_json)} bytes; the limit is {self.max_context}",
                        )
                    )
        if len(errors) != problems:
            return None
        return EventIn(
            index,
            event_id,  # type: ignore[arg-type]
            user_id,  # type: ignore[arg-type]
            item_id,  # type: ignore[arg-type]
            event_type,  # type: ignore[arg-type]
            value,
            timestamp,  # type: ignore[arg-type]
            session_id,
            recommendation_id,
            context_json,
        )
