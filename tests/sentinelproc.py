"""Redis Sentinel for tests: a primary, replicas and sentinels, each a real
``redis-server`` process (sentinels: ``redis-server FILE --sentinel``) on loopback
free ports, and the failover moves a chaos test needs (SIGKILL or SIGSTOP the
primary, wait for a sentinel to promote a replica, bring the old one back as a
replica of the new primary). Every wait is bounded.

A node that comes back is not promotable until it has resynced: it starts with
``replica-priority 0`` and gets :data:`PRIORITY` once its link to the primary is up.
Without that, a sentinel may promote it while it waits for its sync, and it then
serves the stale data it loaded at start: without persistence (``--save ""``) a
replica still writes ``dump-PORT.rdb`` when it receives a full sync, loads that old
file when it restarts, reports ``master_link_down_since_seconds:-1`` (never
connected), which Sentinel's replica selection accepts, and waits up to
``repl-diskless-sync-delay`` (5 s) for the primary to send the new data. If the
primary merely looks down in those seconds (a busy machine, ``down-after`` 1 s),
every write since that old sync is lost, including writes a replica acknowledged to
``WAIT``: this is what lost 11 acknowledged jobs in one chaos run (RELIABILITY.md)
and ``tests/test_sentinel_rejoin.py`` shows it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
import redis

from monitor.redis_faults import redis_unavailable
from tests.redisproc import free_port, terminate_all, wait_port

SERVICE = "restrav"
PRIORITY = 100
"""The replica priority of a node in sync (Redis's default); 0 never promoted."""


T = TypeVar("T")


def retrying(fn: Callable[[], T], timeout_s: float = 30.0, pause_s: float = 0.1) -> T:
    """``fn()`` again while a failover makes it fail: connection errors, timeouts,
    READONLY (a demoted primary), a cluster in flux (``CLUSTERDOWN``, a slot without a
    primary: every error :func:`monitor.redis_faults.redis_unavailable` calls an outage),
    every ``pause_s`` until ``timeout_s`` (then raises)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except Exception as exc:  # narrowed on the next line: only outages are retried
            if not redis_unavailable(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause_s)


class SentinelSetup:
    """One primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum 2),
    with no persistence: a node that comes back has lost its data since its last full
    sync and syncs from the primary (it is started as a replica, never as a primary,
    and with ``replica-priority 0`` until it is in sync, unless ``guard_rejoin`` is
    False)."""

    def __init__(
        self, directory: Path, replicas: int = 1, sentinels: int = 3,
        down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
        password: str | None = None, guard_rejoin: bool = True,
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.exe = exe
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.guard_rejoin = guard_rejoin
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.node_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinels: dict[int, subprocess.Popen[bytes]] = {}
        self.stopped: set[int] = set()  # SIGSTOPped nodes

    # ---- addresses ---------------------------------------------------------------
    def url(self, db: int = 0) -> str:
        """The ``redis+sentinel://`` URL of this setup (with the data nodes' password)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/{db}"

    def node(self, port: int, timeout_s: float = 1.0) -> redis.Redis:
        """A direct client of one data node (the caller closes it)."""
        return redis.Redis(host="127.0.0.1", port=port, password=self.password,
                           socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                           decode_responses=True)

    def sentinel(self, port: int) -> redis.Redis:
        """A direct client of one sentinel (the caller closes it)."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0,
                           socket_connect_timeout=1.0, decode_responses=True)

    def primary_port(self) -> int | None:
        """The primary's port as the first answering sentinel reports it."""
        for sp in self.sentinel_ports:
            if sp not in self.sentinels:
                continue
            s = self.sentinel(sp)
            try:
                addr = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                if addr:
                    return int(addr[1])
            except redis.RedisError:
                continue
            finally:
                s.close()
        return None

    def role(self, port: int) -> str | None:
        """``master`` / ``slave`` as the node itself says, None if it does not answer."""
        c = self.node(port)
        try:
            return str(c.info("replication")["role"])
        except (redis.RedisError, OSError):
            return None
        finally:
            c.close()

    # ---- processes ---------------------------------------------------------------
    def _start_node(self, port: int, replica_of: int | None, priority: int = PRIORITY) -> None:
        args = [self.exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir),
                "--dbfilename", f"dump-{port}.rdb",
                "--logfile", str(self.dir / f"node-{port}.log"),
                "--replica-announce-ip", "127.0.0.1", "--replica-priority", str(priority)]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.nodes[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        if not wait_port(port):
            raise RuntimeError(f"redis-server on {port} did not start")

    def _start_sentinel(self, port: int, primary: int) -> None:
        conf = self.dir / f"sentinel-{port}.conf"
        lines = [
            f"port {port}", "bind 127.0.0.1", f"dir {self.dir}",
            f"logfile {self.dir / f'sentinel-{port}.log'}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2",
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {SERVICE} 1",
            "sentinel announce-ip 127.0.0.1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        conf.write_text("\n".join(lines) + "\n")
        self.sentinels[port] = subprocess.Popen(
            [self.exe, str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait_port(port):
            raise RuntimeError(f"sentinel on {port} did not start")

    def start(self, timeout_s: float = 30.0) -> None:
        """Start everything; return once replicas are in sync and every sentinel knows
        the other sentinels and the replicas."""
        primary, *replicas = self.node_ports
        self._start_node(primary, None)
        for p in replicas:
            self._start_node(p, primary)
        self.wait_synced(timeout_s)
        for sp in self.sentinel_ports:
            self._start_sentinel(sp, primary)
        if self.sentinel_ports:
            self.wait_sentinels_agree(timeout_s)

    def freeze(self, port: int) -> None:
        """SIGSTOP one node (it stops acknowledging replication; sockets stay open)."""
        self.nodes[port].send_signal(signal.SIGSTOP)
        self.stopped.add(port)

    def thaw(self, port: int) -> None:
        """SIGCONT a frozen node."""
        self.nodes[port].send_signal(signal.SIGCONT)
        self.stopped.discard(port)

    def wait_synced(self, timeout_s: float = 30.0) -> None:
        """Until every running replica's link to the primary is up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            primary = self.primary_port() if self.sentinels else self.node_ports[0]
            ok = primary is not None
            for p in self.nodes:
                if p == primary or p in self.stopped or not ok:
                    continue
                c = self.node(p)
                try:
                    info = c.info("replication")
                    ok = info.get("master_link_status") == "up" and int(
                        info.get("master_port", 0)) == primary
                except (redis.RedisError, OSError):
                    ok = False
                finally:
                    c.close()
            if ok:
                return
            time.sleep(0.1)
        raise AssertionError("replicas did not sync with the primary in time")

    def wait_sentinels_agree(self, timeout_s: float = 30.0) -> None:
        """Until every sentinel names the same primary, knows the other sentinels and
        every replica."""
        deadline = time.monotonic() + timeout_s
        want_others = len(self.sentinels) - 1
        want_replicas = len(self.nodes) - 1
        while time.monotonic() < deadline:
            seen: set[int] = set()
            ok = True
            for sp in self.sentinels:
                s = self.sentinel(sp)
                try:
                    m = s.execute_command("SENTINEL", "MASTER", SERVICE)
                    d = dict(zip(m[::2], m[1::2])) if isinstance(m, list) else dict(m)
                    seen.add(int(d["port"]))
                    ok = ok and int(d["num-other-sentinels"]) >= want_others and int(
                        d["num-slaves"]) >= want_replicas and "s_down" not in d["flags"]
                    # every replica promotable: seen up, its link to the primary up
                    for r in s.execute_command("SENTINEL", "REPLICAS", SERVICE) or []:
                        rd = dict(zip(r[::2], r[1::2])) if isinstance(r, list) else dict(r)
                        ok = ok and "s_down" not in rd["flags"] and "disconnected" not in (
                            rd["flags"]) and rd.get("master-link-status") == "ok" and int(
                            rd.get("slave-priority", 0)) > 0
                except (redis.RedisError, KeyError, ValueError):
                    ok = False
                finally:
                    s.close()
            if ok and len(seen) == 1:
                return
            time.sleep(0.2)
        raise AssertionError("sentinels did not agree on the setup in time")

    def kill_primary(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the current primary (SIGKILL: it is gone; SIGSTOP: frozen,
        its sockets open); return its port."""
        port = self.primary_port()
        assert port is not None, "no sentinel names a primary"
        proc = self.nodes[port]
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)
            del self.nodes[port]
        elif sig == signal.SIGSTOP:
            self.stopped.add(port)
        return port

    def wait_promoted(self, old_port: int, timeout_s: float = 30.0) -> int:
        """Until the sentinels name another primary, which says it is one; its port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None and port != old_port and self.role(port) == "master":
                return port
            time.sleep(0.05)
        raise AssertionError(f"no replica promoted within {timeout_s} s")

    def rejoin(self, port: int) -> None:
        """Restart a SIGKILLed node as a replica of the current primary and return at
        once: it holds what it loaded from its last full-sync RDB until its resync, and
        (with ``guard_rejoin``) a sentinel cannot promote it meanwhile."""
        primary = self.primary_port()
        assert primary is not None
        self._start_node(port, primary, 0 if self.guard_rejoin else PRIORITY)

    def bring_back(self, port: int, timeout_s: float = 30.0) -> None:
        """Restart a SIGKILLed node (or SIGCONT a frozen one) as a replica of the current
        primary, and wait until it is in sync, promotable again and every sentinel sees
        it so."""
        if port in self.stopped:
            self.nodes[port].send_signal(signal.SIGCONT)
            self.stopped.discard(port)
        elif port not in self.nodes:
            self.rejoin(port)
        self.wait_synced(timeout_s)
        self.make_promotable(port)
        if self.sentinels:
            self.wait_sentinels_agree(timeout_s)

    def make_promotable(self, port: int) -> None:
        """Give a node in sync its replica priority back (sentinels read it from INFO)."""
        c = self.node(port)
        try:
            c.config_set("replica-priority", PRIORITY)
        finally:
            c.close()

    def sentinel_events(self, event: str) -> int:
        """How many times the first sentinel logged ``event`` (``+switch-master``: the
        failovers it saw, whoever caused them)."""
        log = self.dir / f"sentinel-{self.sentinel_ports[0]}.log"
        if not log.exists():
            return 0
        return sum(f" {event} " in line for line in log.read_text(errors="replace").splitlines())

    def topology(self) -> tuple[int, set[int]]:
        """The primary the sentinels name and the nodes that say they replicate it.

        Asserts the setup is whole: the named primary says ``master`` and every other
        running node says ``slave`` with its link up to that primary. A node that came
        back may be promoted by a later failover (a busy machine can miss the sentinels'
        pings), so a caller checks the shape, not which port holds which role."""
        primary = self.primary_port()
        assert primary is not None, "no sentinel names a primary"
        assert self.role(primary) == "master", f"the named primary {primary} is not one"
        replicas: set[int] = set()
        for p in self.nodes:
            if p == primary or p in self.stopped:
                continue
            c = self.node(p)
            try:
                info = c.info("replication")
            finally:
                c.close()
            assert info["role"] == "slave", f"node {p} says {info['role']}, not slave"
            assert int(info["master_port"]) == primary, f"node {p} follows another primary"
            assert info["master_link_status"] == "up", f"node {p} is not in sync"
            replicas.add(p)
        return primary, replicas

    def stop(self) -> None:
        """Terminate every process (continuing frozen ones first)."""
        for port in list(self.stopped):
            self.nodes[port].send_signal(signal.SIGCONT)
        self.stopped.clear()
        terminate_all([*self.sentinels.values(), *self.nodes.values()])
        self.sentinels.clear()
        self.nodes.clear()


class Startable(Protocol):
    """A test setup of processes: :class:`SentinelSetup`, ``tests.clusterproc.ClusterSetup``."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Startable)


@contextmanager
def started(setup: S) -> Iterator[S]:
    """``setup`` started (the test fails if it cannot be), stopped at the end."""
    try:
        setup.start()
    except (RuntimeError, AssertionError) as exc:
        setup.stop()
        pytest.fail(str(exc))
    try:
        yield setup
    finally:
        setup.stop()
