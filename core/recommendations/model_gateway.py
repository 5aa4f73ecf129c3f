"""The serving path's view of the model: one process-wide client, answers cached per (model,
history), and every transient failure turned into `ModelUnavailable` for the fallback tiers."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings
from django.core.cache import cache

from core.system.cache import Entry
from core.system.metrics import observe_model_server_call
from ml.serving.client import ModelServerError, ModelServerUnavailable, PredictionClient

from .ranking import Candidate, UnreadablePairs, checked_pairs, pack_pairs, unpack_pairs

if TYPE_CHECKING:
    from .sources import HistoryEntry

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How deep the model ranks when it orders a caller's candidates (POST /rank).
RANK_DEPTH = 1000
# Bumped whenever what "the model" means changes (a push, promotion or rollback), so cached
# answers of the previous model are never served after a switch.
GENERATION_KEY = "recommendations:model-generation"
# Leave this much of the budget for filtering and rules after the model answers.
_BUDGET_RESERVE_SECONDS = 0.005
_MIN_CALL_SECONDS = 0.002


class ModelUnavailable(Exception):
    """No model answer within the budget: serve a fallback tier."""


class PickledCandidates(Sequence[Candidate]):
    """A shopper's last answer's candidates as stored (pickled (item, score) pairs), unpickled
    on first use: a request whose finished list this process keeps never needs them. A blob
    this version cannot read raises UnreadablePairs then (services asks again without it)."""

    __slots__ = ("_items", "blob")

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self._items: list[Candidate] | None = None

    def _load(self) -> list[Candidate]:
        if self._items is None:
            self._items = _candidates(unpack_pairs(self.blob))
        return self._items

    def __getitem__(self, index):  # type: ignore[override]
        return self._load()[index]

    def __len__(self) -> int:
        return len(self._load())

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self._load())


@dataclass(frozen=True)
class ModelAnswer:
    candidates: Sequence[Candidate]
    model_name: str
    model_version: int | None
    cached: bool
    # A fresh answer's cache entry: the caller writes it with its other writes, in one round trip.
    cache_entry: Entry | None = None
    # The answer's cache key and the model generation it holds for (a shopper's last answer
    # records them); `was_last`: it is the shopper's last answer, given as `last`.
    key: str = ""
    generation: int = 0
    was_last: bool = False

    def last_value(self) -> tuple:
        """What a shopper's last answer stores (see `LastAnswer`): the items pickled on their
        own, so that reading the value does not unpickle them."""
        if isinstance(self.candidates, PickledCandidates):
            items = self.candidates.blob
        else:
            items = pack_pairs(self.candidates)
        return (self.key, self.generation, self.model_name, self.model_version, items)


def _candidates(items: list[tuple[str, float]]) -> list[Candidate]:
    """Candidates from a cached answer's (item, score) pairs: tuple.__new__ straight costs half
    of Candidate(i, s), for a few hundred items a request."""
    new = tuple.__new__
    return [new(Candidate, item) for item in items]


@dataclass(frozen=True)
class LastAnswer:
    """A shopper's last model answer, read with their features (one round trip for both), and
    the model generation at that read. It stands for the cached answer when it was made for the
    same request (same cache key: model, label, depth and history) under the same generation."""

    generation: int
    # (cache key, generation, model name, version, pickled [(item, score), ...]); written before
    # the fourth session, the pairs unpickled; before the third, the pairs alone.
    value: tuple | list | None

    def answer(self, key: str) -> ModelAnswer | None:
        value = self.value
        if not isinstance(value, tuple) or len(value) != 5:
            return None
        if value[0] != key or value[1] != self.generation:
            return None
        _, generation, name, version, items = value
        if isinstance(items, bytes):  # checked when unpickled (UnreadablePairs)
            candidates: Sequence[Candidate] = PickledCandidates(items)
        else:
            try:
                candidates = _candidates(checked_pairs(items))
            except UnreadablePairs:
                return None
        return ModelAnswer(candidates, name, version, True, None, key, generation, True)

    def items(self) -> list[tuple[str, float]] | None:
        """The last answer's items, whatever model made them (a fallback tier)."""
        value: Any = self.value
        if isinstance(value, tuple) and len(value) == 5:
            value = value[4]
        if not value:
            return None
        try:
            return unpack_pairs(value) if isinstance(value, bytes) else checked_pairs(value)
        except UnreadablePairs:
            logger.warning("a last answer is unreadable; passed over", exc_info=True)
            return None


_client: PredictionClient | None = None
_client_lock = threading.Lock()


