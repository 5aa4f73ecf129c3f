"""Backfill events from a file (CSV or JSON lines) through the same validation as the API, stored
with COPY on PostgreSQL. Used by `manage.py import_events`.

A column mapping names, for each event field, the file's column (`user_id=userId`). Without one,
columns named like the fields are used; a MovieLens `ratings.csv` (userId,movieId,rating,timestamp)
is recognised. A file without an `event_id` column gets a deterministic one per row (a hash of the
row's fields), so importing the same file twice stores nothing the second time.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gc
import hashlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from django.db import connection, connections

from core.catalog.validation import RowError

from .partitions import is_partitioned
from .services import PreparedEvents, events_ingest, events_prepare, events_store_prepared
from .validation import EVENT_FIELDS, EventIn, EventValidator

MOVIELENS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
MOVIELENS_MAPPING = {
    "user_id": "userId",
    "item_id": "movieId",
    "value": "rating",
    "timestamp": "timestamp",
}


# A chunk on its way to a writer: prepared (PostgreSQL) or validated events (elsewhere).
_Work = PreparedEvents | list[EventIn]

# Guards ImportReport: the reading thread and the writer threads all count into it.
_report_lock = threading.Lock()


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


def _value(text: str) -> Any:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text  # the validator names the problem


def _timestamp(text: str) -> Any:
    if not text:
        return None
    if text.isascii() and text.isdigit():  # (int() refuses other digits, e.g. "²")
        return int(text)  # epoch seconds, the MovieLens way
    try:
        return float(text)
    except ValueError:
        return text  # ISO 8601, or garbage the validator names


def _event_id(text: str) -> str:
    """The row's own content names it, so re-importing finds the same keys. Short rows are used
    as they are (a file sorted by user then gives neighbouring keys, which the key index takes
    far faster than scattered hashes); long ones are hashed to fit."""
    if len(text) <= 120:
        return "imp:" + text
    return "imp#" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass
class _Chunk:
    """Rows read from a source: how many, those that could not even be read, and how to
    validate the rest."""

    read: int
    unreadable: list[RowError]
    validate: Callable[[EventValidator], tuple[list[EventIn], list[RowError]]]


def _row_chunks(rows: Iterator[tuple[int, Any]], chunk_size: int) -> Iterator[_Chunk]:
    """(line, raw event or the reason it is unreadable) rows -> chunks validated row by row."""
    while True:
        batch = list(itertools.islice(rows, chunk_size))
        if not batch:
            return
        unreadable = [
            RowError(line, None, "unreadable", row) for line, row in batch if isinstance(row, str)
        ]
        good = [(line, row) for line, row in batch if not isinstance(row, str)]
        raw = [row for _, row in good]
        lines = [line for line, _ in good]
        yield _Chunk(
            len(batch),
            unreadable,
            functools.partial(_validate_rows, raw, lines),
        )


def _validate_rows(
    raw: list[Any], lines: list[int], validator: EventValidator
) -> tuple[list[EventIn], list[RowError]]:
    return validator.validate(raw, indexes=lines)


def _validate_columns(
    columns: dict[str, list[str]],
    lines: list[int],
    raw_row: Callable[[int], Any],
    validator: EventValidator,
) -> tuple[list[EventIn], list[RowError]]:
    return validator.validate_text_columns(columns, lines, raw_row)


def _csv_chunks(
    stream: TextIO, mapping: dict[str, str], default_type: str | None, chunk_size: int
) -> Iterator[_Chunk]:
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
    positions = {target: header.index(source) for target, source in mapping.items()}
    converters: list[tuple[str, int, Callable[[str], Any]]] = []
    for target, position in positions.items():
        if target == "value":
            converters.append((target, position, _value))
        elif target == "timestamp":
            converters.append((target, position, _timestamp))
        elif target == "context":
            converters.append((target, position, lambda text: orjson.loads(text) if text else None))
        else:
            converters.append((target, position, lambda text: text or None))
    has_event_id = "event_id" in mapping
    type_tag = f"{default_type or ''}\x1f"
    width = len(header)

    def as_dict(values: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for target, position, convert in converters:
            row[target] = convert(values[position])
        if default_type is not None and row.get("type") is None:
            row["type"] = default_type
        if not has_event_id:
            row["event_id"] = _event_id(type_tag + "\x1f".join(values))
        return row

    line = 1
    while True:
        batch = list(itertools.islice(reader, chunk_size))
        if not batch:
            return
        first, line = line + 1, line + len(batch)
        unreadable: list[RowError] = []
        rows: list[list[str]] = batch
        lines: list[int] = list(range(first, line + 1))
        if set(map(len, batch)) != {width}:
            rows, lines = [], []
            for number, values in enumerate(batch, start=first):
                if len(values) != width:
                    unreadable.append(
                        RowError(
                            number,
                            None,
                            "unreadable",
                            f"expected {width} columns, got {len(values)}",
                        )
                    )
                else:
                    rows.append(values)
                    lines.append(number)
        if "context" in positions:
            # JSON cells: row by row (a cell that is not JSON makes its row unreadable).
            raw: list[Any] = []
            raw_lines: list[int] = []
            for number, values in zip(lines, rows, strict=True):
                try:
                    raw.append(as_dict(values))
                    raw_lines.append(number)
                except orjson.JSONDecodeError:
                    unreadable.append(
                        RowError(number, None, "unreadable", "context is not valid JSON")
                    )
            yield _Chunk(
                len(batch),
                unreadable,
                functools.partial(_validate_rows, raw, raw_lines),
            )
            continue
        # Plain cells: validated column by column (EventValidator.validate_text_columns).
        cells = list(zip(*rows, strict=True)) if rows else [()] * width  # column by column
        columns = {target: list(cells[p]) for target, p in positions.items()}
        if not has_event_id:
            join = "\x1f".join
            columns["event_id"] = [
                "imp:" + text if len(text := type_tag + join(values)) <= 120 else _event_id(text)
                for values in rows
            ]
        if "type" in columns:
            if default_type is not None:
                columns["type"] = [text or default_type for text in columns["type"]]
        elif default_type is not None:
            columns["type"] = [default_type] * len(rows)
        yield _Chunk(
            len(batch),
            unreadable,
            functools.partial(
                _validate_columns, columns, lines, functools.partial(_row_at, as_dict, rows)
            ),
        )


def _row_at(as_dict: Callable[[list[str]], dict[str, Any]], rows: list[list[str]], at: int) -> Any:
    return as_dict(rows[at])


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
            row["event_id"] = _event_id(f"{default_type or ''}\x1e{text.strip()}")
        yield line, row


def events_import(
    *,
    path: Path,
    file_format: str = "auto",
    mapping: dict[str, str] | None = None,
    default_type: str | None = None,
    chunk_size: int = 20_000,
    max_errors: int = 20,
    progress: Callable[[ImportReport], None] | None = None,
    writers: int = 2,
) -> ImportReport:
    """Import a file; each chunk is validated and committed on its own (a crash loses at most the
    chunk in flight, and re-running the import skips what was stored). Errors name file lines."""
    if file_format == "auto":
        file_format = "jsonl" if path.suffix in (".jsonl", ".ndjson", ".json") else "csv"
    if file_format not in ("csv", "jsonl"):
        raise ImportFormatError(f"format must be csv or jsonl, not {file_format!r}")
    with path.open(newline="" if file_format == "csv" else None, encoding="utf-8") as stream:
        if file_format == "csv":
            chunks = _csv_chunks(stream, dict(mapping or {}), default_type, chunk_size)
        else:
            chunks = _row_chunks(_jsonl_rows(stream, dict(mapping or {}), default_type), chunk_size)
        return _load(chunks, max_errors=max_errors, progress=progress, writers=writers)


def events_load(
    *,
    events: Iterable[dict[str, Any]],
    chunk_size: int = 20_000,
    max_errors: int = 20,
    progress: Callable[[ImportReport], None] | None = None,
    writers: int = 2,
) -> ImportReport:
    """Bulk-load events given as API-shaped dicts (`event_id`, `user_id`, `item_id`, `type`,
    `value`, `timestamp`, ...): the fastest way in for generated data such as the demo's synthetic
    storefront. Same validation and exactly-once storage as the API, COPY on PostgreSQL. A dict
    without `event_id` gets one derived from its content. Errors name positions in `events`."""

    def numbered() -> Iterator[tuple[int, Any]]:
        for index, event in enumerate(events):
            if isinstance(event, dict) and event.get("event_id") is None:
                event = {**event, "event_id": _event_id(orjson.dumps(event).decode())}
            yield index, event

    return _load(
        _row_chunks(numbered(), chunk_size),
        max_errors=max_errors,
        progress=progress,
        writers=writers,
    )


def _load(
    chunks: Iterator[_Chunk],
    *,
    max_errors: int,
    progress: Callable[[ImportReport], None] | None,
    writers: int,
) -> ImportReport:
    report = ImportReport(
        path="COPY (PostgreSQL)" if is_partitioned() else "bulk INSERT (not PostgreSQL: no COPY)"
    )
    started = time.perf_counter()
    id_cache: dict[tuple[str, str], int] = {}
    validator = EventValidator()
    with _collector_paused():
        _load_chunks(chunks, report, id_cache, validator, max_errors, progress, writers, started)
    report.errors.sort(key=lambda error: error.index)
    report.seconds = time.perf_counter() - started
    return report


# Rows between full garbage collections while the automatic collector is paused: bounds what
# reference cycles (rare here) can hold, at a few hundred milliseconds per million rows.
_COLLECT_EVERY_ROWS = 1_000_000


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's automatic garbage collector for a load. Each chunk allocates a few objects
    per row that the collector must track (events, rows, the growing id cache), so it ran a full
    collection over the whole heap every few chunks: half the client's CPU per row (15.0 -> 7.3
    us, measured on 200,000 MovieLens rows). The collector is process-wide: bulk loads run in
    commands, not in the web server. `_load_chunks` collects every `_COLLECT_EVERY_ROWS`."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_chunks(
    chunks: Iterator[_Chunk],
    report: ImportReport,
    id_cache: dict[tuple[str, str], int],
    validator: EventValidator,
    max_errors: int,
    progress: Callable[[ImportReport], None] | None,
    writers: int,
    started: float,
) -> None:
    # Outside a transaction, three stages overlap: this thread reads and validates, a preparing
    # thread resolves ids and creates new users/items (PostgreSQL), writer threads store. Inside
    # one (tests, callers' atomic blocks), everything runs inline in the caller's transaction.
    if not is_partitioned():
        writers = min(writers, 1)  # SQLite takes one writer at a time anyway
    writer: _Stage | None = None
    preparer: _Stage | None = None
    if writers and not connection.in_atomic_block:
        writer = _Stage(
            lambda work: _store(report, work, id_cache, max_errors), writers, "import-writer"
        )
        if is_partitioned():
            stage = writer
            preparer = _Stage(
                lambda valid: stage.put(_prepare(valid, id_cache)), 1, "import-prepare"
            )
    collected_at = 0
    try:
        for chunk in chunks:
            if report.read - collected_at >= _COLLECT_EVERY_ROWS:
                gc.collect()
                collected_at = report.read
            valid, errors = chunk.validate(validator)
            errors = chunk.unreadable + errors
            with _report_lock:
                report.read += chunk.read
                report.rejected += len({error.index for error in errors})
                _keep_errors(report, sorted(errors, key=lambda error: error.index), max_errors)
            if preparer is not None:
                preparer.put(valid)
            elif writer is not None:
                writer.put(_prepare(valid, id_cache))
            else:
                _store(report, _prepare(valid, id_cache), id_cache, max_errors)
            report.seconds = time.perf_counter() - started
            if progress is not None:
                progress(report)
    finally:
        try:
            if preparer is not None:
                preparer.close()
        finally:
            if writer is not None:
                writer.close()


def _keep_errors(report: ImportReport, errors: list[RowError], max_errors: int) -> None:
    room = max_errors - len(report.errors)
    if room > 0:
        report.errors.extend(errors[:room])


def _prepare(valid: list[EventIn], id_cache: dict[tuple[str, str], int]) -> _Work:
    """On the reading thread: on PostgreSQL, ids resolved and new users/items created (committed)
    before a writer stores the chunk, so writers never wait on each other's new users/items."""
    if is_partitioned():
        return events_prepare(events=valid, id_cache=id_cache)
    return valid


