"""Redis Cluster for tests: ``primaries`` primaries with one replica each, every node a
real ``redis-server --cluster-enabled yes`` on a loopback free port, joined by
``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes``, and the move a
chaos test needs (SIGKILL a primary, wait for its replica to take its slots, bring
the old one back as a replica). No persistence; every wait is bounded. Started and
stopped by ``tests.sentinelproc.started``.

``cluster-node-timeout`` is short (:data:`NODE_TIMEOUT_MS`) so that a failover takes
a few seconds, and long enough that a busy two-core CI machine does not fail over by
itself."""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from tests.redisproc import terminate_all, wait_port

NODE_TIMEOUT_MS = 2000


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too, both below the
    kernel's ephemeral range (32768 up on Linux): a port found free there could be taken
    by any outgoing connection (or another test's ``free_port``) before the node binds
    it, and the node then exits (a full-suite run lost a cluster test that way)."""
    for _ in range(1000):
        port = random.randint(10000, 22767)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class PortTaken(RuntimeError):
    """A node exited at start because its client or bus port was bound meanwhile."""


class ClusterSetup:
    """A Redis Cluster of ``primaries`` primaries and as many replicas (see the module
    docstring); ``password`` (if any) is every node's ``requirepass`` and ``masterauth``."""

    def __init__(self, directory: Path, primaries: int = 3, password: str | None = None,
                 node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        exe = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if exe is None or cli is None:
            raise RuntimeError("redis-server/redis-cli are not installed (apt-get install redis)")
        self.exe, self.cli = exe, cli
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        while len(self.ports) < 2 * primaries:
            self.ports.append(self._another_port())
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        self.killed_ids: dict[int, str] = {}
        self.frozen: set[int] = set()

    def url(self) -> str:
        """The ``redis+cluster://`` URL naming two of the nodes as startup nodes."""
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])
        return f"redis+cluster://{auth}{hosts}"

    def node(self, port: int, timeout_s: float = 1.0) -> redis.Redis:
        """A plain client of one node (for CLUSTER/INFO commands)."""
        return redis.Redis(port=port, password=self.password, decode_responses=True,
                           socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def _another_port(self) -> int:
        """A free port pair (see :func:`free_cluster_port`) whose client and bus ports
        are neither client nor bus port of a node already chosen (node A on 10045 has
        its bus on 20045, so node B must not get 20045)."""
        taken = {q for p in self.ports for q in (p, p + 10000)}
        while True:
            port = free_cluster_port()
            if port not in taken and port + 10000 not in taken:
                return port

    def _start_node(self, port: int) -> None:
        """Start the node on ``port``; :class:`PortTaken` if it exited because the port
        (or its bus port) was bound meanwhile, RuntimeError (with its log) otherwise."""
        log = self.dir / f"node-{port}.log"
        log.unlink(missing_ok=True)
        args = [self.exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(log),
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms)]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        (self.dir / f"nodes-{port}.conf").unlink(missing_ok=True)
        with log.open("ab") as early:  # what it says before it opens its log file
            proc = subprocess.Popen(args, stdout=early, stderr=subprocess.STDOUT)
        self.nodes[port] = proc
        if wait_port(port, alive=proc) and self._answers_as(port, proc):
            return
        del self.nodes[port]
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=10)
        said = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        if "Address already in use" in said:
            raise PortTaken(port)
        raise RuntimeError(f"cluster node on port {port} did not start "
                           f"(exit {proc.returncode}); its log ends:\n{said}")

    def _answers_as(self, port: int, proc: subprocess.Popen[bytes],
                    timeout_s: float = 10.0) -> bool:
        """Whether what listens on ``port`` is ``proc`` (its ``INFO`` process id), not a
        stranger that took the port first (our node then exits, but the port answers)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            client = self.node(port)
            try:
                pid = client.info("server").get("process_id")
            except (redis.RedisError, OSError):
                time.sleep(0.05)
                continue
            finally:
                client.close()
            return bool(pid == proc.pid)
        return False

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every node, create the cluster, wait for ``cluster_state:ok`` on all.
        A node whose port was taken between choosing it and binding it (anything on
        the machine may bind a free port meanwhile) moves to another port, three times
        at most."""
        for i in range(len(self.ports)):
            for attempt in range(4):
                try:
                    self._start_node(self.ports[i])
                    break
                except PortTaken:
                    if attempt == 3:
                        raise
                    self.ports[i] = self._another_port()
        cmd = [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
               "--cluster-replicas", "1", "--cluster-yes"]
        if self.password:
            cmd[1:1] = ["-a", self.password, "--no-auth-warning"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("redis-cli --cluster create did not finish") from exc
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}")
        self.wait_ok(timeout_s)

    def state(self, port: int) -> dict[str, str]:
        """``CLUSTER INFO`` of one node ({} when it does not answer)."""
        try:
            info = self.node(port).execute_command("CLUSTER INFO")
        except (redis.ConnectionError, redis.TimeoutError):
            return {}
        if isinstance(info, dict):  # redis-py parses it
            return {str(k): str(v) for k, v in info.items()}
        return dict(line.split(":", 1) for line in str(info).split() if ":" in line)

    def primaries(self) -> list[int]:
        """Ports of the running nodes that are primaries now."""
        out = []
        for port in self.nodes:
            try:
                if self.node(port).info("replication").get("role") == "master":
                    out.append(port)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
        return sorted(out)

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every running node reports ``cluster_state:ok`` with all slots served
        and every primary has a replica in sync (raises RuntimeError after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [self.state(p) for p in self.nodes]
            if all(s.get("cluster_state") == "ok" and s.get("cluster_slots_ok") == "16384"
                   for s in states) and self._replicas_synced():
                return
            time.sleep(0.2)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def _replicas_synced(self) -> bool:
        for port in self.nodes:
            try:
                info = self.node(port).info("replication")
            except (redis.ConnectionError, redis.TimeoutError):
                return False
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def port_of_slot_owner(self, key: str) -> int:
        """The port of the primary serving ``key``'s slot now."""
        any_port = self._answering()[0]
        slot = int(self.node(any_port).execute_command("CLUSTER KEYSLOT", key))
        for start, end, primary, *_ in self.node(any_port).execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
        raise RuntimeError(f"slot {slot} is not served")

    def replica_of(self, port: int) -> int:
        """The port of a replica of the primary ``port`` (its first, in ``INFO``)."""
        info = self.node(port).info("replication")
        replica = info.get("slave0")
        if not isinstance(replica, dict):
            raise RuntimeError(f"primary {port} has no replica: {info}")
        return int(replica["port"])

    def freeze(self, port: int) -> None:
        """SIGSTOP one node: it stops answering and acknowledging replication, its
        sockets stay open (a partition that closes nothing). The waits below skip it."""
        self.nodes[port].send_signal(signal.SIGSTOP)
        self.frozen.add(port)

    def thaw(self, port: int) -> None:
        """SIGCONT a node :meth:`freeze` stopped."""
        self.nodes[port].send_signal(signal.SIGCONT)
        self.frozen.discard(port)

    def _answering(self) -> list[int]:
        return [p for p in self.nodes if p not in self.frozen]

    def wait_role(self, port: int, role: str, timeout_s: float = 60.0) -> None:
        """Until node ``port`` reports ``role`` (``master``/``slave``) with its link up
        and every answering node is ``ok`` (a thawed primary rejoining as a replica)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                info = self.node(port).info("replication")
            except (redis.ConnectionError, redis.TimeoutError):
                info = {}
            if info.get("role") == role and (
                role == "master" or info.get("master_link_status") == "up"
            ) and all(self.state(p).get("cluster_state") == "ok" for p in self._answering()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"node {port} did not become a {role}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (its data is gone: no persistence)."""
        self.killed_ids[port] = str(self.node(port).execute_command("CLUSTER MYID"))
        proc = self.nodes.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def wait_promoted(self, dead_port: int, timeout_s: float = 30.0) -> None:
        """Until the slots of the killed (or frozen) primary ``dead_port`` are served by
        another node and the cluster is ``ok`` again on every answering node."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [self.state(p) for p in self._answering()]
            if all(s.get("cluster_state") == "ok" for s in states) and not any(
                self._serves_slots(dead_port, seen_from=p) for p in self._answering()
                if p != dead_port
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"no replica took the slots of {dead_port} in {timeout_s} s")

    def bring_back(self, port: int, timeout_s: float = 60.0) -> None:
        """Restart a killed node empty and join it as a replica of a primary that has
        none (the one whose replica was promoted). The killed node's id is forgotten
        first (the new one on the same port gets another)."""
        old_id = self.killed_ids.pop(port, None)
        for p in self.nodes:
            if old_id is not None:
                with contextlib.suppress(redis.ResponseError):
                    self.node(p).execute_command("CLUSTER FORGET", old_id)
        alive = next(iter(self.nodes))
        self._start_node(port)
        self.node(alive).execute_command("CLUSTER MEET", "127.0.0.1", port)
        lonely = self._primary_without_replica(timeout_s, but=port)
        node_id = self.node(lonely).execute_command("CLUSTER MYID")
        deadline = time.monotonic() + timeout_s
        while True:  # MEET takes a moment to spread before REPLICATE accepts the id
            try:
                self.node(port).execute_command("CLUSTER REPLICATE", node_id)
                break
            except redis.ResponseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.wait_ok(timeout_s)

    def _primary_without_replica(self, timeout_s: float, but: int) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for port in self.primaries():
                if port == but:
                    continue
                info = self.node(port).info("replication")
                if int(info.get("connected_slaves", 0)) == 0 and self._serves_slots(port):
                    return port
            time.sleep(0.2)
        raise RuntimeError("no primary without a replica")

    def _serves_slots(self, port: int, seen_from: int | None = None) -> bool:
        """Whether node ``port`` serves slots, in the slot map of ``seen_from`` (itself)."""
        try:
            slots = self.node(seen_from or port).execute_command("CLUSTER SLOTS")
        except (redis.ConnectionError, redis.TimeoutError):
            return True  # unknown: not settled yet
        return any(int(primary[1]) == port for _s, _e, primary, *_ in slots)

    def stop(self) -> None:
        """Terminate every node."""
        for proc in self.nodes.values():  # a frozen node ignores SIGTERM until thawed
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
        terminate_all(list(self.nodes.values()))
        self.nodes.clear()
