"""Interaction data: reading events from files and turning them into weighted interactions.

An *event* is one row of a shopper's activity (view, click, add_to_cart, remove_from_cart,
purchase, rating). Training works on *interactions*: the events with a positive event-type weight,
as numpy columns. Timestamps are epoch seconds (float64, UTC).

Supported inputs (see ``load_events``):

- ``csv``: a header with any of ``event_id, user_id, session_id, item_id, type, value,
  timestamp`` (``user_id`` and ``item_id`` required; ``type`` defaults to ``view``; ``timestamp``
  is epoch seconds or an ISO 8601 string, missing means file order).
- ``jsonl``: one JSON object per line with the same keys.
- ``movielens``: MovieLens ``ratings.csv`` (``userId,movieId,rating,timestamp``); every rating is a
  positive interaction of type ``rating``.

Bad input raises ``InvalidEventsError`` with a message meant for a person; the CLI prints it
without a traceback.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

EVENT_TYPES = ("view", "click", "add_to_cart", "remove_from_cart", "purchase", "rating")
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 4.0,
    "remove_from_cart": 0.0,
    "purchase": 8.0,
    "rating": 5.0,
}
EVENT_COLUMNS = ("event_id", "user_id", "session_id", "item_id", "type", "value", "timestamp")
MOVIELENS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
FORMATS = ("csv", "jsonl", "movielens")


class InvalidEventsError(ValueError):
    """The events cannot be used for training; the message says why, for a person to read."""


@dataclass(frozen=True)
class Interactions:
    """Weighted interactions as parallel numpy columns (one entry per kept event).

    ``user_ids`` and ``item_ids`` are arrays of external string ids (dtype object), ``weights``
    float32 (> 0), ``timestamps`` float64 epoch seconds. Order carries no meaning; ties in time are
    broken by position in these arrays (earlier entry = earlier event).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    weights: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_users(self) -> int:
        return int(np.unique(self.user_ids).shape[0]) if len(self) else 0

    @property
    def n_items(self) -> int:
        return int(np.unique(self.item_ids).shape[0]) if len(self) else 0

    def subset(self, mask: np.ndarray) -> Interactions:
        return Interactions(
            self.user_ids[mask], self.item_ids[mask], self.weights[mask], self.timestamps[mask]
        )


def parse_weights(spec: str | None) -> dict[str, float]:
    """Parse ``"view=1,click=2,purchase=8"`` into a weight map (others keep defaults)."""
    weights = dict(DEFAULT_EVENT_WEIGHTS)
    if not spec:
        return weights
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in EVENT_TYPES:
            raise InvalidEventsError(
                f"bad weight {part!r}: expected TYPE=NUMBER with TYPE in {', '.join(EVENT_TYPES)}"
            )
        try:
            number = float(value)
        except ValueError:
            raise InvalidEventsError(f"bad weight {part!r}: {value!r} is not a number") from None
        if not np.isfinite(number) or number < 0:
            raise InvalidEventsError(f"bad weight {part!r}: must be a finite number >= 0")
        weights[name] = number
    return weights


def interactions_from_events(
    events: Iterable[Mapping[str, object]], *, weights: Mapping[str, float] | None = None
) -> Interactions:
    """Build interactions from event dicts (keys as in ``EVENT_COLUMNS``).

    This is the entry point for callers that already hold events (the Django side reads them from
    the database). Events whose type has weight 0 are dropped; unknown types are an error.
    """
    table = _weights_table(weights)
    users: list[str] = []
    items: list[str] = []
    kinds: list[str] = []
    stamps: list[float] = []
    for index, event in enumerate(events):
        user = event.get("user_id")
        item = event.get("item_id")
        if user in (None, "") or item in (None, ""):
            raise InvalidEventsError(f"event {index + 1}: user_id and item_id are required")
        users.append(str(user))
        items.append(str(item))
        kinds.append(str(event.get("type") or "view"))
        stamps.append(_parse_timestamp(event.get("timestamp"), index))
    return _build(users, items, kinds, stamps, table)


def interactions_from_columns(
    *,
    user_ids: Iterable[str],
    item_ids: Iterable[str],
    types: Iterable[str],
    timestamps: Iterable[float],
    weights: Mapping[str, float] | None = None,
) -> Interactions:
    """Same as ``interactions_from_events`` for column-oriented data (timestamps in epoch s)."""
    return _build(
        [str(u) for u in user_ids],
        [str(i) for i in item_ids],
        [str(t) for t in types],
        [float(s) for s in timestamps],
        _weights_table(weights),
    )


