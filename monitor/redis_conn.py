"""Every Redis client of restrav-monitor is built here, from one URL.

Accepted URLs (anything else is a :class:`~monitor.errors.ConfigError` that never
quotes the URL's credentials):

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) and
  ``unix://path?db=N``: one Redis server, through redis-py's ``from_url`` (its query
  options, e.g. ``ssl_ca_certs``, work as documented there);
* ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/SERVICE[/DB]``
  and ``rediss+sentinel://...`` (TLS to the sentinels and the data nodes): Redis
  Sentinel. The hosts are sentinels (default port 26379); ``SERVICE`` is the name the
  sentinels monitor (``sentinel monitor SERVICE ...``); ``DB`` defaults to 0. The user
  and password are the data nodes' (primary and replicas). Query options:

  - ``sentinel_username``, ``sentinel_password``: the sentinels' own ACL user and
    password (default: none; sentinels often have none, or another than the data
    nodes');
  - ``sentinel_tls``: ``true``/``false``, TLS to the sentinels (default: as the
    scheme says), for deployments that encrypt only the data nodes;
  - ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` (paths), ``ssl_cert_reqs``
    (``required``, ``optional``, ``none``), ``ssl_check_hostname`` (``true``/
    ``false``): TLS settings, for the sentinels and the data nodes alike.

A Sentinel client asks the sentinels for the current primary whenever it opens a
connection, and drops its connections when one fails or the node it reached turns
out to be a replica (``READONLY``): after a failover the next command (or its
retry by the caller) reaches the new primary, without a restart. Redis errors
during a failover are the usual connection errors and ``READONLY`` refusals,
which every writer already treats as an outage (:mod:`monitor.redis_faults`).

Closing a client closes its connections to the sentinels as well.

:class:`Durability` is the ``WAIT`` after a write that must survive a failover (a job
enqueued, a job's answer, a lease grant with its fencing increment): Redis replicates
asynchronously, so a write the primary acknowledged can be missing on the replica a
sentinel promotes. With ``replicas`` > 0 such a write is sent in one pipeline with
``WAIT replicas timeout_ms`` (same connection: ``WAIT`` counts the replicas that have
this connection's writes), and fewer acknowledgements raise
:class:`~monitor.redis_faults.NotReplicated`: the write is treated as not done.
Base module: imports nothing of restrav-monitor but the error tree and
:mod:`monitor.redis_faults`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel as sentinel

from .errors import ConfigError
from .redis_faults import NotReplicated

SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
"""URL schemes of Redis Sentinel (the second with TLS)."""

PLAIN_SCHEMES = frozenset({"redis", "rediss", "unix"})
"""URL schemes of one Redis server."""

DEFAULT_SENTINEL_PORT = 26379

_TLS_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password", "sentinel_tls"})
_CERT_REQS = frozenset({"required", "optional", "none"})
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL. ``repr`` never shows the passwords."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False
    sentinel_tls: bool = False
    tls_options: tuple[tuple[str, Any], ...] = ()

    def data_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the data nodes (primary, replicas)."""
        out: dict[str, Any] = {"db": self.db}
        if self.username is not None:
            out["username"] = self.username
        if self.password is not None:
            out["password"] = self.password
        if self.tls:
            out["ssl"] = True
            out.update(self.tls_options)
        return out

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the sentinels (timeouts added by the caller)."""
        out: dict[str, Any] = {}
        if self.sentinel_username is not None:
            out["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            out["password"] = self.sentinel_password
        if self.sentinel_tls:
            out["ssl"] = True
            out.update(self.tls_options)
        return out


@dataclass(frozen=True)
class Durability:
    """How many replicas must acknowledge a write that has to survive a failover, and
    how long to wait for them (module docstring). ``replicas == 0``: off (one Redis)."""

    replicas: int = 0
    timeout_ms: int = 1000

    @property
    def enabled(self) -> bool:
        """Whether writes wait for replicas at all."""
        return self.replicas > 0

    def queue_wait(self, pipe: Any) -> bool:
        """Queue ``WAIT`` on ``pipe`` after its writes; True if queued (enabled)."""
        if self.enabled:
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        return self.enabled

    def check(self, acknowledged: Any, what: str) -> None:
        """Raise :class:`NotReplicated` when ``acknowledged`` (WAIT's reply) is short."""
        if int(acknowledged) < self.replicas:
            raise NotReplicated(
                f"NOTREPLICATED {what}: {int(acknowledged)} of {self.replicas} replica(s) "
                f"acknowledged within {self.timeout_ms} ms"
            )


def _bad(what: str) -> ConfigError:
    return ConfigError(f"redis URL: {what}")


def _host_port(item: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port)."""
    if not item:
        raise _bad("an empty sentinel address (two commas in a row?)")
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad("a sentinel's IPv6 address must be written [addr]:port")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise _bad("a sentinel address without a host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(f"sentinel port {port_text!r} is not a port number")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The sentinel target a ``redis+sentinel://`` or ``rediss+sentinel://`` URL names;
    None for any other scheme. Raises :class:`ConfigError` (credentials never quoted)
    when the URL is malformed or holds an unknown query option."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        return None
    tls = scheme.lower() == "rediss+sentinel"
    # urlsplit would choke on "h1:1,h2:2" as a port: split by hand
    rest, _, query = rest.partition("?")
    if "#" in query or "#" in rest:
        raise _bad("a fragment (#) has no meaning in a sentinel URL")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user_text, colon, pw_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(pw_text) if colon else None
        if not colon and username is not None:
            # "user@host": redis-py reads a lone userinfo as the password (legacy AUTH)
            password, username = username, None
    sentinels = tuple(_host_port(h) for h in hosts.split(","))
    parts = [unquote(p) for p in path.split("/")] if slash else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise _bad("a sentinel URL must name the service: redis+sentinel://HOST:PORT/SERVICE")
    if len(parts) > 2:
        raise _bad("a sentinel URL's path is /SERVICE or /SERVICE/DB")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise _bad(f"database {parts[1]!r} is not a number")
        db = int(parts[1])
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = set(options) - _TLS_OPTIONS - _SENTINEL_OPTIONS
    if unknown:
        valid = ", ".join(sorted(_TLS_OPTIONS | _SENTINEL_OPTIONS))
        raise _bad(f"unknown option(s) {', '.join(sorted(unknown))}; valid: {valid}")
    tls_options: list[tuple[str, Any]] = []
    for key in sorted(_TLS_OPTIONS & set(options)):
        value: Any = options[key]
        if key == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise _bad(f"ssl_cert_reqs must be one of {', '.join(sorted(_CERT_REQS))}")
        if key == "ssl_check_hostname":
            value = _flag(key, value)
        tls_options.append((key, value))
    sentinel_tls = _flag("sentinel_tls", options["sentinel_tls"]) if (
        "sentinel_tls" in options) else tls
    if tls_options and not (tls or sentinel_tls):
        raise _bad("TLS options need rediss+sentinel:// or sentinel_tls=true")
    return SentinelTarget(
        sentinels=sentinels,
        service=parts[0],
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        tls=tls,
        sentinel_tls=sentinel_tls,
        tls_options=tuple(tls_options),
    )


def _flag(key: str, value: str) -> bool:
    try:
        return _BOOLS[value.lower()]
    except KeyError:
        raise _bad(f"{key} must be true or false") from None


def check_redis_url(url: str) -> None:
    """Raise :class:`ConfigError` unless ``url`` is a Redis URL this module can connect
    to (scheme, and for Sentinel the whole form). Never quotes credentials."""
    if parse_sentinel_url(url) is not None:
        return
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in PLAIN_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in sorted(PLAIN_SCHEMES | SENTINEL_SCHEMES))
        raise _bad(f"unsupported scheme {scheme or '(none)'!r}; use one of {schemes}")


def _sentinel_side(target: SentinelTarget, options: dict[str, Any]) -> dict[str, Any]:
    """Sentinel connection arguments: the target's, with the caller's socket timeouts
    (a sentinel that does not answer must not hang discovery: the connect timeout
    bounds its reads when no socket timeout is set)."""
    out = target.sentinel_kwargs()
    connect = options.get("socket_connect_timeout")
    out["socket_connect_timeout"] = connect
    out["socket_timeout"] = options.get("socket_timeout") or connect
    return out


class SentinelRedis(redis.Redis):
    """A client of the Sentinel-monitored primary; :meth:`close` also closes the
    connections to the sentinels."""

    sentinel_manager: sentinel.Sentinel | None = None

    def close(self) -> None:
        """Close the primary's pool and the sentinels' clients."""
        super().close()
        if self.sentinel_manager is not None:
            for s in self.sentinel_manager.sentinels:
                s.close()


class AsyncSentinelRedis(aioredis.Redis):
    """The asyncio twin of :class:`SentinelRedis`."""

    sentinel_manager: aiosentinel.Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the primary's pool and the sentinels' clients."""
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            for s in self.sentinel_manager.sentinels:
                await s.aclose()


def _build(url: str, options: dict[str, Any], from_url: Any, manager_class: Any,
           redis_class: Any) -> Any:
    """One client for ``url``: ``from_url(url, **options)`` for one server, else a
    ``redis_class`` of ``manager_class`` (redis-py's sync or asyncio Sentinel) holding
    its manager, so that closing it closes the sentinels' connections."""
    check_redis_url(url)
    target = parse_sentinel_url(url)
    if target is None:
        return from_url(url, **options)
    manager = manager_class(
        list(target.sentinels), sentinel_kwargs=_sentinel_side(target, options)
    )
    primary = manager.master_for(
        target.service, redis_class=redis_class, **{**options, **target.data_kwargs()}
    )
    primary.sentinel_manager = manager
    return primary


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A synchronous client for ``url`` (any form of the module docstring).

    ``options`` are redis-py connection arguments (``decode_responses``,
    ``socket_connect_timeout``, ``socket_timeout``, ``health_check_interval``, ...),
    applied to the data nodes; for Sentinel the socket timeouts apply to the
    sentinels too. Raises :class:`ConfigError` for a URL of no supported form.
    """
    client: redis.Redis = _build(
        url, options, redis.Redis.from_url, sentinel.Sentinel, SentinelRedis
    )
    return client


def async_redis_client(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url``; as :func:`redis_client`."""
    client: aioredis.Redis = _build(
        url, options, aioredis.from_url, aiosentinel.Sentinel, AsyncSentinelRedis
    )
    return client


def rediscover(client: Any) -> None:
    """After a write the replicas did not acknowledge: close the idle connections of a
    Sentinel client (the caller's own, released after its write, among them), so that
    the next command on them asks the sentinels for the primary again. A deposed
    primary that came back (frozen, partitioned) takes writes from the connections it
    still has until a sentinel demotes it, seconds later; no replica acknowledges
    them. Connections other threads are using are left alone (closing one under a
    reader breaks redis-py's parser, not only the command); they are closed when the
    deposed primary is demoted, or on a later call. No-op for a client of one server."""
    if isinstance(client, SentinelRedis):
        client.connection_pool.disconnect(inuse_connections=False)


async def arediscover(client: Any) -> None:
    """The asyncio twin of :func:`rediscover`."""
    if isinstance(client, AsyncSentinelRedis):
        await client.connection_pool.disconnect(inuse_connections=False)


__all__ = [
    "AsyncSentinelRedis",
    "Durability",
    "SentinelRedis",
    "SentinelTarget",
    "arediscover",
    "async_redis_client",
    "check_redis_url",
    "parse_sentinel_url",
    "redis_client",
    "rediscover",
]
