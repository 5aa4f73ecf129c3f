"""Backfill events from a file (CSV or JSON lines) through the same validation as the API, stored
with COPY on PostgreSQL. Used by `manage.py import_events`.

A column mapping names, for each event field, the file's column (`user_id=userId`). Without one,
columns named like the fields are used; a MovieLens `ratings.csv` (userId,movieId,rating,timestamp)
is recognised. A file without an `event_id` column gets a deterministic one per row (a hash of the
row's fields), so importing the same file twice stores nothing the second time.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from core.catalog.validation import RowError

from .partitions import is_partitioned
from .services import events_ingest
from .validation import EVENT_FIELDS, EventValidator

MOVIELENS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
MOVIELENS_MAPPING = {
    "user_id": "userId",
    "item_id": "movieId",
    "value": "rating",
    "timestamp": "timestamp",
}


class ImportFormatError(ValueError):
    """The file or the mapping cannot be read at all (as opposed to a bad row)."""


@dataclass
class ImportReport:
    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    seconds: float = 0.0
    path: str = ""
    errors: list[RowError] = field(default_factory=list)  # the first `max_errors`

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds else 0.0


def parse_mapping(text: str | None) -> dict[str, str]:
    """'user_id=userId,item_id=movieId' -> {'user_id': 'userId', 'item_id': 'movieId'}."""
    mapping: dict[str, str] = {}
    if not text:
        return mapping
    for part in text.split(","):
        if not part.strip():
            continue
        target, sep, source = part.partition("=")
        target, source = target.strip(), source.strip()
        if not sep or not source:
            raise ImportFormatError(f"mapping entry {part!r}: expected field=column")
        if target not in EVENT_FIELDS:
            raise ImportFormatError(
                f"mapping entry {part!r}: unknown event field {target!r}; "
                f"fields: {', '.join(sorted(EVENT_FIELDS))}"
            )
        mapping[target] = source
    return mapping


def _number(text: str) -> Any:
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text  # the validator names the problem


def _event_id(row: dict[str, Any]) -> str:
    key = "\x1f".join(
        str(row.get(name, ""))
        for name in ("user_id", "item_id", "type", "timestamp", "value", "session_id")
    )
    return "imp-" + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def _csv_rows(
    stream: TextIO, mapping: dict[str, str], default_type: str | None
) -> Iterator[tuple[int, Any]]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [column.strip() for column in header]
    if not mapping:
        if tuple(header[:4]) == MOVIELENS_COLUMNS:
            mapping = dict(MOVIELENS_MAPPING)
            default_type = default_type or "rating"
        else:
            mapping = {name: name for name in header if name in EVENT_FIELDS}
    missing = [column for column in mapping.values() if column not in header]
    if missing:
        raise ImportFormatError(
            f"column(s) {', '.join(missing)} not in the header ({', '.join(header)})"
        )
    positions = [(target, header.index(source)) for target, source in mapping.items()]
    numeric = {"value", "timestamp"}
    converters: list[tuple[str, int, Callable[[str], Any]]] = []
    for target, position in positions:
        if target in numeric:
            converters.append((target, position, _number))
        elif target == "context":
            converters.append((target, position, lambda text: orjson.loads(text) if text else None))
        else:
            converters.append((target, position, lambda text: text or None))
    has_event_id = "event_id" in mapping
    width = len(header)
    for line, values in enumerate(reader, start=2):
        if len(values) != width:
            yield line, f"expected {width} columns, got {len(values)}"
            continue
        row: dict[str, Any] = {}
        try:
            for target, position, convert in converters:
                row[target] = convert(values[position])
        except orjson.JSONDecodeError:
            yield line, "context is not valid JSON"
            continue
        if default_type is not None and row.get("type") is None:
            row["type"] = default_type
        if not has_event_id:
            row["event_id"] = _event_id(row)
        yield line, row


def _jsonl_rows(
    stream: TextIO, mapping: dict[str, str], default_type: str | None
) -> Iterator[tuple[int, Any]]:
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield line, f"malformed JSON: {exc}"
            continue
        if not isinstance(raw, dict):
            yield line, "a line must be a JSON object"
            continue
        row = {target: raw.get(source) for target, source in mapping.items()} if mapping else raw
        if default_type is not None and row.get("type") is None:
            row["type"] = default_type
        if row.get("event_id") is None:
            row["event_id"] = _event_id(row)
        yield line, row


def events_import(
    *,
    path: Path,
    file_format: str = "auto",
    mapping: dict[str, str] | None = None,
    default_type: str | None = None,
    chunk_size: int = 50_000,
    max_errors: int = 20,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import a file; each chunk is validated and committed on its own (a crash loses at most the
    chunk in flight, and re-running the import skips what was stored)."""
    if file_format == "auto":
        file_format = "jsonl" if path.suffix in (".jsonl", ".ndjson", ".json") else "csv"
    if file_format not in ("csv", "jsonl"):
        raise ImportFormatError(f"format must be csv or jsonl, not {file_format!r}")
    report = ImportReport(
        path="COPY into a staging table (PostgreSQL)"
        if is_partitioned()
        else "bulk INSERT (not PostgreSQL: no COPY)"
    )
    started = time.perf_counter()
    id_cache: dict[tuple[str, str], int] = {}
    validator = EventValidator()
    with path.open(newline="" if file_format == "csv" else None, encoding="utf-8") as stream:
        rows = (_csv_rows if file_format == "csv" else _jsonl_rows)(
            stream, dict(mapping or {}), default_type
        )
        chunk: list[Any] = []
        lines: list[int] = []

        def flush() -> None:
            valid, errors = validator.validate(chunk)
            # Errors carry the chunk index; turn it into the file's line number.
            errors = [RowError(lines[e.index], e.field, e.code, e.message) for e in errors]
            for event_index, event in enumerate(valid):
                valid[event_index] = _renumber(event, lines)
            result = events_ingest(events=valid, use_copy=True, id_cache=id_cache)
            report.accepted += result.accepted
            report.duplicates += result.duplicates
            bad = errors + result.errors
            report.rejected += len({error.index for error in bad})
            room = max_errors - len(report.errors)
            if room > 0:
                report.errors.extend(bad[:room])
            chunk.clear()
            lines.clear()
            report.seconds = time.perf_counter() - started
            if progress is not None:
                progress(report)

        for line, row in rows:
            report.read += 1
            if isinstance(row, str):  # the row could not even be read
                report.rejected += 1
                if len(report.errors) < max_errors:
                    report.errors.append(RowError(line, None, "unreadable", row))
                continue
            chunk.append(row)
            lines.append(line)
            if len(chunk) >= chunk_size:
                flush()
        if chunk:
            flush()
    report.seconds = time.perf_counter() - started
    return report


def _renumber(event: Any, lines: list[int]) -> Any:
    from dataclasses import replace

    return replace(event, index=lines[event.index])
