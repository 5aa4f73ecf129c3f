"""A synthetic storefront: catalog, shoppers and their events, deterministic by seed.

Used by the demo loader, the tests and the benchmarks. Shoppers are learnable on purpose:

- every shopper prefers a few leaf categories (a sparse Dirichlet draw over ~32 categories);
- items have a skewed (log-normal) popularity inside their category;
- a *session* stays in one category and walks through neighbouring items (the next item is a
  few steps away from the previous one in the category's list), so there is sequential signal;
- each visited item produces a funnel of events: view, then maybe click, add_to_cart, then
  purchase or remove_from_cart, then maybe a rating.

Timestamps are integer epoch seconds (UTC), spread over ``days`` days ending at ``end``. Event
``value`` is 1.0, except rating (1..5 stars) and purchase (the item price).

    >>> shop = generate_storefront(n_users=100, n_items=50, n_events=2_000, seed=1)
    >>> shop.events["type"][:3], len(shop.events["event_id"])  # doctest: +SKIP
    >>> shop.write_events_csv("events.csv"); shop.write_catalog_jsonl("catalog.jsonl")

CLI: ``python -m ml.synthetic --users 10000 --items 5000 --events 1000000 --out DIR`` writes
``DIR/events.csv`` and ``DIR/catalog.jsonl``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.interactions import Interactions, interactions_from_columns

CATEGORIES: dict[str, tuple[str, ...]] = {
    "electronics": ("audio", "phones", "laptops", "cameras"),
    "home": ("kitchen", "furniture", "lighting", "garden"),
    "fashion": ("shoes", "jackets", "bags", "watches"),
    "sports": ("running", "cycling", "fitness", "outdoor"),
    "books": ("fiction", "science", "cooking", "travel"),
    "beauty": ("skincare", "fragrance", "haircare", "makeup"),
    "toys": ("puzzles", "building", "dolls", "games"),
    "grocery": ("coffee", "tea", "snacks", "spices"),
}
_ADJECTIVES = (
    "Classic", "Compact", "Deluxe", "Eco", "Essential", "Pro", "Smart", "Ultra", "Vintage", "Nova",
)  # fmt: skip
EVENT_COLUMNS = ("event_id", "user_id", "session_id", "item_id", "type", "value", "timestamp")
DEFAULT_END = 1_780_000_000  # 2026-05-28 UTC: fixed so output does not depend on the clock


@dataclass(frozen=True)
class Storefront:
    """Columns of the catalog, the shoppers and the events (numpy arrays, equal lengths).

    ``items``: item_id, title, category ("top/leaf"), tags (list[str] per item), price, available.
    ``users``: user_id, favourite_category.
    ``events``: event_id, user_id, session_id, item_id, type, value, timestamp (epoch s), sorted by
    timestamp.
    """

    items: dict[str, np.ndarray]
    users: dict[str, np.ndarray]
    events: dict[str, np.ndarray]

    @property
    def n_events(self) -> int:
        return int(self.events["event_id"].shape[0])

    def interactions(self, weights: Mapping[str, float] | None = None) -> Interactions:
        """The events as weighted training interactions (see ``ml.interactions``)."""
        return interactions_from_columns(
            user_ids=self.events["user_id"],
            item_ids=self.events["item_id"],
            types=self.events["type"],
            timestamps=self.events["timestamp"].astype(np.float64),
            weights=weights,
        )

    def iter_events(self) -> Iterator[dict[str, object]]:
        """Events as plain dicts (what an ingestion API would receive), in time order."""
        columns = [self.events[name] for name in EVENT_COLUMNS]
        for row in zip(*columns, strict=True):
            yield {
                "event_id": str(row[0]),
                "user_id": str(row[1]),
                "session_id": str(row[2]),
                "item_id": str(row[3]),
                "type": str(row[4]),
                "value": float(row[5]),
                "timestamp": int(row[6]),
            }

    def iter_items(self) -> Iterator[dict[str, object]]:
        for n in range(self.items["item_id"].shape[0]):
            yield {
                "item_id": str(self.items["item_id"][n]),
                "title": str(self.items["title"][n]),
                "category": str(self.items["category"][n]),
                "tags": list(self.items["tags"][n]),
                "price": float(self.items["price"][n]),
                "available": bool(self.items["available"][n]),
            }

    def write_events_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(EVENT_COLUMNS)
            values = [f"{v:g}" for v in self.events["value"].tolist()]
            writer.writerows(
                zip(
                    self.events["event_id"].tolist(),
                    self.events["user_id"].tolist(),
                    self.events["session_id"].tolist(),
                    self.events["item_id"].tolist(),
                    self.events["type"].tolist(),
                    values,
                    self.events["timestamp"].tolist(),
                    strict=True,
                )
            )
        return path

    def write_events_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", encoding="utf-8") as handle:
            for event in self.iter_events():
                handle.write(json.dumps(event) + "\n")
        return path

    def write_catalog_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", encoding="utf-8") as handle:
            for item in self.iter_items():
                handle.write(json.dumps(item) + "\n")
        return path


def generate_storefront(
    *,
    n_users: int,
    n_items: int,
    n_events: int,
    seed: int = 0,
    days: int = 90,
    end: int = DEFAULT_END,
) -> Storefront:
    """Generate a storefront with exactly ``n_events`` events (deterministic for a seed)."""
    if n_users < 1 or n_items < 1 or n_events < 0:
        raise ValueError("n_users and n_items must be >= 1, n_events >= 0")
    rng = np.random.default_rng(seed)
    leaves = [f"{top}/{leaf}" for top, subs in CATEGORIES.items() for leaf in subs]
    n_categories = len(leaves)

    # Catalog: items grouped by category (contiguous blocks), popularity skewed inside each.
    item_category = np.sort(rng.integers(0, n_categories, n_items))
    popularity = rng.lognormal(0.0, 1.2, n_items)
    category_start = np.searchsorted(item_category, np.arange(n_categories))
    category_size = np.bincount(item_category, minlength=n_categories)
    id_numbers = rng.permutation(n_items) + 100_000
    item_ids = np.array([f"sku-{n}" for n in id_numbers], dtype=object)
    items = _catalog(rng, item_ids, item_category, leaves)

    # Shoppers: sparse category preferences, skewed activity.
    category_weight = category_size / max(n_items, 1)
    preference = rng.dirichlet(np.full(n_categories, 0.15), n_users) * 0.9 + category_weight * 0.1
    preference *= category_size > 0
    preference /= preference.sum(axis=1, keepdims=True)
    activity = rng.lognormal(0.0, 0.8, n_users)
    user_ids = np.array([f"user-{n:06d}" for n in range(n_users)], dtype=object)
    users = {
        "user_id": user_ids,
        "favourite_category": np.array(leaves, dtype=object)[preference.argmax(axis=1)],
    }

    # Sessions -> visits (one item each) -> funnel events; generate a margin, then cut.
    mean_events_per_visit = 1.55
    n_visits_wanted = int(n_events / mean_events_per_visit * 1.15) + 16
    mean_session = 5.0
    n_sessions = max(1, int(n_visits_wanted / mean_session))
    session_user = rng.choice(n_users, n_sessions, p=activity / activity.sum())
    session_length = np.minimum(rng.geometric(1.0 / mean_session, n_sessions), 40)
    cumulative = np.cumsum(preference, axis=1)
    draws = rng.random(n_sessions)[:, None]
    session_category = np.minimum((cumulative[session_user] < draws).sum(axis=1), n_categories - 1)
    visits = _walk_sessions(
        rng, session_category, session_length, category_start, category_size, popularity
    )
    visit_session, visit_item, visit_step = visits

    # Time: sessions start uniformly in the window; visits ~90 s apart inside a session.
    start_time = end - days * 86_400
    session_start = rng.integers(start_time, end - 3_600, n_sessions)
    visit_time = (
        session_start[visit_session] + visit_step * 90 + rng.integers(0, 60, len(visit_session))
    )

    # Funnel per visit: stages 0 view, 1 click, 2 add_to_cart, 3 purchase/remove, 4 rating.
    n_visits = visit_session.shape[0]
    clicked = rng.random(n_visits) < 0.35
    carted = np.logical_and(clicked, rng.random(n_visits) < 0.30)
    bought = np.logical_and(carted, rng.random(n_visits) < 0.75)
    removed = np.logical_and(carted, ~bought)
    rated = np.logical_and(bought, rng.random(n_visits) < 0.30)
    stages = np.ones(n_visits, dtype=np.int64) + clicked + carted + (bought | removed) + rated
    event_visit = np.repeat(np.arange(n_visits), stages)
    stage = np.arange(event_visit.shape[0]) - np.repeat(np.cumsum(stages) - stages, stages)
    kinds = np.array(
        ["view", "click", "add_to_cart", "purchase", "rating", "remove_from_cart"], dtype=object
    )
    kind_index = np.where((stage == 3) & removed[event_visit], 5, stage)
    event_type = kind_index.astype(np.int8)
    event_time = visit_time[event_visit] + stage * 15
    # Keep the earliest n_events, in time order (ties: generation order).
    chrono = np.argsort(event_time, kind="stable")[:n_events]
    event_visit, event_type, event_time = (
        event_visit[chrono],
        event_type[chrono],
        event_time[chrono],
    )
    item_index = visit_item[event_visit]
    value = np.ones(event_visit.shape[0], dtype=np.float64)
    is_purchase = event_type == 3
    value[is_purchase] = items["price"][item_index[is_purchase]]
    is_rating = event_type == 4
    value[is_rating] = rng.integers(3, 6, int(is_rating.sum()))
    session_of_event = visit_session[event_visit]
    events = {
        "event_id": np.array(
            [f"ev-{seed}-{n:09d}" for n in range(event_visit.shape[0])], dtype=object
        ),
        "user_id": user_ids[session_user[session_of_event]],
        "session_id": np.array([f"s-{n:08d}" for n in range(n_sessions)], dtype=object)[
            session_of_event
        ],
        "item_id": item_ids[item_index],
        "type": kinds[event_type],
        "value": value,
        "timestamp": event_time.astype(np.int64),
    }
    return Storefront(items=items, users=users, events=events)


def _walk_sessions(
    rng: np.random.Generator,
    session_category: np.ndarray,
    session_length: np.ndarray,
    category_start: np.ndarray,
    category_size: np.ndarray,
    popularity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items visited by each session: a popularity-weighted start, then short hops to neighbours."""
    n_sessions = session_category.shape[0]
    # First item: popularity-weighted inside the category (inverse CDF on per-category cumsums).
    n_items = popularity.shape[0]
    item_category = np.repeat(np.arange(category_size.shape[0]), category_size)
    cumsum = np.cumsum(popularity)
    before = np.r_[0.0, cumsum][category_start]
    mass = np.r_[0.0, cumsum][category_start + category_size] - before
    target = before[session_category] + rng.random(n_sessions) * mass[session_category]
    current = np.minimum(np.searchsorted(cumsum, target, side="right"), n_items - 1)
    current = np.where(item_category[current] == session_category, current,
                       category_start[session_category])  # fmt: skip
    sessions, items, steps = [], [], []
    for step in range(int(session_length.max(initial=0))):
        alive = np.flatnonzero(session_length > step)
        if step > 0:
            hop = rng.geometric(0.45, alive.shape[0]) * rng.choice([-1, 1], alive.shape[0])
            category = session_category[alive]
            offset = (current[alive] - category_start[category] + hop) % category_size[category]
            current[alive] = category_start[category] + offset
        sessions.append(alive)
        items.append(current[alive].copy())
        steps.append(np.full(alive.shape[0], step))
    session = np.concatenate(sessions)
    order = np.lexsort((np.concatenate(steps), session))
    return session[order], np.concatenate(items)[order], np.concatenate(steps)[order]


