"""The hot copy of the features in Redis, for serving. Derived state: every value is written with
an idempotent SET/ZADD/SADD of what the database holds, never INCR, so a redelivered task or a
worker killed between commit and write changes nothing a re-run does not fix.

Keys (prefix `feat:`):

- `feat:u:<user external id>`: JSON `{"v": last event id, "c": {type: count}, "w": weighted sum,
  "t": last event unix time}`.
- `feat:h:<user external id>`: zset of the recent sequence, member `<event id, 20 digits>|<type>|
  <item external id>`, score the event's unix time; trimmed to FEATURES_HISTORY_LENGTH.
- `feat:i:<item external id>`: JSON `{"c": {type: count}, "p": popularity, "t1h"/"t24h"/"t7d":
  trend valued at "r" (unix time)}`.
- `feat:z:<window>` and `feat:z:<window>:<category>`: zsets of item external ids scored by
  popularity (`all`) or log-trend (`1h`, `24h`, `7d`, see `log_trend`).
- `feat:n:<kind>:<item external id>`: JSON `[[item external id, count], ...]`, best first (`kind`
  view or buy).
- `feat:unavailable`: set of external ids of deleted or unavailable items.
- `feat:wm:<consumer>`: the watermark whose writes are all in Redis (absent: Redis lost them).

A missing `feat:wm:*` marker means Redis came back empty (or was never filled): the selectors read
the database meanwhile and the next job run rebuilds everything from it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis
from django.conf import settings

logger = logging.getLogger(__name__)

PREFIX = "feat:"
UNAVAILABLE = "feat:unavailable"
# Bumped with every change of UNAVAILABLE, so a web process may keep the flags it read while the
# version stays the same. It starts from the clock when Redis has none (after a flush or restart),
# so a number a process cached before is not seen again.
UNAVAILABLE_VERSION = "feat:unavailable:version"
WINDOWS: dict[str, float] = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}  # half-lives
ZSET_WINDOWS = ("all", *WINDOWS)
# How long serving skips Redis after an error, so a dead Redis costs microseconds per request.
_COOLDOWN_SECONDS = 2.0

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
_down_until = 0.0


def user_key(external_id: str) -> str:
    return f"feat:u:{external_id}"


def history_key(external_id: str) -> str:
    return f"feat:h:{external_id}"


def item_key(external_id: str) -> str:
    return f"feat:i:{external_id}"


def zset_key(window: str, category: str | None = None) -> str:
    return f"feat:z:{window}:{category}" if category else f"feat:z:{window}"


def neighbours_key(kind: str, external_id: str) -> str:
    return f"feat:n:{kind}:{external_id}"


def marker_key(consumer: str) -> str:
    return f"feat:wm:{consumer}"


def decay_rate(window: str) -> float:
    return math.log(2.0) / WINDOWS[window]


def log_trend(value: float, ref: float, window: str) -> float:
    """A trend value as a score comparable across items and constant in time: ln(value at ref)
    + ref * rate. Every item decays at the same rate, so this order is the order at any moment."""
    return math.log(max(value, 1e-300)) + ref * decay_rate(window)


def trend_now(log_score: float, window: str, now: float) -> float:
    """The decayed value now of a `log_trend` score."""
    exponent = log_score - now * decay_rate(window)
    return math.exp(exponent) if exponent > -700 else 0.0


def category_prefixes(category: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b', 'a/b/c']: an item is popular in its node and every ancestor."""
    parts = [part for part in category.strip("/").split("/") if part]
    return ["/".join(parts[: index + 1]) for index in range(len(parts))]


def unavailable_changed(pipe: Any) -> None:
    """Queue the version bump of UNAVAILABLE on `pipe`, after the change itself."""
    pipe.set(UNAVAILABLE_VERSION, time.time_ns(), nx=True)
    pipe.incr(UNAVAILABLE_VERSION)


