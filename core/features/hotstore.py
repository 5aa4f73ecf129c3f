"""The hot copy of the features in Redis, for serving. Derived state: every value is written with
an idempotent SET/ZADD/SADD of what the database holds, never INCR, so a redelivered task or a
worker killed between commit and write changes nothing a re-run does not fix.

Keys (prefix `feat:`):

- `feat:u:<user external id>`: JSON `{"v": last event id, "c": {type: count}, "w": weighted sum,
  "t": last event unix time}`.
- `feat:s:<user external id>`: zset of the recent sequence, member `<event id, 20 digits>|<type>|
  <item external id>`, score the event's unix time in whole microseconds (Redis keeps integer
  scores of a small sorted set as integers, so an insert compares them without parsing decimal
  strings: about half the CPU of fractional seconds); trimmed to FEATURES_HISTORY_LENGTH. Layout 2
  of the activity keys (layout 1: `feat:h:`, scores in seconds), see `LAYOUTS`.
- `feat:i:<item external id>`: JSON `{"c": {type: count}, "p": popularity, "t1h"/"t24h"/"t7d":
  trend valued at "r" (unix time)}`.
- `feat:z:<window>` and `feat:z:<window>:<category>`: zsets of item external ids scored by
  popularity (`all`) or log-trend (`1h`, `24h`, `7d`, see `log_trend`).
- `feat:n:<kind>:<item external id>`: JSON `[[item external id, count], ...]`, best first (`kind`
  view or buy).
- `feat:unavailable`: set of external ids of deleted or unavailable items.
- `feat:wm:<consumer>`: the watermark whose writes are all in Redis (absent: Redis lost them).
- `feat:layout:<consumer>`: the layout its keys are written in; another number than `LAYOUTS`
  says (after an upgrade) makes the next run rebuild them, as if the marker were absent.

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
    return f"feat:s:{external_id}"


# The layout of each consumer's keys (see the module docstring), and what earlier layouts left.
LAYOUTS: dict[str, int] = {"activity": 2}
LEGACY_PATTERNS: dict[str, tuple[str, ...]] = {"activity": ("feat:h:*",)}


def layout_key(consumer: str) -> str:
    return f"feat:layout:{consumer}"


def history_score(unix_time: float) -> int:
    """A history score: the time in whole microseconds (event times have microseconds; a unix
    time in seconds as a double carries them exactly enough to round back)."""
    return round(unix_time * 1_000_000)


def history_time(score: float) -> float:
    """The unix time (seconds) of a history score."""
    return score / 1_000_000


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


def _cool_down() -> None:
    global _down_until
    _down_until = time.monotonic() + _COOLDOWN_SECONDS


def mark_down(exc: BaseException) -> None:
    """Remember that Redis failed; callers fall back to the database for a moment."""
    _cool_down()
    logger.warning("feature store unavailable, reading the database for now: %s", exc)


def answering(purpose: str = "job") -> redis.Redis | None:
    """The client for `purpose` if Redis answers a PING now, else None (and no one asks again
    for the cooldown, so a job that lost Redis asks at most once per cooldown whether it is
    back, without a warning each time)."""
    store = client(purpose)
    if store is None:
        return None
    try:
        store.ping()
    except redis.RedisError:
        _cool_down()
        return None
    return store


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


# Shoppers per request of `users_write`: its commands are sent while the next part is encoded,
# and Redis answers them between other clients' commands (no script holds it).
_USERS_PER_SEND = 2000


def users_write(store: redis.Redis, users: list[list[Any]], length: int) -> None:
    """SET each shopper's counts and ZADD their new history entries (then trim to the last
    `length`); `users` is [[user external id, counts JSON, [event id, type, item external id,
    unix time, ...]], ...].

    Plain commands, encoded here and pipelined on one connection, their replies checked in bulk
    (`_read_checked`). Per shopper that costs Redis about half of what one Lua script call per
    thousand shoppers did (the script decoded JSON and formatted members and scores in Lua, and
    each `redis.call` has its own overhead), and Python a fraction of a redis-py pipeline
    (~25 us a shopper, most of it encoding commands)."""
    if not users:
        return
    trim = b"$1\r\n0\r\n" + _bulk(b"%d" % (-length - 1))
    replies = 0
    connection = store.connection_pool.get_connection()
    try:
        for start in range(0, len(users), _USERS_PER_SEND):
            parts: list[bytes] = []
            add = parts.append
            for ext, blob, entries in users[start : start + _USERS_PER_SEND]:
                name = ext.encode()
                add(b"*3\r\n$3\r\nSET\r\n%s%s" % (_bulk(b"feat:u:" + name), _bulk(blob.encode())))
                replies += 1
                if not entries:
                    continue
                key = _bulk(b"feat:s:" + name)
                add(b"*%d\r\n$4\r\nZADD\r\n%s" % (len(entries) // 2 + 2, key))
                for index in range(0, len(entries), 4):
                    event_id, kind, item, unix_time = entries[index : index + 4]
                    add(_bulk(b"%d" % round(unix_time * 1_000_000)))
                    add(_bulk(b"%020d|%s|%s" % (event_id, kind.encode(), item.encode())))
                add(b"*4\r\n$15\r\nZREMRANGEBYRANK\r\n%s%s" % (key, trim))
                replies += 2
            # Sent while the next part is encoded; Redis answers into its buffer meanwhile.
            connection.send_packed_command([b"".join(parts)], check_health=False)
        _read_checked(connection, replies)
    except BaseException:
        connection.disconnect()  # replies may be left unread: never reuse it
        raise
    finally:
        store.connection_pool.release(connection)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _read_checked(connection: Any, replies: int) -> None:
    """Read `replies` replies of commands that answer in one line (SET: +OK; ZADD and
    ZREMRANGEBYRANK: a count, never negative) by counting line ends, not parsing each reply in
    Python. A "-" can only start an error reply: then ResponseError, once all are read. A lost
    connection or a timeout raises the redis-py error a command would."""
    sock = connection._sock
    if sock is None:
        raise redis.ConnectionError("the Redis connection is closed")
    pending = replies
    error = b""
    try:
        while pending > 0:
            data = sock.recv(1 << 18)
            if not data:
                raise redis.ConnectionError("Redis closed the connection")
            pending -= data.count(b"\n")
            if not error and b"-" in data:
                error = data[data.index(b"-") + 1 :].split(b"\r", 1)[0] or b"error"
    except TimeoutError as exc:
        raise redis.TimeoutError("Timeout reading from Redis") from exc
    except OSError as exc:
        raise redis.ConnectionError(f"Error reading from Redis: {exc}") from exc
    if error:
        raise redis.ResponseError(error.decode(errors="replace"))


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
