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

* ``redis+cluster://[[user]:password@]host[:port][,host[:port]...][/]`` and
  ``rediss+cluster://...`` (TLS): Redis Cluster, through redis-py's ``RedisCluster``
  (sync and asyncio). The hosts are startup nodes (default port 6379; any reachable
  one suffices, the others are found from ``CLUSTER SLOTS``); a cluster has only
  database 0, so the path is empty. The user and password are every node's. Query
  options: the TLS ones above (with ``rediss+cluster://`` only).

A Sentinel client asks the sentinels for the current primary whenever it opens a
connection, and drops its connections when one fails or the node it reached turns
out to be a replica (``READONLY``): after a failover the next command (or its
retry by the caller) reaches the new primary, without a restart. Redis errors
during a failover are the usual connection errors and ``READONLY`` refusals,
which every writer already treats as an outage (:mod:`monitor.redis_faults`).

Closing a client closes its connections to the sentinels as well.

A cluster client follows the cluster's own redirections: a ``MOVED`` or a node that
fails makes it read the slot map again (redis-py), so after a failover the next
command (or its retry by the caller) reaches the promoted replica. On a cluster
every Lua script and MULTI/EXEC must touch keys of one slot (:mod:`monitor.keys`);
:func:`is_cluster` tells the callers that write differently there.

:class:`Durability` is the ``WAIT`` after a write that must survive a failover (a job
enqueued, a job's answer, a lease grant with its fencing increment): Redis replicates
asynchronously, so a write the primary acknowledged can be missing on the replica a
sentinel promotes. With ``replicas`` > 0 such a write is sent in one pipeline with
``WAIT replicas timeout_ms`` (same connection: ``WAIT`` counts the replicas that have
this connection's writes), and fewer acknowledgements raise
:class:`~monitor.redis_faults.NotReplicated`: the write is treated as not done.
The cluster clients, their outage translation and the per-node pipelines for ``WAIT``
(:func:`key_pipeline`, :func:`anode_pipelines`) live in :mod:`monitor.redis_cluster`
and are re-exported here.

Base module: imports nothing of restrav-monitor but :mod:`monitor.redis_cluster`,
:mod:`monitor.redis_faults` and :mod:`monitor.redis_urls` (the URL parsing).

A cluster URL whose nodes do not answer fails when the client reads the slot map (the
sync client when it is built, the asyncio one at its first command or at
:func:`acheck_cluster`) with a :class:`redis.ConnectionError` naming the nodes tried;
one whose node is a Redis without cluster mode, with a
:class:`~monitor.errors.ConfigError` that says which URL form to use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.asyncio.sentinel as aiosentinel
import redis.cluster as rcluster
import redis.sentinel as sentinel
from redis.exceptions import RedisClusterException

from .redis_cluster import (
    AsyncClusterRedis,
    ClusterRedis,
    NodeCall,
    acheck_cluster,
    anode_pipelines,
    connect_error,
    is_cluster,
    key_pipeline,
    run_key_pipeline,
)
from .redis_faults import NotReplicated
from .redis_urls import (
    ClusterTarget,
    SentinelTarget,
    check_redis_url,
    parse_cluster_url,
    parse_sentinel_url,
)


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
           redis_class: Any, cluster_class: Any, node_class: Any) -> Any:
    """One client for ``url``: ``from_url(url, **options)`` for one server; for a
    cluster, ``cluster_class`` (:class:`ClusterRedis` or :class:`AsyncClusterRedis`)
    with ``node_class`` (redis-py's sync or asyncio ``ClusterNode``) startup nodes;
    else a ``redis_class`` of ``manager_class`` (redis-py's
    sync or asyncio Sentinel) holding its manager, so that closing it closes the
    sentinels' connections."""
    check_redis_url(url)
    nodes = parse_cluster_url(url)
    if nodes is not None:
        node_options = {**options, **nodes.node_kwargs()}
        try:
            client = cluster_class(
                startup_nodes=[node_class(h, p) for h, p in nodes.nodes], **node_options
            )
        except RedisClusterException as exc:  # the sync client reads the slot map now
            raise connect_error(exc) from exc
        if isinstance(client, AsyncClusterRedis):
            client.node_options = node_options
        return client
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
    For a cluster URL the client is a :class:`ClusterRedis`: the same
    command methods, typed here as ``redis.Redis`` for the callers' sake.
    """
    client: redis.Redis = _build(
        url, options, redis.Redis.from_url, sentinel.Sentinel, SentinelRedis, ClusterRedis,
        rcluster.ClusterNode,
    )
    return client


def async_redis_client(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url``; as :func:`redis_client` (a cluster URL gives a
:class:`AsyncClusterRedis`)."""
    client: aioredis.Redis = _build(
        url, options, aioredis.from_url, aiosentinel.Sentinel, AsyncSentinelRedis,
        AsyncClusterRedis, aiocluster.ClusterNode,
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
    "AsyncClusterRedis",
    "AsyncSentinelRedis",
    "ClusterRedis",
    "ClusterTarget",
    "Durability",
    "NodeCall",
    "SentinelRedis",
    "SentinelTarget",
    "acheck_cluster",
    "anode_pipelines",
    "arediscover",
    "async_redis_client",
    "check_redis_url",
    "is_cluster",
    "key_pipeline",
    "parse_cluster_url",
    "parse_sentinel_url",
    "redis_client",
    "rediscover",
    "run_key_pipeline",
]
