import csv
import json

import numpy as np

from ml import synthetic
from ml.evaluate import evaluate_scorer, popularity_scorer
from ml.interactions import EVENT_TYPES, load_events
from ml.model import ModelParams, fit, history_scorer
from ml.sequences import build_sequences, leave_last_out


def test_same_seed_same_storefront_other_seed_other_storefront():
    first = synthetic.generate_storefront(n_users=50, n_items=40, n_events=3_000, seed=7)
    again = synthetic.generate_storefront(n_users=50, n_items=40, n_events=3_000, seed=7)
    other = synthetic.generate_storefront(n_users=50, n_items=40, n_events=3_000, seed=8)

    for name, column in first.events.items():
        np.testing.assert_array_equal(column, again.events[name])
    np.testing.assert_array_equal(first.items["item_id"], again.items["item_id"])
    assert not np.array_equal(first.events["item_id"], other.events["item_id"])


def test_events_are_well_formed():
    shop = synthetic.generate_storefront(n_users=80, n_items=60, n_events=5_000, seed=1)
    events = shop.events

    assert shop.n_events == 5_000
    assert len(set(events["event_id"].tolist())) == 5_000
    assert set(events["type"].tolist()) <= set(EVENT_TYPES)
    assert np.all(np.diff(events["timestamp"]) >= 0)
    assert set(events["item_id"].tolist()) <= set(shop.items["item_id"].tolist())
    assert set(events["user_id"].tolist()) <= set(shop.users["user_id"].tolist())
    ratings = events["value"][events["type"] == "rating"]
    assert np.all((ratings >= 1) & (ratings <= 5))
    assert all("/" in category for category in shop.items["category"])


def test_cli_writes_events_and_catalog_that_load_back(tmp_path):
    status = synthetic.main(
        ["--users", "30", "--items", "20", "--events", "500", "--out", str(tmp_path)]
    )

    assert status == 0
    with (tmp_path / "events.csv").open() as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == synthetic.EVENT_COLUMNS
    events = load_events(tmp_path / "events.csv")
    assert 0 < len(events) <= 500  # remove_from_cart has weight 0
    items = [json.loads(line) for line in (tmp_path / "catalog.jsonl").read_text().splitlines()]
    assert len(items) == 20
    assert {"item_id", "title", "category", "tags", "price", "available"} <= set(items[0])


def test_a_trained_model_beats_popularity_on_synthetic_data():
    # given: shoppers with category tastes and sessions that walk through neighbouring items
    shop = synthetic.generate_storefront(n_users=400, n_items=300, n_events=40_000, seed=3)
    train, users, items = leave_last_out(build_sequences(shop.interactions()))

    # when
    model = fit(train, ModelParams(dim=16, l2=10.0))
    learned = evaluate_scorer(history_scorer(model, train), train, users, items)
    popular = evaluate_scorer(popularity_scorer(train), train, users, items)

    # then: clearly better, not by a hair
    assert learned.hr10 > 2 * popular.hr10
    assert learned.ndcg10 > 2 * popular.ndcg10