def unavailable_update(
    store: redis.Redis, *, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> int:
    """SADD `add`, SREM `remove` (10,000 a command), then bump the version if that changed the
    set; how many members changed."""
    pipe = store.pipeline(transaction=False)
    for start in range(0, len(add), 10_000):
        pipe.sadd(UNAVAILABLE, *add[start : start + 10_000])
    for start in range(0, len(remove), 10_000):
        pipe.srem(UNAVAILABLE, *remove[start : start + 10_000])
    changed = sum(pipe.execute()) if add or remove else 0
    if changed:
        pipe = store.pipeline(transaction=False)
        unavailable_changed(pipe)
        pipe.execute()
    return int(changed)


def client(purpose: str = "serve") -> redis.Redis | None:
    """The Redis client for `purpose` ("serve": short timeouts; "job": long pipelines), or None
    when there is no FEATURES_REDIS_URL or Redis failed in the last few seconds."""
    url = settings.FEATURES_REDIS_URL
    if not url or time.monotonic() < _down_until:
        return None
    found = _clients.get(purpose)
    if found is None:
        with _lock:
            found = _clients.get(purpose)
            if found is None:
                timeout = 0.25 if purpose == "serve" else 10.0
                found = redis.Redis.from_url(
                    url, socket_connect_timeout=0.25, socket_timeout=timeout
                )
                _clients[purpose] = found
    return found


def mark_down(exc: BaseException) -> None:
    """Remember that Redis failed; callers fall back to the database for a moment."""
    global _down_until
    _down_until = time.monotonic() + _COOLDOWN_SECONDS
    logger.warning("feature store unavailable, reading the database for now: %s", exc)


def reset_clients() -> None:
    """Forget clients and the failure window (after fork, and in tests)."""
    global _down_until
    with _lock:
        _clients.clear()
        _down_until = 0.0


def delete_matching(store: redis.Redis, pattern: str) -> int:
    deleted = 0
    batch: list[Any] = []
    for key in store.scan_iter(match=pattern, count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            deleted += store.unlink(*batch)
            batch = []
    if batch:
        deleted += store.unlink(*batch)
    return deleted


# Writes many shoppers in one call: ARGV[1] = history length, ARGV[2] = JSON
# [[user external id, counts JSON, [event id, type, item external id, unix time, ...]], ...].
# The script formats history members and scores, so the client packs one argument of plain
# values instead of building two strings per event. Numbers reach Lua as exact doubles (orjson
# writes the shortest exact form, cjson reads it with strtod); "%.17g" writes them back exactly
# (Redis would format a Lua number with 14 digits). Event ids are below 2^53. A history that got
# entries is trimmed to the last `length` (a no-op when it is shorter: cheaper here than counting
# a shopper's events in the database).
_USERS_SCRIPT = """
local length = tonumber(ARGV[1])
local users = cjson.decode(ARGV[2])
local format = string.format
for _, user in ipairs(users) do
  local ext, entries = user[1], user[3]
  redis.call('SET', 'feat:u:' .. ext, user[2])
  local n = #entries
  if n > 0 then
    local key = 'feat:h:' .. ext
    local args, count = {}, 0
    for i = 1, n, 4 do
      args[count + 1] = format('%.17g', entries[i + 3])
      args[count + 2] = format('%020d|%s|%s', entries[i], entries[i + 1], entries[i + 2])
      count = count + 2
      if count >= 1000 then
        redis.call('ZADD', key, unpack(args, 1, count))
        count = 0
      end
    end
    if count > 0 then
      redis.call('ZADD', key, unpack(args, 1, count))
    end
    redis.call('ZREMRANGEBYRANK', key, 0, -length - 1)
  end
end
return #users
"""

# Shoppers per script call: each call runs a few milliseconds, so serving reads in between never
# wait long; the calls of one batch go in one pipeline (one round trip).
_USERS_PER_CALL = 1000


def users_write(store: redis.Redis, users: list[list[Any]], length: int) -> None:
    """SET each shopper's counts and ZADD their new history entries (trimmed to `length`);
    `users` as the script above takes them. One round trip."""
    if not users:
        return
    script = store.register_script(_USERS_SCRIPT)
    pipe = store.pipeline(transaction=False)
    for start in range(0, len(users), _USERS_PER_CALL):
        script(args=[length, orjson.dumps(users[start : start + _USERS_PER_CALL])], client=pipe)
    pipe.execute()


# ARGV[1] = JSON {"set": [[key, value], ...], "zadd": [[key, [score, member, ...]], ...]}, scores
# as JSON numbers (formatted exactly by the script, as above).
_WRITE_SCRIPT = """
local data = cjson.decode(ARGV[1])
local format = string.format
for _, pair in ipairs(data["set"]) do
  redis.call('SET', pair[1], pair[2])
end
for _, entry in ipairs(data["zadd"]) do
  local key, flat = entry[1], entry[2]
  local n = #flat
  local start = 1
  while start <= n do
    local stop = math.min(start + 999, n)
    local args = {}
    for i = start, stop, 2 do
      args[#args + 1] = format('%.17g', flat[i])
      args[#args + 1] = flat[i + 1]
    end
    redis.call('ZADD', key, unpack(args))
    start = stop + 1
  end
end
return 1
"""


def bulk_write(store: redis.Redis, values: dict[str, str], zsets: dict[str, list[Any]]) -> None:
    """SET `values` and ZADD `zsets` ({key: [score, member, score, member, ...]}) in one call:
    one argument to pack, whatever the number of members."""
    if not values and not zsets:
        return
    payload = {"set": list(values.items()), "zadd": list(zsets.items())}
    store.register_script(_WRITE_SCRIPT)(args=[orjson.dumps(payload)])


def run_pipeline(store: redis.Redis, commands: list[tuple], *, chunk: int = 5000) -> None:
    """Send commands [(method name, *args), ...] in pipelined chunks (not atomic: every command is
    idempotent)."""
    for start in range(0, len(commands), chunk):
        pipe = store.pipeline(transaction=False)
        for name, *args in commands[start : start + chunk]:
            getattr(pipe, name)(*args)
        pipe.execute()
