"""The storefront's read path: request -> history -> model (or a fallback tier) -> filters ->
business rules -> diversity -> a stored list served page by page, each page logged.

Tiers, in order, within the request's latency budget: the model (its answer cached per model and
history), the last list the model made for this shopper, co-occurrence neighbours of the history,
popular in the category, popular overall. A dead model server costs microseconds (the client's
circuit breaker) and never a 5xx.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache

from core.registry import arm_stats, shadow
from core.registry.selectors import ServingPlan, business_rules_active, serving_plan
from core.system.cache import (
    Entry,
    delete_indexed,
    flush_deferred,
    redis_key,
    redis_loads,
    write_many,
)
from core.system.metrics import observe_recommendations

from . import impressions, model_gateway, sources
from .models import Impression
from .ranking import (
    ActiveRule,
    Candidate,
    RuleKind,
    UnreadablePairs,
    apply_rules,
    checked_pairs,
    diversify,
    pack_pairs,
    unpack_pairs,
)

logger = logging.getLogger(__name__)

SOURCE_MODEL = "model"
SOURCE_CACHE = "cache"


class ListExpired(LookupError):
    """A page of a list that is not stored (any more) was asked for."""


class UnknownItem(LookupError):
    pass


@dataclass(frozen=True)
class StoredList:
    recommendation_id: str
    surface: str
    user_id: str
    model_name: str
    model_version: int | None
    source: str
    items: Sequence[tuple[str, float]]  # Candidates, or plain (item, score) pairs
    # The items as the cache keeps them (pickled (item, score) pairs), when already made.
    payload: bytes | None = None


@dataclass(frozen=True)
class _Finished:
    # Plain pairs, not Candidates: the collector stops tracking a tuple of a string and a float
    # (never a NamedTuple), so kept lists add nothing to its full passes (40,000 tracked
    # Candidates made each one take 14-17 ms).
    items: tuple[tuple[str, float], ...]
    payload: bytes


# Lists finished (filtered, ruled, diversified, cut) from a model answer, kept by this process
# under everything they were made from: a shopper who asks again while nothing changed gets
# theirs without putting a few hundred candidates through those steps again, which cost more
# than the rest of a cached request. Small: a repeat comes within a visit, and 512 lists of 200
# items hold about 15 MB.
_FINISHED_MAX = 512
_finished: dict[tuple, _Finished] = {}


@dataclass(frozen=True)
class ServedPage:
    recommendation_id: str
    model_name: str
    model_version: int | None
    source: str
    items: list[Candidate]
    page: int
    offset: int
    has_more: bool


@dataclass
class _Budget:
    seconds: float
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)


def _list_key(recommendation_id: str) -> str:
    return f"reclist:{recommendation_id}"


def _user_digest(user_id: str) -> str:
    return hashlib.sha1(user_id.encode()).hexdigest()  # noqa: S324 (a cache key)


def _last_good_key(user_id: str) -> str:
    return f"reclast:{_user_digest(user_id)}"


def _last_answer_keys(user_id: str) -> list[str]:
    """The model generation's and the shopper's last answer's Redis keys, to read with their
    features in one round trip; none when the cache is not on the feature store's Redis."""
    location = settings.CACHES["default"].get("LOCATION")
    if not user_id or not location or location != settings.FEATURES_REDIS_URL:
        return []
    return [
        redis_key(model_gateway.GENERATION_KEY) or "",
        redis_key(_last_good_key(user_id)) or "",
    ]