def client() -> PredictionClient:
    """The process's client (its channel is made lazily, and again after a fork)."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = PredictionClient(
                    settings.MODEL_SERVER_TARGET,
                    model_name=settings.MODEL_NAME,
                    timeout=settings.MODEL_SERVER_TIMEOUT_MS / 1000,
                    failure_threshold=settings.MODEL_SERVER_BREAKER_FAILURES,
                    reset_timeout=settings.MODEL_SERVER_BREAKER_SECONDS,
                    observer=observe_model_server_call,
                )
    return _client


def reset_client() -> None:
    """Forget the client (tests that move the model server; settings changes)."""
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
        _client = None


def model_generation() -> int:
    try:
        return int(cache.get(GENERATION_KEY) or 0)
    except Exception:
        return 0


def model_generation_bump() -> None:
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:
        cache.set(GENERATION_KEY, 1, timeout=None)
    except Exception:
        logger.warning("could not bump the model generation", exc_info=True)


def _cache_key(kind: str, label: str | None, payload: str, k: int) -> str:
    digest = hashlib.sha256(payload.encode()).hexdigest()[:32]
    return f"model:{kind}:{settings.MODEL_NAME}:{label or '-'}:{k}:{digest}"


def _cached(key: str) -> tuple[int, ModelAnswer | None]:
    """(the model generation now, the cached answer if it was made under that generation): one
    round trip for both."""
    try:
        found = cache.get_many([GENERATION_KEY, key])
    except Exception:
        return 0, None
    generation = int(found.get(GENERATION_KEY) or 0)
    value = found.get(key)
    if not value:
        return generation, None
    try:
        made_under, name, version, items = value
        candidates = _candidates(checked_pairs(items))
    except (TypeError, ValueError):  # another version's form, or damage: as if not cached
        logger.warning("cached model answer %s is unreadable; asking the model", key)
        return generation, None
    if made_under != generation:
        return generation, None
    return generation, ModelAnswer(candidates, name, version, True, None, key, generation)


def _cache_entry(key: str, generation: int, answer: ModelAnswer) -> Entry | None:
    if settings.RECOMMENDATIONS_CACHE_TTL_SECONDS <= 0:
        return None
    value = (
        generation,
        answer.model_name,
        answer.model_version,
        [(c.item_id, c.score) for c in answer.candidates],
    )
    return Entry(key, value, settings.RECOMMENDATIONS_CACHE_TTL_SECONDS)


def _call_timeout(budget_seconds: float) -> float:
    remaining = budget_seconds - _BUDGET_RESERVE_SECONDS
    if remaining < _MIN_CALL_SECONDS:
        raise ModelUnavailable("no budget left for the model")
    return remaining


def _log_failure(exc: Exception) -> None:
    # Down or slow is expected now and then; anything else (a model that breaks the serving
    # contract, a bad request) is a bug someone must see, but the storefront still gets a list.
    if isinstance(exc, ModelServerUnavailable):
        logger.warning("model server unavailable: %s", exc)
    else:
        logger.error("model server refused the request: %s", exc)


# When the server refuses a label (it restarted without the registry's config, or the canary
# version misbehaves), ask for the next one down rather than fail the shopper's request.
_LABEL_FALLBACK: dict[str | None, str | None] = {"canary": "stable", "stable": None}


def _by_label(call: Callable[[str | None], T], label: str | None) -> T:
    while True:
        try:
            return call(label)
        except ModelServerUnavailable:
            raise
        except ModelServerError as exc:
            if label is None:
                raise
            fallback = _LABEL_FALLBACK.get(label)
            logger.warning("label %r refused (%s), asking for %s", label, exc, fallback or "latest")
            label = fallback


def recommend(
    history: Sequence[HistoryEntry],
    *,
    k: int,
    budget_seconds: float,
    label: str | None = None,
    last: LastAnswer | None = None,
) -> ModelAnswer:
    """The model's top `k` for this history: the shopper's `last` answer when it is the same
    one, else the cache, else the model server."""
    ids = [entry.item_id for entry in history]
    weights = [float(entry.weight) for entry in history]
    key = _cache_key(
        "rec", label, "\x1f".join(f"{i}\x1e{w:g}" for i, w in zip(ids, weights, strict=True)), k
    )
    if last is not None and (same := last.answer(key)) is not None:
        return same
    generation, hit = _cached(key)
    if hit is not None:
        return hit
    try:
        result = _by_label(
            lambda chosen: client().recommend(
                ids, weights, k, label=chosen, timeout=_call_timeout(budget_seconds)
            ),
            label,
        )
    except ModelServerError as exc:
        _log_failure(exc)
        raise ModelUnavailable(str(exc)) from exc
    answer = ModelAnswer(
        [Candidate(i, s) for i, s in zip(result.item_ids, result.scores, strict=True)],
        result.model_name,
        result.model_version,
        cached=False,
        key=key,
        generation=generation,
    )
    return replace(answer, cache_entry=_cache_entry(key, generation, answer))


def similar(
    item_id: str, *, k: int, budget_seconds: float, label: str | None = None
) -> ModelAnswer:
    key = _cache_key("sim", label, item_id, k)
    generation, hit = _cached(key)
    if hit is not None:
        return hit
    try:
        (result,) = _by_label(
            lambda chosen: client().similar(
                [item_id], k, label=chosen, timeout=_call_timeout(budget_seconds)
            ),
            label,
        )
    except ModelServerError as exc:
        _log_failure(exc)
        raise ModelUnavailable(str(exc)) from exc
    answer = ModelAnswer(
        [
            Candidate(i, s)
            for i, s in zip(result.item_ids, result.scores, strict=True)
            if i != item_id
        ],
        result.model_name,
        result.model_version,
        cached=False,
    )
    return replace(answer, cache_entry=_cache_entry(key, generation, answer))
