"""A node that comes back after a failover must not be promoted before it has resynced.

Real primary, replica and three sentinels (``tests/sentinelproc.py``). Writes go
through restrav-monitor's Sentinel client, each followed by ``WAIT 1``
(:class:`~monitor.redis_conn.Durability`); only those a replica acknowledged are
counted. The primary is SIGKILLed, a sentinel promotes the replica, and the old
primary is restarted (no persistence: it loads the RDB of its last full sync, older
than the data) but, before the promoted primary has sent it the new data (its
``repl-diskless-sync-delay`` raised so that this lasts until every sentinel sees the
returning node), that primary looks down (SIGSTOP) until a sentinel decides what to
do with the failover.

With the harness's guard (the returning node starts at ``replica-priority 0``) the
sentinels find no promotable replica, the frozen primary comes back as the primary
and every acknowledged write is there. Without it (chaos marker) a sentinel promotes
the returning node, and the writes acknowledged since its old full sync are lost:
the cause of the loss RELIABILITY.md records for the Sentinel chaos run (issue 23).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from monitor.queue import connect
from monitor.redis_conn import Durability
from monitor.redis_faults import NotReplicated

from .queue_helpers import wait_for
from .sentinelproc import SERVICE, SentinelSetup, started

WAIT = Durability(replicas=1, timeout_ms=500)
DECIDED = ("+promoted-slave", "-failover-abort-no-good-slave")


class Writer:
    """SET k<n> then WAIT 1, one after another; records the acknowledged ``n``."""

    def __init__(self, url: str) -> None:
        self.client = connect(url)
        self.acknowledged: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.set(f"k{n}", n)
                WAIT.queue_wait(pipe)
                WAIT.check(pipe.execute()[-1], f"k{n}")
                self.acknowledged.append(n)
            except (redis.RedisError, NotReplicated):
                pass  # not acknowledged: not counted (a failover, or no replica yet)
            n += 1
            time.sleep(0.02)

    def close(self) -> None:
        if not self.stop.is_set():
            self.stop.set()
            self.thread.join(30)
            self.client.close()


def decided(setup: SentinelSetup) -> str | None:
    """The first sentinel event that ends a failover attempt, if any sentinel logged one."""
    for port in setup.sentinel_ports:
        text = (setup.dir / f"sentinel-{port}.log").read_text(errors="replace")
        for event in DECIDED:
            if f" {event} " in text:
                return event
    return None


def sync_delay(setup: SentinelSetup, port: int, seconds: int) -> None:
    """Set one node's ``repl-diskless-sync-delay``."""
    c = setup.node(port, timeout_s=5)
    try:
        c.config_set("repl-diskless-sync-delay", seconds)
    finally:
        c.close()


def seen_up(setup: SentinelSetup, sentinel_port: int, node_port: int) -> bool:
    """Whether a sentinel lists ``node_port`` as a replica it reaches (not down)."""
    s = setup.sentinel(sentinel_port)
    try:
        for r in s.execute_command("SENTINEL", "REPLICAS", SERVICE) or []:
            d = dict(zip(r[::2], r[1::2])) if isinstance(r, list) else dict(r)
            if int(d["port"]) == node_port:
                return "s_down" not in d["flags"] and "disconnected" not in d["flags"]
        return False
    except redis.RedisError:
        return False
    finally:
        s.close()


def lost_after_rejoin(setup: SentinelSetup) -> tuple[str, int, int, list[int]]:
    """Run the scenario; the failover's outcome, the primary frozen, the primary at the
    end and the acknowledged writes missing on it."""
    writer = Writer(setup.url())
    try:
        for _ in range(2):  # each node has received a full sync and kept its RDB
            old = setup.kill_primary()
            setup.wait_promoted(old)
            setup.bring_back(old)
        start = len(writer.acknowledged)
        wait_for(lambda: len(writer.acknowledged) > start + 20, 60, "acknowledged writes")
        old = setup.kill_primary()
        new = setup.wait_promoted(old)
        for port in setup.sentinel_ports:  # only the coming decision counts
            (setup.dir / f"sentinel-{port}.log").write_text("")
        # the primary waits repl-diskless-sync-delay before it sends the new data; a
        # longer wait (a large dataset's sync) keeps the returning node stale until
        # every sentinel sees it up, whatever the machine's load
        sync_delay(setup, new, 60)
        setup.rejoin(old)  # holds the data of its last full sync
        wait_for(lambda: all(seen_up(setup, sp, old) for sp in setup.sentinel_ports), 60,
                 "every sentinel to see the returning node")
        setup.freeze(new)
        try:
            wait_for(lambda: decided(setup) is not None, 60, "a sentinel's decision")
        finally:
            setup.thaw(new)
        outcome = decided(setup) or ""
        sync_delay(setup, new, 5)  # Redis's default
        setup.bring_back(old)
        writer.close()
        primary = setup.primary_port()
        assert primary is not None
        c = setup.node(primary, timeout_s=5)
        try:
            missing = [n for n in writer.acknowledged if not c.exists(f"k{n}")]
        finally:
            c.close()
        return outcome, new, primary, missing
    finally:
        writer.close()


def test_a_returning_node_is_not_promoted_before_its_resync(tmp_path: Path) -> None:
    with started(SentinelSetup(tmp_path / "redis")) as setup:
        outcome, frozen, primary, missing = lost_after_rejoin(setup)
        assert outcome == "-failover-abort-no-good-slave"
        assert primary == frozen
        assert missing == []
        shape = setup.topology()
        assert len(shape[1]) == 1


@pytest.mark.chaos
def test_without_the_guard_a_stale_node_is_promoted_and_loses_acknowledged_writes(
    tmp_path: Path,
) -> None:
    with started(SentinelSetup(tmp_path / "redis", guard_rejoin=False)) as setup:
        outcome, frozen, primary, missing = lost_after_rejoin(setup)
        print(f"\nunguarded rejoin: {outcome}, {len(missing)} acknowledged writes lost")
        assert outcome == "+promoted-slave" and primary != frozen
        assert len(missing) > 0