def _user_index_keys(user_id: str) -> list[str]:
    """The sets of a shopper's stored lists (for the right to be forgotten): one per list
    lifetime, this one first, then the one before. A list lives RECOMMENDATIONS_LIST_TTL_SECONDS,
    so those two hold every list still stored, and an index never outgrows what a shopper is
    served in two lifetimes (however busy the shopper id)."""
    ttl = settings.RECOMMENDATIONS_LIST_TTL_SECONDS
    bucket = int(time.time() // ttl)
    digest = _user_digest(user_id)
    return [f"recindex:{digest}:{bucket}", f"recindex:{digest}:{bucket - 1}"]


def _safe_cache_get(key: str):
    try:
        return cache.get(key)
    except Exception:  # Redis down: serve without the cache, /readyz says so
        logger.warning("cache unavailable for get", exc_info=True)
        return None


def _safe_delete(key: str) -> None:
    try:
        cache.delete(key)
    except Exception:  # Redis down: serve without the cache, /readyz says so
        logger.warning("cache unavailable for delete", exc_info=True)


def _safe_write(entries: Sequence[Entry], *, user_id: str = "") -> None:
    """The request's cache writes, sent in one go without waiting for Redis's answer (nothing
    in the request needs it); a shopper's own entries are indexed under them (so forgetting
    them finds every one)."""
    try:
        write_many(entries, index=_user_index_keys(user_id)[0] if user_id else None, wait=False)
    except Exception:  # Redis down: serve without the cache, /readyz says so
        logger.warning("cache unavailable for set", exc_info=True)


def _list_entry(stored: StoredList) -> Entry:
    payload = {
        "surface": stored.surface,
        "user_id": stored.user_id,
        "model_name": stored.model_name,
        "model_version": stored.model_version,
        "source": stored.source,
        "items": stored.payload or pack_pairs(stored.items),
    }
    return Entry(
        _list_key(stored.recommendation_id),
        payload,
        settings.RECOMMENDATIONS_LIST_TTL_SECONDS,
        indexed=True,
    )


def _load_list(recommendation_id: str) -> StoredList | None:
    """The stored list, or None: none stored, or one this version cannot read (another
    version's form, or damage), which is as good as expired."""
    payload = _safe_cache_get(_list_key(recommendation_id))
    if not payload:
        return None
    try:
        items = payload["items"]  # packed pairs; stored before the fourth session: plain ones
        return StoredList(
            recommendation_id=recommendation_id,
            surface=payload["surface"],
            user_id=payload["user_id"],
            model_name=payload["model_name"],
            model_version=payload["model_version"],
            source=payload["source"],
            items=unpack_pairs(items) if isinstance(items, bytes) else checked_pairs(items),
        )
    except (KeyError, TypeError, ValueError):
        logger.warning("stored list %s is unreadable; treated as expired", recommendation_id)
        return None


def _serve_page(stored: StoredList, *, page: int, count: int) -> ServedPage:
    offset = (page - 1) * count
    items = [Candidate(item_id, score) for item_id, score in stored.items[offset : offset + count]]
    served = ServedPage(
        recommendation_id=stored.recommendation_id,
        model_name=stored.model_name,
        model_version=stored.model_version,
        source=stored.source,
        items=items,
        page=page,
        offset=offset,
        has_more=offset + count < len(stored.items),
    )
    _log_impression(stored, served)
    observe_recommendations(stored.surface, stored.source)
    return served


def _log_impression(stored: StoredList, served: ServedPage) -> None:
    try:
        impressions.record(
            impressions.ImpressionRow(
                recommendation_id=served.recommendation_id,
                page=served.page,
                surface=stored.surface,
                source=stored.source,
                user_external_id=stored.user_id[:255],
                model_name=stored.model_name,
                model_version=stored.model_version,
                item_ids=[c.item_id for c in served.items],
                offset=served.offset,
                served_at=time.time(),
            )
        )
    except Exception:  # an impression lost is better than a storefront without recommendations
        logger.exception("could not log impression %s", served.recommendation_id)


def _finish(
    *,
    surface: str,
    user_id: str,
    ranked: Sequence[Candidate],
    model_name: str,
    model_version: int | None,
    source: str,
    exclude: set[str],
    category: str | None,
    count: int,
    page: int,
    diversity: bool = True,
    writes: Sequence[Entry] = (),
    unavailable_version: int | None = None,
    answer_key: tuple | None = None,
) -> ServedPage:
    """Filters, rules, diversity; store the list (with the request's other cache `writes`, one
    round trip); serve the asked page. `answer_key` names `ranked` (a model answer: its cache
    key, generation and version), so that the finished list can be kept and used again."""
    rules = business_rules_active()
    version = sources.shown_version(unavailable_version)
    key = None
    if answer_key is not None and version is not None:
        key = (
            answer_key,
            frozenset(exclude),
            category,
            tuple(rules),
            version,
            diversity and settings.RECOMMENDATIONS_MAX_PER_CATEGORY,
            settings.RECOMMENDATIONS_LIST_LENGTH,
        )
    finished = _finished.get(key) if key is not None else None
    if finished is None:
        finished = _finish_list(ranked, rules, exclude, category, diversity, unavailable_version)
        if key is not None:
            if len(_finished) >= _FINISHED_MAX:
                _finished.clear()
            _finished[key] = finished
    stored = StoredList(
        recommendation_id=uuid.uuid4().hex,
        surface=surface,
        user_id=user_id,
        model_name=model_name,
        model_version=model_version,
        source=source,
        items=finished.items,
        payload=finished.payload,
    )
    _safe_write([*writes, _list_entry(stored)], user_id=user_id)
    return _serve_page(stored, page=page, count=count)


def _finish_list(
    ranked: Sequence[Candidate],
    rules: list[ActiveRule],
    exclude: set[str],
    category: str | None,
    diversity: bool,
    unavailable_version: int | None,
) -> _Finished:
    """Filters (the request's exclusions, availability, the category), the business rules,
    diversity, and the cut to the stored list's length."""
    pinned = {item_id for rule in rules if rule.kind is RuleKind.PIN for item_id in rule.item_ids}
    candidates = [c for c in ranked if c.item_id not in exclude]
    categories = sources.recommendable_categories(
        [c.item_id for c in candidates] + sorted(pinned - exclude),
        unavailable_version=unavailable_version,
    )
    if category:
        categories = {
            item_id: item_category
            for item_id, item_category in categories.items()
            if item_category == category or item_category.startswith(category + "/")
        }
    candidates = [c for c in candidates if c.item_id in categories]
    candidates = apply_rules(candidates, rules, categories)
    if diversity:
        candidates = diversify(candidates, categories, settings.RECOMMENDATIONS_MAX_PER_CATEGORY)
    items = tuple((c.item_id, c.score) for c in candidates[: settings.RECOMMENDATIONS_LIST_LENGTH])
    return _Finished(items, pack_pairs(items))


def recommendations_page(
    *, recommendation_id: str, user_id: str, page: int, count: int
) -> ServedPage:
    """The next page of a list served before: the same order, no item repeated."""
    stored = _load_list(recommendation_id)
    if stored is None:
        # Served by this process a moment ago, its write still in flight? (Another process's
        # write was on the wire before the first page reached the caller.)
        with contextlib.suppress(Exception):
            flush_deferred()
            stored = _load_list(recommendation_id)
    if stored is None or stored.user_id != user_id:
        raise ListExpired(recommendation_id)
    return _serve_page(stored, page=page, count=count)


def _fallback(
    *,
    history: Sequence[sources.HistoryEntry],
    category: str | None,
    user_id: str,
    want: int,
    last: model_gateway.LastAnswer | None = None,
) -> tuple[list[Candidate], str]:
    if last is None and user_id:
        last = model_gateway.LastAnswer(0, _safe_cache_get(_last_good_key(user_id)))
    last_good = last.items() if last is not None else None
    if last_good:
        return [Candidate(item_id, score) for item_id, score in last_good], "fallback:last_good"
    if history:
        neighbours = sources.neighbour_items([entry.item_id for entry in history], limit=want)
        if neighbours:
            return neighbours, "fallback:similar"
    if category:
        popular = sources.popular_items(category=category, window=None, limit=want)
        if popular:
            return popular, "fallback:popular_category"
    return sources.popular_items(category=None, window=None, limit=want), "fallback:popular"


def _count_arm(plan: ServingPlan, *, error: bool = False, seconds: float | None = None) -> None:
    if plan.experiment_id is not None:
        arm_stats.record(
            experiment_id=plan.experiment_id, arm=plan.arm, error=error, model_seconds=seconds
        )


def _history(shopper: sources.Shopper, session_items: Sequence[str]) -> list[sources.HistoryEntry]:
    """The stored history (oldest first) then this session's items, the most recent kept."""
    session = [sources.HistoryEntry(item_id, sources.SESSION_WEIGHT) for item_id in session_items]
    return (shopper.history + session)[-settings.RECOMMENDATIONS_HISTORY_LENGTH :]


def recommendations_for_user(
    *,
    user_id: str,
    count: int,
    category: str | None = None,
    exclude: Sequence[str] = (),
    session_items: Sequence[str] = (),
    page: int = 1,
    read_last: bool = True,
) -> ServedPage:
    """A fresh list for a shopper (known or not) and its `page`-th page. `read_last=False`
    leaves the shopper's last answer unread (it is unreadable: asked again without it)."""
    budget = _Budget(settings.RECOMMENDATIONS_BUDGET_MS / 1000)
    prefetch = _last_answer_keys(user_id) if read_last else []
    shopper = sources.shopper(user_id, also=prefetch)
    last = None
    if prefetch and len(shopper.also) == 2:
        try:
            generation, value = (redis_loads(raw) for raw in shopper.also)
            last = model_gateway.LastAnswer(int(generation or 0), value)
        except Exception:  # unreadable: as if there were none (the cache is asked instead)
            logger.warning("shopper %r: unreadable last answer", user_id, exc_info=True)
    history = _history(shopper, session_items)
    excluded = set(exclude) | shopper.not_to_repeat
    want = settings.RECOMMENDATIONS_LIST_LENGTH + len(excluded)
    if category:
        want *= 4  # a category filter keeps a fraction of the model's list

    model_name, model_version = settings.MODEL_NAME, None
    writes: list[Entry] = []
    answer_key = None
    plan = serving_plan(user_id=user_id)
    ranked: Sequence[Candidate]
    if not history:
        ranked = sources.popular_items(category=category, window=None, limit=want)
        source = "fallback:popular_category" if category else "fallback:popular"
    else:
        started = time.perf_counter()
        try:
            answer = model_gateway.recommend(
                history, k=want, budget_seconds=budget.remaining(), label=plan.label, last=last
            )
        except model_gateway.ModelUnavailable as exc:
            _count_arm(plan, error=True)
            logger.warning("model unavailable, serving a fallback: %s", exc)
            ranked, source = _fallback(
                history=history, category=category, user_id=user_id, want=want, last=last
            )
        else:
            _count_arm(plan, seconds=None if answer.cached else time.perf_counter() - started)
            ranked, source = answer.candidates, SOURCE_CACHE if answer.cached else SOURCE_MODEL
            model_name, model_version = answer.model_name, answer.model_version
            if answer.key:
                answer_key = (answer.key, answer.generation, model_name, model_version)
            if plan.shadow_label:
                shadow.shadow_score(history=history, k=want, shown=ranked, plan=plan)
            if answer.cache_entry is not None:
                writes.append(answer.cache_entry)
            # The shopper's last answer: after a fresh one, or a cached one that was not it.
            if user_id and not answer.was_last and (last is not None or not answer.cached):
                writes.append(
                    Entry(
                        _last_good_key(user_id),
                        answer.last_value(),
                        settings.RECOMMENDATIONS_LIST_TTL_SECONDS * 48,
                    )
                )
    excluded |= {entry.item_id for entry in history}
    try:
        return _finish(
            surface="user",
            user_id=user_id,
            ranked=ranked,
            model_name=model_name,
            model_version=model_version,
            source=source,
            exclude=excluded,
            category=category,
            count=count,
            page=page,
            writes=writes,
            unavailable_version=shopper.unavailable_version,
            answer_key=answer_key,
        )
    except UnreadablePairs:
        if last is None:
            raise
        # The last answer stood in for the model's, but its items are in a form this version
        # cannot read (another version wrote them, or they are damaged): drop it, ask again.
        logger.warning("shopper %r: unreadable last answer; asking again", user_id)
        _safe_delete(_last_good_key(user_id))
        return recommendations_for_user(
            user_id=user_id,
            count=count,
            category=category,
            exclude=exclude,
            session_items=session_items,
            page=page,
            read_last=False,
        )


def similar_items(*, item_id: str, count: int, exclude: Sequence[str] = ()) -> ServedPage:
    if not sources.item_exists(item_id):
        raise UnknownItem(item_id)
    budget = _Budget(settings.RECOMMENDATIONS_BUDGET_MS / 1000)
    want = settings.RECOMMENDATIONS_LIST_LENGTH
    model_name, model_version = settings.MODEL_NAME, None
    writes: list[Entry] = []
    try:
        answer = model_gateway.similar(
            item_id, k=want, budget_seconds=budget.remaining(), label=serving_plan(user_id="").label
        )
        ranked, source = answer.candidates, SOURCE_CACHE if answer.cached else SOURCE_MODEL
        model_name, model_version = answer.model_name, answer.model_version
        if answer.cache_entry is not None:
            writes.append(answer.cache_entry)
    except model_gateway.ModelUnavailable as exc:
        logger.warning("model unavailable for similar items: %s", exc)
        ranked, source = [], ""
    if not ranked:
        ranked, source = sources.neighbour_items([item_id], limit=want), "fallback:similar"
    if not ranked:
        item_category = sources.recommendable_categories({item_id}).get(item_id)
        ranked = sources.popular_items(category=item_category or None, window=None, limit=want)
        source = "fallback:popular_category" if item_category else "fallback:popular"
    return _finish(
        surface="similar",
        user_id="",
        ranked=ranked,
        model_name=model_name,
        model_version=model_version,
        source=source,
        exclude=set(exclude) | {item_id},
        category=None,
        count=count,
        page=1,
        diversity=False,
        writes=writes,
    )


def popular(*, category: str | None, window: str | None, count: int) -> ServedPage:
    ranked = sources.popular_items(
        category=category, window=window, limit=settings.RECOMMENDATIONS_LIST_LENGTH
    )
    return _finish(
        surface="popular",
        user_id="",
        ranked=ranked,
        model_name="",
        model_version=None,
        source=f"popular:{window or 'all'}",
        exclude=set(),
        category=category,
        count=count,
        page=1,
        diversity=False,
    )


def rank_for_user(
    *, user_id: str, item_ids: Sequence[str], session_items: Sequence[str] = ()
) -> ServedPage:
    """The given candidates in personal order. Candidates the model does not rank within its
    depth follow in popularity order (among the RANK_DEPTH most popular; the rest keep the
    caller's order); unknown or unavailable candidates are dropped."""
    budget = _Budget(settings.RECOMMENDATIONS_BUDGET_MS / 1000)
    history = _history(sources.shopper(user_id), session_items)
    model_name, model_version, source = settings.MODEL_NAME, None, "fallback:popular"
    order: dict[str, float] = {}
    if history:
        try:
            answer = model_gateway.recommend(
                history,
                k=model_gateway.RANK_DEPTH,
                budget_seconds=budget.remaining(),
                label=serving_plan(user_id=user_id).label,
            )
            order = {c.item_id: c.score for c in answer.candidates}
            model_name, model_version = answer.model_name, answer.model_version
            source = SOURCE_CACHE if answer.cached else SOURCE_MODEL
            if answer.cache_entry is not None:
                _safe_write([answer.cache_entry])
        except model_gateway.ModelUnavailable as exc:
            logger.warning("model unavailable for ranking: %s", exc)
    popularity = {
        c.item_id: c.score
        for c in sources.popular_items(category=None, window=None, limit=model_gateway.RANK_DEPTH)
    }
    unique = list(dict.fromkeys(item_ids))
    ranked = sorted(
        unique,
        key=lambda item_id: (
            item_id not in order,
            -order.get(item_id, 0.0),
            -popularity.get(item_id, 0.0),
        ),
    )
    scored = [Candidate(item_id, order.get(item_id, 0.0)) for item_id in ranked]
    categories = sources.recommendable_categories(set(unique))
    kept = [c for c in scored if c.item_id in categories]
    stored = StoredList(
        recommendation_id=uuid.uuid4().hex,
        surface="rank",
        user_id=user_id,
        model_name=model_name,
        model_version=model_version,
        source=source,
        items=kept,
    )
    return _serve_page(stored, page=1, count=max(1, len(kept)))


def recommendations_user_erase(user_pk: int) -> int:
    """Right to be forgotten: the shopper's impressions, stored lists and last good list (an
    eraser `user_forget` calls inside its transaction). Impressions still in a web process's
    writer buffer (served within the last RECOMMENDATIONS_IMPRESSION_FLUSH_MS) are dropped in
    this process; another process may write one that late, which the next forget removes."""
    from core.catalog.models import User

    external_id = User.objects.filter(pk=user_pk).values_list("external_id", flat=True).first()
    if external_id is None:
        return 0
    impressions.forget(external_id)
    removed, _ = Impression.objects.filter(user_external_id=external_id[:255]).delete()
    try:
        removed += sum(delete_indexed(index) for index in _user_index_keys(external_id))
        removed += int(bool(cache.delete(_last_good_key(external_id))))
    except Exception:  # the lists expire anyway (RECOMMENDATIONS_LIST_TTL_SECONDS)
        logger.warning("cache unavailable: a forgotten shopper's lists stay until they expire")
    return removed
