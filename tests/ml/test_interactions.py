import json

import numpy as np
import pytest

from ml import train as train_cli
from ml.interactions import InvalidEventsError, load_events, parse_weights
from ml.train import TrainParams, train


def _write(path, text):
    path.write_text(text)
    return path


def test_csv_events_get_event_type_weights_and_zero_weight_types_are_dropped(tmp_path):
    path = _write(
        tmp_path / "events.csv",
        "event_id,user_id,item_id,type,timestamp\n"
        "1,u1,a,view,100\n"
        "2,u1,a,purchase,2026-01-01T00:00:00+00:00\n"
        "3,u2,b,remove_from_cart,101\n"
        "4,u2,b,click,\n",
    )

    events = load_events(path)

    assert events.user_ids.tolist() == ["u1", "u1", "u2"]
    assert events.weights.tolist() == [1.0, 8.0, 2.0]
    assert events.timestamps[1] == pytest.approx(1767225600.0)


def test_jsonl_and_custom_weights(tmp_path):
    lines = [
        {"user_id": "u1", "item_id": "a", "type": "click", "timestamp": 1},
        {"user_id": "u2", "item_id": "b", "type": "view", "timestamp": 2},
    ]
    path = _write(tmp_path / "events.jsonl", "\n".join(json.dumps(line) for line in lines))

    events = load_events(path, format="jsonl", weights=parse_weights("click=3,view=0.5"))

    assert events.weights.tolist() == [3.0, 0.5]


def test_movielens_ratings_are_all_positive_interactions(tmp_path):
    path = _write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,0.5,964982703\n1,20,5.0,964982704\n",
    )

    events = load_events(path, format="movielens")

    assert events.item_ids.tolist() == ["10", "20"]
    assert np.all(events.weights == 5.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user_id,item_id,colour\nu,a,red\n", "unknown column(s) colour"),
        ("", "empty file"),
        ("user_id,item_id\n", "no events"),
        ("user_id,item_id,type\nu,a,teleport\n", "unknown event type(s) teleport"),
        ("user_id,item_id,type\nu,a,remove_from_cart\n", "weight of 0"),
        ("user_id,timestamp\nu,1\n", "missing required column(s) item_id"),
        ("user_id,item_id,timestamp\nu,a,yesterday\n", "neither epoch seconds nor ISO 8601"),
    ],
)
def test_bad_events_files_raise_a_clear_error(tmp_path, text, message):
    path = _write(tmp_path / "events.csv", text)

    with pytest.raises(InvalidEventsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_events(path)


def test_bad_weight_spec_is_a_clear_error():
    with pytest.raises(InvalidEventsError, match="bad weight"):
        parse_weights("view=lots")
    with pytest.raises(InvalidEventsError, match="bad weight"):
        parse_weights("teleport=1")


def test_single_user_and_single_item_are_refused_with_a_reason(tmp_path):
    one_user = load_events(_write(tmp_path / "a.csv", "user_id,item_id\nu,a\nu,b\nu,c\n"))
    one_item = load_events(_write(tmp_path / "b.csv", "user_id,item_id\nu,a\nv,a\n"))

    with pytest.raises(InvalidEventsError, match="single user"):
        train(one_user, TrainParams(evaluate=False))
    with pytest.raises(InvalidEventsError, match="catalog of one item"):
        train(one_item, TrainParams(evaluate=False))


def test_cli_prints_the_error_without_a_traceback(tmp_path, capsys):
    path = _write(tmp_path / "events.csv", "user_id,item_id,colour\nu,a,red\n")

    status = train_cli.main(["--events", str(path), "--evaluate-only"])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("error: ")
    assert "Traceback" not in captured.err


def test_users_without_a_second_item_give_a_documented_skipped_evaluation(tmp_path):
    events = load_events(_write(tmp_path / "a.csv", "user_id,item_id\nu,a\nv,b\n"))

    result = train(events)

    assert result.metrics["model"] == "skipped: no user has two distinct items"
    assert result.model.n_items == 2