def load_events(
    path: str | Path, *, format: str = "csv", weights: Mapping[str, float] | None = None
) -> Interactions:
    """Read an events file (``csv``, ``jsonl`` or ``movielens``) into interactions."""
    path = Path(path)
    if format not in FORMATS:
        raise InvalidEventsError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise InvalidEventsError(f"{path}: no such file")
    if format == "jsonl":
        return interactions_from_events(_read_jsonl(path), weights=weights)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise InvalidEventsError(f"{path}: empty file (no header, no events)")
        header = [name.strip() for name in header]
        if format == "movielens":
            if header[: len(MOVIELENS_COLUMNS)] != list(MOVIELENS_COLUMNS) or len(header) != 4:
                raise InvalidEventsError(
                    f"{path}: MovieLens ratings need the header {','.join(MOVIELENS_COLUMNS)}, "
                    f"got {','.join(header)}"
                )
            rows = list(reader)
            _check_row_widths(path, rows, 4)
            users = [row[0] for row in rows]
            items = [row[1] for row in rows]
            stamps = [_parse_timestamp(row[3], n) for n, row in enumerate(rows)]
            return _build(users, items, ["rating"] * len(rows), stamps, _weights_table(weights))
        _check_columns(path, header)
        rows = list(reader)
        _check_row_widths(path, rows, len(header))
        if not rows:
            raise InvalidEventsError(f"{path}: no events (only a header)")
        columns = dict(zip(header, zip(*rows, strict=True), strict=True))
        for required in ("user_id", "item_id"):
            if any(value == "" for value in columns[required]):
                raise InvalidEventsError(f"{path}: empty {required} in some rows")
        count = len(rows)
        kinds = [kind or "view" for kind in columns.get("type", ("view",) * count)]
        return _build(
            list(columns["user_id"]),
            list(columns["item_id"]),
            kinds,
            _parse_timestamps(columns.get("timestamp")),
            _weights_table(weights),
        )


def _read_jsonl(path: Path) -> Iterable[dict[str, object]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidEventsError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(event, dict):
                raise InvalidEventsError(f"{path}:{number}: expected a JSON object per line")
            _check_columns(path, list(event), where=f"{path}:{number}")
            yield event


def _check_columns(path: Path, names: list[str], *, where: str | None = None) -> None:
    unknown = [name for name in names if name not in EVENT_COLUMNS]
    if unknown:
        raise InvalidEventsError(
            f"{where or path}: unknown column(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(EVENT_COLUMNS)} (or use --format movielens)"
        )
    missing = [name for name in ("user_id", "item_id") if name not in names]
    if missing:
        raise InvalidEventsError(
            f"{where or path}: missing required column(s) {', '.join(missing)}"
        )


def _check_row_widths(path: Path, rows: list[list[str]], width: int) -> None:
    for number, row in enumerate(rows, start=2):
        if len(row) != width:
            raise InvalidEventsError(f"{path}:{number}: expected {width} fields, got {len(row)}")


def _weights_table(weights: Mapping[str, float] | None) -> dict[str, float]:
    table = dict(DEFAULT_EVENT_WEIGHTS)
    if weights:
        for name, value in weights.items():
            if name not in EVENT_TYPES:
                raise InvalidEventsError(f"unknown event type {name!r} in weights")
            table[name] = float(value)
    return table


def _parse_timestamps(values: tuple[str, ...] | None) -> list[float]:
    """Column of timestamps: a fast path for plain epoch numbers, then one by one."""
    if values is None:
        return []
    try:
        return np.asarray(values, dtype=np.float64).tolist()
    except ValueError:
        return [_parse_timestamp(value, index) for index, value in enumerate(values)]


def _parse_timestamp(value: object, index: int) -> float:
    if value is None or value == "":
        return float(index)  # no time: file order is the order
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEventsError(
            f"event {index + 1}: timestamp {text!r} is neither epoch seconds nor ISO 8601"
        ) from None
    if moment.tzinfo is None:
        raise InvalidEventsError(f"event {index + 1}: timestamp {text!r} has no timezone")
    return moment.timestamp()


def _build(
    users: list[str],
    items: list[str],
    kinds: list[str],
    stamps: list[float],
    table: dict[str, float],
) -> Interactions:
    if not users:
        raise InvalidEventsError("no events: the input holds no rows")
    if not stamps:
        stamps = [float(index) for index in range(len(users))]  # no time: file order
    kind_array = np.asarray(kinds, dtype=object)
    unknown = sorted(set(kinds) - set(EVENT_TYPES))
    if unknown:
        raise InvalidEventsError(
            f"unknown event type(s) {', '.join(unknown)}; expected {', '.join(EVENT_TYPES)}"
        )
    weight_array = np.zeros(len(kind_array), dtype=np.float32)
    for name, value in table.items():
        weight_array[kind_array == name] = value
    keep = weight_array > 0
    if not keep.any():
        raise InvalidEventsError("no usable events: every event has an event-type weight of 0")
    stamp_array = np.asarray(stamps, dtype=np.float64)
    if not np.all(np.isfinite(stamp_array)):
        raise InvalidEventsError("timestamps must be finite numbers")
    return Interactions(
        user_ids=np.asarray(users, dtype=object)[keep],
        item_ids=np.asarray(items, dtype=object)[keep],
        weights=weight_array[keep],
        timestamps=stamp_array[keep],
    )