def _store(
    report: ImportReport,
    work: _Work,
    id_cache: dict[tuple[str, str], int],
    max_errors: int,
) -> None:
    if isinstance(work, PreparedEvents):
        result = events_store_prepared(prepared=work)
    else:
        result = events_ingest(events=work, use_copy=True, id_cache=id_cache)
    with _report_lock:
        report.accepted += result.accepted
        report.duplicates += result.duplicates
        report.rejected += result.rejected
        _keep_errors(report, result.errors, max_errors)


class _Stage:
    """Runs `handle` on each item put, on `threads` threads, each with its own database
    connection, at most one item queued per thread. Writers: PostgreSQL works on several chunks
    at once (two cores busy); concurrent chunks are safe, keys are claimed with ON CONFLICT in
    one sorted order. A failure is raised to the thread that puts or closes."""

    def __init__(self, handle: Callable[[Any], None], threads: int, name: str) -> None:
        self.handle = handle
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=threads)
        self.failure: BaseException | None = None
        self.threads = [
            threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        try:
            while (item := self.queue.get()) is not _DONE:
                if self.failure is None:
                    self.handle(item)
        except BaseException as exc:  # handed to the putting thread
            self.failure = exc
            while self.queue.get() is not _DONE:  # drain so the putter never blocks
                pass
        finally:
            connections.close_all()

    def put(self, item: Any) -> None:
        if self.failure is not None:
            raise self.failure
        self.queue.put(item)

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(_DONE)
        for thread in self.threads:
            thread.join()
        if self.failure is not None:
            raise self.failure


_DONE = object()