def _catalog(
    rng: np.random.Generator, item_ids: np.ndarray, item_category: np.ndarray, leaves: list[str]
) -> dict[str, np.ndarray]:
    n_items = item_ids.shape[0]
    leaf_names = np.array([leaf.split("/")[1] for leaf in leaves], dtype=object)
    adjectives = np.array(_ADJECTIVES, dtype=object)[rng.integers(0, len(_ADJECTIVES), n_items)]
    titles = [
        f"{adjective} {leaf_names[c]} item {n}"
        for n, (adjective, c) in enumerate(zip(adjectives, item_category.tolist(), strict=True))
    ]
    tag_pool = np.array(["new", "sale", "bestseller", "eco", "premium", "gift", "bundle"])
    tag_mask = rng.random((n_items, tag_pool.shape[0])) < 0.2
    tags = np.empty(n_items, dtype=object)
    for n in range(n_items):
        tags[n] = [leaf_names[item_category[n]], *tag_pool[tag_mask[n]].tolist()]
    price_scale = rng.uniform(5, 200, len(leaves))[item_category]
    return {
        "item_id": item_ids,
        "title": np.array(titles, dtype=object),
        "category": np.array(leaves, dtype=object)[item_category],
        "tags": tags,
        "price": np.round(price_scale * rng.lognormal(0.0, 0.4, n_items), 2),
        "available": rng.random(n_items) < 0.95,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic storefront (events + catalog).")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        shop = generate_storefront(
            n_users=args.users, n_items=args.items, n_events=args.events, seed=args.seed
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    generated = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    if args.format == "csv":
        events_path = shop.write_events_csv(args.out / "events.csv")
    else:
        events_path = shop.write_events_jsonl(args.out / "events.jsonl")
    catalog_path = shop.write_catalog_jsonl(args.out / "catalog.jsonl")
    print(
        f"{shop.n_events} events, {args.users} users, {args.items} items "
        f"(generated in {generated:.1f}s) -> {events_path}, {catalog_path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
