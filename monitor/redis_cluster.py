"""Redis Cluster clients: redis-py's ``RedisCluster`` (sync and asyncio) with a cluster
in flux raised as an outage, and the per-node pipelines that ``WAIT`` needs.

Built by :mod:`monitor.redis_conn` (``redis+cluster://`` URLs); split from it to keep
both short. Contract:

* A cluster in flux (no node reachable, a slot without a primary, nodes that disagree
  on the slot map mid-failover: :func:`_in_flux`) is raised as
  :class:`redis.ConnectionError`, the outage every caller rides out; other
  ``RedisClusterException`` errors (a bug, e.g. keys of two slots) are left as they are.
  A URL whose node runs without cluster mode is a
  :class:`~monitor.errors.ConfigError` saying which URL form to use
  (:func:`connect_error`, :func:`acheck_cluster`).
* ``WAIT`` counts the replicas that have the writes of its own connection, and a
  cluster spreads a batch over nodes: :func:`key_pipeline` (sync, one key's node) and
  :func:`anode_pipelines` (asyncio, calls grouped by node, one pipeline and ``WAIT``
  per node on one connection, :meth:`AsyncClusterRedis.node_client`) send each node's
  writes and its ``WAIT`` together. A node that failed, answered ``MOVED``/``ASK`` or
  whose replicas did not acknowledge makes its writes not done, and the slot map is
  read again before the caller retries.
* Every Lua script and MULTI/EXEC on a cluster touches keys of one slot
  (:mod:`monitor.keys`); :func:`is_cluster` tells the callers that write differently.

Base module: imports nothing of restrav-monitor but :mod:`monitor.errors` and
:mod:`monitor.redis_faults` (and, for types only, :mod:`monitor.redis_conn`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster as rcluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    RedisClusterException,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
)

from .errors import ConfigError
from .redis_faults import NotReplicated

if TYPE_CHECKING:
    from .redis_conn import Durability


_IN_FLUX = (RedisClusterUnreachableError, SlotNotCoveredError)
"""redis-py's errors of a cluster with no reachable node, or a slot without a primary
(mid-failover): no :class:`redis.RedisError`, so the cluster clients below raise them as
:class:`redis.ConnectionError`, the outage every caller already rides out."""


_NOT_A_CLUSTER = "Cluster mode is not enabled"
"""In redis-py's error when a startup node is a Redis without ``cluster-enabled``."""

_FLUX_MESSAGES = (
    "startup_nodes could not agree on a valid slots cache",
    "Redis Cluster cannot be connected",
    "All slots are not covered",
)
"""How redis-py's sync client words a slot map it could not read (plain
``RedisClusterException``): nodes that disagree mid-failover, none reachable, a slot
without a primary. A worker died of the first one in a 16-kill chaos run."""


def _in_flux(exc: RedisClusterException) -> bool:
    """Whether ``exc`` is a cluster in flux (an outage), not a bug (e.g. keys of two
    slots in one command) nor a node without cluster mode."""
    if isinstance(exc, _IN_FLUX):
        return True
    text = str(exc)
    return _NOT_A_CLUSTER not in text and text.startswith(_FLUX_MESSAGES)


def _outage(exc: Exception) -> redis.ConnectionError:
    return redis.ConnectionError(f"Redis Cluster: {exc}")


@contextlib.contextmanager
def _outages() -> Iterator[None]:
    """Raise a cluster in flux (:func:`_in_flux`) from the block as the outage
    (:class:`redis.ConnectionError`); other cluster errors pass unchanged."""
    try:
        yield
    except RedisClusterException as exc:
        if not _in_flux(exc):
            raise
        raise _outage(exc) from exc


def connect_error(exc: RedisClusterException) -> Exception:
    """The error to raise when reading the slot map failed: a
    :class:`~monitor.errors.ConfigError` saying what to do when a node is no cluster
    node (the URL's scheme is wrong), else the outage (:class:`redis.ConnectionError`,
    the nodes named in its message, no credentials)."""
    if _NOT_A_CLUSTER in str(exc):
        return ConfigError(
            "redis URL: a redis+cluster:// URL names a Redis without cluster mode "
            "(cluster-enabled no); use redis://host:port (one server) or "
            "redis+sentinel://... for it, or name the cluster's own nodes"
        )
    return _outage(exc)


async def acheck_cluster(client: Any) -> None:
    """Read the slot map of an asyncio cluster ``client`` now (redis-py connects only at
    its first command): raises :class:`~monitor.errors.ConfigError` when a node is no
    cluster node, :class:`redis.ConnectionError` when no node answers (an outage the
    caller may ride out). No-op for other clients."""
    if not isinstance(client, aiocluster.RedisCluster):
        return
    try:
        await client.initialize()
    except RedisClusterException as exc:
        raise connect_error(exc) from exc


