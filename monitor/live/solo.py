"""One `restrav serve` per Redis without cluster mode: detect a second one and refuse it.

Two serve processes on one Redis without ``serve.cluster.enabled`` (a compose ``scale``,
a copy started by hand) would both score every stream of the shared desired set and
interleave their ``seq``. :class:`SoloGuard` holds the key :data:`monitor.keys.SERVE_SOLO`
(a random holder id, TTL :attr:`ttl_s`, renewed every :attr:`renew_s` while running):

* :meth:`acquire` takes the key when it is free. When another holder has it, it watches
  the key: renewed (its TTL went up) means a live serve, and :meth:`acquire` raises
  :class:`~monitor.errors.ConfigError` in one line; gone (a crashed or drained one)
  means it takes it. Redis unreachable: it logs and goes on (the sink buffers; the
  renewal loop takes the key once Redis answers).
* :meth:`run` renews it until cancelled; :meth:`release` deletes it (if still ours).

A draining serve stops renewing first and deletes the key once its streams stopped,
so its successor (Helm's ``Recreate``, a systemd restart) starts after at most a TTL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from .. import keys
from ..errors import ConfigError

log = logging.getLogger("restrav.serve")

_REDIS_ERRORS = (RedisError, OSError, ConnectionError, TimeoutError)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class SoloGuard:
    """The single-serve key of one serve process (see the module docstring)."""

    def __init__(self, client: Any, replica: str, ttl_s: float = 10.0, renew_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.clock = clock
        self.holder = json.dumps({"replica": replica, "id": secrets.token_hex(8)})
        self.held = False

    async def _take(self) -> bool:
        ok = await self.client.set(keys.SERVE_SOLO, self.holder, nx=True,
                                   px=int(self.ttl_s * 1000))
        self.held = bool(ok)
        return self.held

    async def acquire(self) -> None:
        """Take the key, or raise ConfigError when another live serve holds it."""
        try:
            if await self._take():
                return
            last_ttl: int | None = None
            deadline = self.clock() + self.ttl_s + self.renew_s
            while self.clock() < deadline:
                raw, ttl_ms = await self.client.get(keys.SERVE_SOLO), await self.client.pttl(
                    keys.SERVE_SOLO)
                if raw is not None and last_ttl is not None and ttl_ms > last_ttl:
                    other = _replica_of(raw)
                    raise ConfigError(
                        f"another restrav serve ({other}) is running on this Redis without "
                        "serve.cluster.enabled: stop it, or enable serve.cluster on every "
                        "replica (they then share the streams)"
                    )
                last_ttl = ttl_ms if raw is not None else None
                await asyncio.sleep(min(0.5, self.renew_s / 2))
                if await self._take():
                    return
        except _REDIS_ERRORS as exc:
            log.warning("cannot check for another serve on this Redis (%s); going on",
                        type(exc).__name__)
            return
        raise ConfigError(  # held all along without a renewal seen: not ours to take
            f"{keys.SERVE_SOLO} is held and not renewed; delete it if no other restrav "
            "serve runs on this Redis"
        )

    async def run(self) -> None:
        """Renew the key every :attr:`renew_s` until cancelled (takes it if it was lost)."""
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                if self.held:
                    renewed = await self.client.eval(
                        _RENEW, 1, keys.SERVE_SOLO, self.holder, int(self.ttl_s * 1000))
                    self.held = bool(renewed)
                if not self.held and not await self._take():
                    log.error("another restrav serve holds %s on this Redis: both score the "
                              "same streams (enable serve.cluster)", keys.SERVE_SOLO)
            except _REDIS_ERRORS as exc:
                log.debug("single-serve key not renewed (%s)", type(exc).__name__)

    async def release(self) -> None:
        """Delete the key if it is still ours (a successor may start at once)."""
        try:
            await self.client.eval(_RELEASE, 1, keys.SERVE_SOLO, self.holder)
        except _REDIS_ERRORS as exc:
            log.debug("single-serve key not released (%s); it expires", type(exc).__name__)
        self.held = False


def _replica_of(raw: bytes | str) -> str:
    """The other holder's replica name, for the message (its id stays private)."""
    try:
        return str(json.loads(raw).get("replica", "unknown replica"))
    except (ValueError, AttributeError):
        return "unknown replica"


__all__ = ["SoloGuard"]
