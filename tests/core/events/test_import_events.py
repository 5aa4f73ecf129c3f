"""manage.py import_events: MovieLens ratings.csv, JSON lines with a mapping, re-runs, bad rows."""

from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO

import orjson
import pytest
from django.core.management import CommandError, call_command

from core.catalog.models import Item, User
from core.events.models import Event

pytestmark = pytest.mark.django_db

MOVIELENS = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,3,4.0,964981247
2,3,5.0,1445714835
2,50,oops,1445714836
3,31,0.5,1306463578
"""


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("import_events", *map(str, args), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_movielens_ratings_csv_imports_as_is(tmp_path):
    # given
    path = tmp_path / "ratings.csv"
    path.write_text(MOVIELENS)

    # when
    out, err = run(path)

    # then: four good rows, one bad one named by its line
    assert "read 5, accepted 4, duplicates 0, rejected 1" in out
    assert "line 5 (value): invalid" in err
    rating = Event.objects.get(user__external_id="2", item__external_id="3")
    assert (rating.type, rating.value) == ("rating", 5.0)
    assert rating.timestamp == datetime.fromtimestamp(1445714835, tz=UTC)
    assert User.objects.count() == 3
    assert set(Item.objects.values_list("external_id", flat=True)) == {"1", "3", "31"}


def test_importing_the_same_file_twice_stores_nothing_new(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text(MOVIELENS)
    run(path)

    out, _ = run(path, "--chunk-size", 2)

    assert "accepted 0, duplicates 4, rejected 1" in out
    assert Event.objects.count() == 4


def test_reimporting_after_forgetting_a_shopper_does_not_bring_them_back(tmp_path):
    # given: an imported file, then shopper "2" forgotten (their events and row gone)
    from core.catalog.services import user_forget

    path = tmp_path / "ratings.csv"
    path.write_text(MOVIELENS)
    run(path)
    user_forget(external_id="2")

    # when
    out, _ = run(path)

    # then: every row is a duplicate (the keys stay); nobody is created again
    assert "accepted 0, duplicates 4, rejected 1" in out
    assert not User.objects.filter(external_id="2").exists()
    assert Event.objects.count() == 3


def test_json_lines_with_a_column_mapping(tmp_path):
    path = tmp_path / "clicks.jsonl"
    lines = [
        {"id": "c1", "who": "ann", "what": "sku-1", "kind": "click", "at": "2025-03-01T10:00:00Z"},
        {"id": "c2", "who": "bob", "what": "sku-2", "kind": "purchase", "at": 1740823200},
        {"id": "c3", "who": "bob", "what": "sku-2", "kind": "teleport", "at": 1740823200},
    ]
    path.write_text("\n".join(orjson.dumps(line).decode() for line in lines) + "\n{broken\n")

    out, err = run(path, "--map", "event_id=id,user_id=who,item_id=what,type=kind,timestamp=at")

    assert "read 4, accepted 2, duplicates 0, rejected 2" in out
    assert "line 3 (type): unknown_type" in err
    assert "line 4: unreadable" in err
    assert set(Event.objects.values_list("event_id", flat=True)) == {"c1", "c2"}


def test_csv_with_event_fields_as_columns_and_a_default_type(tmp_path):
    path = tmp_path / "views.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,2025-01-01T00:00:00Z\nu2,i2,\n")

    out, _ = run(path, "--type", "view")

    assert "accepted 2" in out
    assert set(Event.objects.values_list("type", flat=True)) == {"view"}


def test_bad_mapping_and_missing_columns_stop_with_a_message(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")

    with pytest.raises(CommandError, match="unknown event field 'colour'"):
        run(path, "--map", "colour=a")
    with pytest.raises(CommandError, match=r"column\(s\) zzz not in the header"):
        run(path, "--map", "user_id=zzz")
    with pytest.raises(CommandError, match="no such file"):
        run(tmp_path / "missing.csv")


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_chunks_are_stored_by_a_writer_thread(tmp_path):
    # given: several chunks, no surrounding transaction (as from the command line)
    path = tmp_path / "ratings.csv"
    rows = [f"{n % 13},{n % 17},{1 + n % 5}.0,{1_600_000_000 + n}" for n in range(250)]
    path.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")

    # when
    out, _ = run(path, "--chunk-size", 40)
    again, _ = run(path, "--chunk-size", 40)

    # then
    assert "read 250, accepted 250, duplicates 0, rejected 0" in out
    assert "accepted 0, duplicates 250" in again
    assert Event.objects.count() == 250


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stage", ["events_prepare", "events_store_prepared"])
def test_a_failing_stage_stops_the_import_with_its_error(tmp_path, monkeypatch, stage):
    # given: a file of many chunks, and a preparing or storing step that fails on its 2nd chunk
    from core.events import importing

    path = tmp_path / "ratings.csv"
    rows = [f"{n % 13},{n % 17},{1 + n % 5}.0,{1_600_000_000 + n}" for n in range(400)]
    path.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    real = getattr(importing, stage)
    calls = []

    def failing(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(**kwargs)

    monkeypatch.setattr(importing, stage, failing)

    # when / then: the error reaches the caller (no thread left waiting)
    with pytest.raises(RuntimeError, match="disk full"):
        importing.events_import(path=path, chunk_size=20)
    assert Event.objects.count() < 400


def test_events_load_takes_api_shaped_dicts_for_generated_data():
    from core.events.importing import events_load

    generated = [
        {"user_id": "u1", "item_id": "i1", "type": "view", "timestamp": 1_700_000_000},
        {"user_id": "u1", "item_id": "i2", "type": "purchase", "value": 9.5},
        {"user_id": "u2", "item_id": "i1", "type": "zap"},
    ]

    first = events_load(events=generated)
    again = events_load(events=generated)

    assert (first.accepted, first.rejected) == (2, 1)
    assert [(e.index, e.code) for e in first.errors] == [(2, "unknown_type")]
    assert again.duplicates == 2
    assert Event.objects.count() == 2


def test_column_validation_answers_exactly_as_row_validation():
    # given: CSV cells of every awkward kind, in every column
    import itertools
    import random

    from core.events.importing import _timestamp, _value
    from core.events.validation import EventValidator

    rng = random.Random(7)
    ids = ["u1", "", "x" * 255, "y" * 256, "²", " 7 "]
    types = ["rating", "view", "", "bogus"]
    numbers = ["", "3.5", "nan", "inf", " 4", "1_0", "oops", "-2"]
    moments = [
        "",
        "1445714835",
        "1445714835000",
        "99999999999999999999999",
        "²",
        "-5",
        "1.5",
        "2026-01-31T12:00:00Z",
        "garbage",
        str(4_000_000_000),
        " 12",
    ]
    sessions = ["", "s1", "s" * 129]
    rows = [
        [
            rng.choice(ids),
            rng.choice(ids),
            rng.choice(types),
            rng.choice(numbers),
            rng.choice(moments),
            rng.choice(sessions),
            f"e{n}" if n % 13 else "",
        ]
        for n in range(3000)
    ] + [
        list(cells)
        for cells in itertools.product(["u"], ["i"], types, numbers, moments, ["s"], ["k"])
    ]
    names = ["user_id", "item_id", "type", "value", "timestamp", "session_id", "event_id"]

    def as_dict(cells: list[str]) -> dict:
        row = dict(zip(names, cells, strict=True))
        row |= {
            name: row[name] or None for name in ("user_id", "item_id", "session_id", "event_id")
        }
        row |= {"value": _value(row["value"]), "timestamp": _timestamp(row["timestamp"])}
        row["type"] = row["type"] or "view"  # the file's default type
        return row

    columns = {name: [cells[n] for cells in rows] for n, name in enumerate(names)}
    columns["type"] = [text or "view" for text in columns["type"]]
    lines = list(range(2, len(rows) + 2))
    validator = EventValidator()

    # when
    by_columns = validator.validate_text_columns(columns, lines, lambda p: as_dict(rows[p]))
    by_rows = validator.validate([as_dict(cells) for cells in rows], indexes=lines)

    # then: the same events and the same errors
    assert by_columns == by_rows
    assert 0 < len(by_rows[0]) < len(rows)
