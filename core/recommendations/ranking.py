"""Pure re-ranking steps applied after the model: business rules and diversity.

No database, no cache: callers pass what the steps need, so each step is testable alone and the
order of steps is visible in `services.py`.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter
from typing import Any, NamedTuple


class Candidate(NamedTuple):
    """A tuple, not a dataclass: a request builds a few hundred (a frozen dataclass's __init__
    costs about five times as much)."""

    item_id: str
    score: float


def pack_pairs(items: Iterable[tuple[str, float]]) -> bytes:
    """(item, score) pairs as the cache keeps a list of them (stored lists, a shopper's last
    answer): pickled on their own, so that reading what holds them does not unpickle them."""
    return pickle.dumps([(item_id, score) for item_id, score in items], pickle.HIGHEST_PROTOCOL)


class UnreadablePairs(ValueError):
    """A cached list of (item, score) pairs this version cannot read: another version wrote it
    in another form, or it is damaged. Its readers treat it as not cached."""


_first, _second = itemgetter(0), itemgetter(1)
_SCORE_TYPES = frozenset({float, int})


def checked_pairs(value: Any) -> list[tuple[str, float]]:
    """`value` when it is a list of (item id, score) pairs as this version writes them, else
    UnreadablePairs. About 13 us for 200 pairs, by type sets rather than a loop per pair."""
    if (
        type(value) is list
        and set(map(type, value)) <= {tuple}
        and set(map(len, value)) <= {2}
        and set(map(type, map(_first, value))) <= {str}
        and set(map(type, map(_second, value))) <= _SCORE_TYPES
    ):
        return value
    raise UnreadablePairs(f"not a list of (item, score) pairs: {type(value).__name__}")


def unpack_pairs(blob: bytes) -> list[tuple[str, float]]:
    """What pack_pairs wrote, checked (UnreadablePairs if it is not that)."""
    try:
        value = pickle.loads(blob)  # noqa: S301 (written by pack_pairs, like the rest of the cache)
    except Exception as exc:
        raise UnreadablePairs(f"not a pickle: {exc}") from exc
    return checked_pairs(value)


class RuleKind(StrEnum):
    PIN = "pin"  # put the item at `position` (1-based) whenever it is a candidate or not
    BOOST = "boost"  # multiply the score by `factor` (> 1)
    BURY = "bury"  # move to the end, keeping the relative order of buried items
    EXCLUDE = "exclude"  # never show


@dataclass(frozen=True)
class ActiveRule:
    """A business rule in force now. It targets items by id and/or by category subtree."""

    kind: RuleKind
    item_ids: frozenset[str] = frozenset()
    category: str = ""  # "" = no category target
    factor: float = 1.0
    position: int = 1

    def matches(self, item_id: str, category: str) -> bool:
        if item_id in self.item_ids:
            return True
        if self.category:
            return category == self.category or category.startswith(self.category + "/")
        return False


def apply_rules(
    candidates: Sequence[Candidate],
    rules: Iterable[ActiveRule],
    categories: Mapping[str, str],
) -> list[Candidate]:
    """Exclude, boost, bury, then pin. Pinned items that are not candidates are inserted (they
    must be in `categories`, i.e. known to be available); pins beyond the list's end append."""
    rules = list(rules)
    if not rules:
        return list(candidates)

    def category_of(item_id: str) -> str:
        return categories.get(item_id, "")

    excludes = [rule for rule in rules if rule.kind is RuleKind.EXCLUDE]
    boosts = [rule for rule in rules if rule.kind is RuleKind.BOOST]
    buries = [rule for rule in rules if rule.kind is RuleKind.BURY]
    pins = sorted(
        (rule for rule in rules if rule.kind is RuleKind.PIN), key=lambda rule: rule.position
    )

    kept = [
        c
        for c in candidates
        if not any(r.matches(c.item_id, category_of(c.item_id)) for r in excludes)
    ]
    boosted = []
    for candidate in kept:
        factor = 1.0
        for rule in boosts:
            if rule.matches(candidate.item_id, category_of(candidate.item_id)):
                factor *= rule.factor
        boosted.append(
            candidate._replace(score=candidate.score * factor) if factor != 1 else candidate
        )
    boosted.sort(key=lambda c: c.score, reverse=True)  # stable: ties keep model order
    top = [
        c for c in boosted if not any(r.matches(c.item_id, category_of(c.item_id)) for r in buries)
    ]
    bottom = [c for c in boosted if c not in top]
    ranked = top + bottom

    for rule in pins:
        for item_id in sorted(rule.item_ids):
            if item_id not in categories or any(
                r.matches(item_id, category_of(item_id)) for r in excludes
            ):
                continue  # unknown, unavailable or excluded items are never pinned in
            existing = next((c for c in ranked if c.item_id == item_id), None)
            if existing is not None:
                ranked.remove(existing)
            pinned = existing or Candidate(item_id=item_id, score=0.0)
            ranked.insert(min(rule.position - 1, len(ranked)), pinned)
    return ranked


def diversify(
    candidates: Sequence[Candidate], categories: Mapping[str, str], max_per_category: int
) -> list[Candidate]:
    """At most `max_per_category` items of one top-level category before any item over the cap;
    over-cap items follow in their order, so a list is never cut short by diversity.
    0 disables."""
    if max_per_category <= 0:
        return list(candidates)
    seen: dict[str, int] = {}
    tops: dict[str, str] = {}  # category path -> its top level: a few paths, many candidates
    head: list[Candidate] = []
    tail: list[Candidate] = []
    for candidate in candidates:
        path = categories.get(candidate.item_id, "")
        top_level = tops.get(path)
        if top_level is None:
            top_level = tops[path] = path.split("/", 1)[0]
        count = seen.get(top_level, 0)
        if top_level and count >= max_per_category:
            tail.append(candidate)
        else:
            seen[top_level] = count + 1
            head.append(candidate)
    return head + tail