class ClusterRedis(rcluster.RedisCluster):
    """redis-py's ``RedisCluster`` whose commands and pipelines raise a cluster in flux
    as :class:`redis.ConnectionError` (see :data:`_IN_FLUX`)."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """As redis-py's, with the outage errors translated."""
        with _outages():
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        """As redis-py's: a ``ClusterPipeline``, whose ``execute`` translates the outage
        errors (its class swapped for a subclass that only wraps ``execute``: redis-py
        builds it from the client's internals, which are not ours to repeat)."""
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        pipe.__class__ = _ClusterPipeline
        return pipe


class _ClusterPipeline(rcluster.ClusterPipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        with _outages():
            return super().execute(raise_on_error)


class AsyncClusterRedis(aiocluster.RedisCluster):
    """The asyncio twin of :class:`ClusterRedis`, plus one plain client per primary for
    writes that must be followed by ``WAIT`` on their own connection
    (:meth:`node_client`, :func:`anode_pipelines`), closed with it."""

    node_options: dict[str, Any]
    """The connection arguments of every node (the caller's options, credentials,
    TLS): :func:`async_redis_client` sets them."""

    def node_client(self, key: str) -> aioredis.Redis:
        """A plain asyncio client of the primary serving ``key``'s slot in the slot map
        known now (redis-py's public ``get_node_from_key``), built with
        :attr:`node_options` and kept until :meth:`forget_node` or :meth:`aclose`.
        Raises :class:`redis.ConnectionError` when no primary serves the slot."""
        with _outages():
            node = self.get_node_from_key(key)
        if node is None:
            raise _outage(SlotNotCoveredError(f"no primary for {key!r}'s slot"))
        clients = self.__dict__.setdefault("_node_clients", {})
        address = (node.host, int(node.port))
        client = clients.get(address)
        if client is None:
            # no retries of its own: a failed node makes the caller read the slot map
            # again and retry there (its writes are fenced or idempotent)
            options = {"retry": AsyncRetry(NoBackoff(), 0), **getattr(self, "node_options", {})}
            client = clients[address] = aioredis.Redis(host=node.host, port=int(node.port),
                                                       **options)
        found: aioredis.Redis = client
        return found

    async def forget_node(self, client: aioredis.Redis) -> None:
        """Close a :meth:`node_client` whose node failed (a new one is built when the
        slot map names it again)."""
        clients: dict[tuple[str, int], aioredis.Redis] = self.__dict__.get("_node_clients", {})
        for address, c in list(clients.items()):
            if c is client:
                del clients[address]
                await c.aclose()

    async def refresh_slots(self) -> None:
        """Read the slot map again now (redis-py's ``nodes_manager.initialize``), after a
        node failed or answered ``MOVED``; no node answering is left to the next try."""
        # no node answers (or they disagree): the next try reads the map again
        with contextlib.suppress(redis.RedisError, RedisClusterException):
            await self.nodes_manager.initialize()

    async def aclose(self) -> None:
        """Close the per-node clients, then redis-py's connections."""
        clients: dict[tuple[str, int], aioredis.Redis] = self.__dict__.pop("_node_clients", {})
        for c in clients.values():
            await c.aclose()
        await super().aclose()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """As redis-py's, with the outage errors translated."""
        with _outages():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        """As redis-py's, with the outage errors of ``execute`` translated."""
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        # redis-py's stubs call the pipeline abstract (an attribute set in __init__)
        return _AsyncClusterPipeline(self, transaction)  # type: ignore[abstract]


class _AsyncClusterPipeline(aiocluster.ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True
                      ) -> list[Any]:
        with _outages():
            return await super().execute(raise_on_error, allow_redirections)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (or the pipeline of one) talks to a Redis Cluster: its scripts
    and transactions must then touch one slot each."""
    return isinstance(client, (rcluster.RedisCluster, aiocluster.RedisCluster,
                               aiocluster.ClusterPipeline))


def key_pipeline(client: Any, key: str) -> Any:
    """A non-transactional pipeline that sends its commands on one connection to the
    node holding ``key``, so that a ``WAIT`` queued after them (:class:`Durability`)
    counts their replication: ``client.pipeline(transaction=False)``, except on a
    cluster, where ``WAIT`` works per node and redis-py's cluster pipeline would send
    it to every node on other connections: there, a pipeline of the primary that
    serves ``key``'s slot now. Every command queued must touch ``key``'s slot only.
    Run it with :func:`run_key_pipeline`."""
    if not isinstance(client, rcluster.RedisCluster):
        return client.pipeline(transaction=False)
    with _outages():
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    return client.get_redis_connection(node).pipeline(transaction=False)


def run_key_pipeline(client: Any, pipe: Any) -> list[Any]:
    """``pipe.execute()`` for a :func:`key_pipeline` of ``client``. On a cluster, a node
    that is gone or no longer serves the slot (``MOVED``, after a failover) makes the
    client read the slot map again before the error is raised (an outage: the caller
    retries, on the node that serves the slot then)."""
    try:
        return list(pipe.execute())
    except (redis.ConnectionError, redis.TimeoutError, AskError):
        if isinstance(client, rcluster.RedisCluster):
            # no node answers (or they disagree): the next try reads the map again
            with contextlib.suppress(redis.RedisError, RedisClusterException):
                client.nodes_manager.initialize()
        raise


def _wait_refused(error: Exception, replies: list[Any]) -> Exception:
    """Why a group whose ``WAIT`` got ``error`` is not done: the redirection one of its
    commands got (the node no longer serves the slot), else ``WAIT``'s refusal by a
    node that is a replica now (a deposed primary: :class:`redis.ReadOnlyError`, an
    outage like any write refused by a replica), else ``error``."""
    moved = next((r for r in replies if isinstance(r, AskError)), None)
    if moved is not None:
        return moved
    if "replica" in str(error):
        return redis.ReadOnlyError(str(error))
    return error


NodeCall = tuple[str, Callable[[Any], None]]
"""One command for :func:`anode_pipelines`: a key, and what queues the command (which
touches that key's slot only) on a pipeline."""


async def anode_pipelines(
    client: AsyncClusterRedis, calls: Sequence[NodeCall], durability: Durability, what: str,
) -> list[tuple[Any, Exception | None]]:
    """Run ``calls`` on a Redis Cluster with ``WAIT`` on the connection that carried them.

    The calls are grouped by the primary that serves each key's slot in the slot map
    known now; each group is one non-transactional pipeline on one connection to that
    node (:meth:`AsyncClusterRedis.node_client`): its commands, then
    ``WAIT replicas timeout_ms`` when ``durability`` is enabled (``WAIT`` counts the
    replicas that have this connection's writes, so it must share it). The groups run
    concurrently. Returns, per call in order, ``(reply, fault)``: ``reply`` is the
    command's reply or its error reply (a ``MOVED``/``ASK`` redirection when the node no
    longer serves the slot); ``fault`` is None when the group ran and enough replicas
    acknowledged it, else why every call of the group counts as not done: the
    connection error or timeout (``reply`` is then that error too), a refused ``WAIT``,
    or :class:`~monitor.redis_faults.NotReplicated` (``what`` names the writes in its
    message). After a fault or a redirection the node's client is dropped (connection
    faults) and the slot map is read again, so that a retry (the caller's: scripts
    that are fenced or idempotent) goes to the node that serves the slot then.
    """
    await acheck_cluster(client)  # reads the slot map the first time (at once once read)
    groups: dict[int, tuple[aioredis.Redis, list[int]]] = {}
    out: list[tuple[Any, Exception | None]] = [(None, None)] * len(calls)
    uncovered = False
    for i, (key, _queue) in enumerate(calls):
        try:
            node = client.node_client(key)
        except redis.ConnectionError as exc:  # no primary for the slot now
            out[i] = (exc, exc)
            uncovered = True
            continue
        groups.setdefault(id(node), (node, []))[1].append(i)

    async def one(node: aioredis.Redis, members: list[int]) -> bool:
        """Run one node's group into ``out``; True when the slot map must be read again."""
        pipe = node.pipeline(transaction=False)
        for i in members:
            calls[i][1](pipe)
        waits = durability.queue_wait(pipe)
        try:
            replies = list(await pipe.execute(raise_on_error=False))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            for i in members:
                out[i] = (exc, exc)
            await client.forget_node(node)
            return True
        fault: Exception | None = None
        if waits:
            ack = replies.pop()
            if isinstance(ack, Exception):
                fault = _wait_refused(ack, replies)
            else:
                try:
                    durability.check(ack, what)
                except NotReplicated as exc:
                    fault = exc
        for i, r in zip(members, replies, strict=True):
            out[i] = (r, fault)
        return fault is not None or any(isinstance(r, AskError) for r in replies)

    moved = await asyncio.gather(*(one(n, m) for n, m in groups.values()))
    if uncovered or any(moved):
        await client.refresh_slots()
    return out


__all__ = [
    "AsyncClusterRedis",
    "ClusterRedis",
    "NodeCall",
    "acheck_cluster",
    "anode_pipelines",
    "connect_error",
    "is_cluster",
    "key_pipeline",
    "run_key_pipeline",
]
