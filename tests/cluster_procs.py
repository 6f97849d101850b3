"""Real `restrav serve` replicas sharing live streams through a real redis-server.

Used by the lean multi-replica test, the chaos scenarios and bench/bench_failover.py:
each replica is a separate ``python -m workers.cli serve`` process with the tiny
model, leases in Redis and its own API port; streams are looping files added
through the control API. Every check reads Redis (owners, score entries with
their ``owner``/``fence`` fields), never the processes' memory.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from monitor import keys
from monitor.redis_conn import is_cluster, redis_client

from .redisproc import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "cluster-test-token"


@dataclass
class Replica:
    """One serve process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


def stream_clip(directory: Path) -> Path:
    """The clip every replica streams (looped): 6 s at 12 fps, 64x48."""
    from .media import write_clip

    path = directory / "clip.mp4"
    write_clip(path, fps=12, n_frames=72, size=(64, 48))
    return path


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.2) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(step_s)


@dataclass
class Cluster:
    """Start, signal and inspect replicas (see the module docstring)."""

    tmp: Path
    redis_url: str
    model_dir: Path
    lease_ttl_s: float = 2.0
    renew_interval_s: float = 0.5
    capacity: int = 32
    max_moves: int = 2
    redis_settings: dict[str, Any] = field(default_factory=dict)  # more of `redis:`
    replicas: dict[str, Replica] = field(default_factory=dict)

    def __post_init__(self) -> None:  # any URL serve takes (redis+sentinel:// too)
        self.r: redis.Redis = redis_client(self.redis_url, decode_responses=True,
                                           socket_timeout=5, socket_connect_timeout=5)

    def start(self, name: str, redis_url: str | None = None) -> Replica:
        """Start replica ``name`` (``redis_url``: another way to the same Redis, a proxy)."""
        port = free_port()
        cfg = {
            "model": {"ref": str(self.model_dir), "device": "cpu", "image_size": 56,
                      "threads": 1},
            "redis": {"url": redis_url or self.redis_url, "connect_timeout_s": 0.5,
                      **self.redis_settings},
            "serve": {
                "api": {"port": port, "token": TOKEN, "allow_file_sources": True},
                "engine": {"hop": 4},
                "source": {"backoff": {"floor_s": 0.1, "cap_s": 1.0}},
                "drain_deadline_s": 20,
                "cluster": {
                    "enabled": True, "replica": name, "capacity_streams": self.capacity,
                    "lease_ttl_s": self.lease_ttl_s, "renew_interval_s": self.renew_interval_s,
                    "max_moves_per_interval": self.max_moves,
                },
            },
        }
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = self.tmp / f"{name}.log"
        with log.open("ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "serve", "--config", str(path)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                     "OMP_NUM_THREADS": "1"},
            )
        rep = Replica(name, port, proc, log)
        self.replicas[name] = rep
        return rep

    def wait_registered(self, names: list[str], timeout_s: float = 180) -> None:
        """Until every named replica has a heartbeat in Redis."""
        def ok() -> bool:
            for n in names:
                if not self.replicas[n].alive():
                    raise AssertionError(f"{n} exited:\n{self.replicas[n].log.read_text()[-3000:]}")
            return set(names) <= set(self.r.smembers(keys.REPLICAS))
        wait_for(ok, timeout_s, f"replicas {names} to register")

    def api(self, name: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        rep = self.replicas[name]
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{rep.port}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def add_streams(self, via: list[str], clip: Path, n: int, prefix: str = "cam") -> list[str]:
        """Add ``n`` looping file streams, spreading the API calls over ``via`` replicas."""
        ids = []
        for i, name in zip(range(n), itertools.cycle(via)):
            sid = f"{prefix}{i:02d}"
            code, _ = self.api(name, "POST", "/streams",
                               {"id": sid, "url": f"file://{clip}", "loop": True})
            assert code == 201, code
            ids.append(sid)
        return ids

    def owners(self, ids: list[str]) -> dict[str, str | None]:
        """stream -> the replica holding its lease (None: free)."""
        names = [keys.stream_lease(s) for s in ids]
        vals = self.r.mget_nonatomic(names) if is_cluster(self.r) else self.r.mget(names)
        return {s: (v.rpartition(" ")[0] if v else None) for s, v in zip(ids, vals)}

    def loads(self, ids: list[str], names: list[str]) -> dict[str, int]:
        o = self.owners(ids)
        return {n: sum(1 for v in o.values() if v == n) for n in names}

    def scores(self, sid: str) -> list[dict[str, str]]:
        """The stored score entries of one stream, in write order."""
        return [e for _, e in self.r.xrange(keys.stream_scores(sid))]

    def first_score_by(self, sid: str, owner: str) -> bool:
        return any(e.get("owner") == owner for e in self.scores(sid))

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.replicas[name].proc.send_signal(sig)

    def metric(self, name: str, metric: str, labels: str = "") -> float:
        """One sample of a replica's /metrics (0 when absent)."""
        rep = self.replicas[name]
        with urllib.request.urlopen(f"http://127.0.0.1:{rep.port}/metrics", timeout=30) as r:
            text = r.read().decode()
        want = f"{metric}{{{labels}}}" if labels else metric
        total = 0.0
        for line in text.splitlines():
            if line.startswith(want + " ") or (not labels and line.startswith(metric + "{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop_all(self) -> None:
        for rep in self.replicas.values():
            if rep.alive():
                rep.proc.send_signal(signal.SIGCONT)
                rep.proc.kill()
            rep.proc.wait(timeout=30)
        self.r.close()


def check_no_overlap(entries: list[dict[str, str]]) -> dict[str, int]:
    """Assert that the owners of one stream never overlap: grouped by fencing token in
    write order, each owner's ``seq`` range and window times (``wall_start``..``wall_end``)
    lie strictly after the previous owner's. Returns fence -> entries written."""
    runs: list[tuple[int, list[dict[str, str]]]] = []
    for e in entries:
        f = int(e["fence"])
        if runs and runs[-1][0] == f:
            runs[-1][1].append(e)
        else:
            assert not runs or f > runs[-1][0], f"fence went back: {runs[-1][0]} then {f}"
            runs.append((f, [e]))
    for (fa, a), (fb, b) in itertools.pairwise(runs):
        assert max(int(x["seq"]) for x in a) < min(int(x["seq"]) for x in b), (fa, fb)
        assert max(float(x["wall_end"]) for x in a) < min(float(x["wall_start"]) for x in b), (
            f"windows of fence {fa} and {fb} overlap")
    for _, run in runs:
        seqs = [int(x["seq"]) for x in run]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    return {f: len(run) for f, run in runs}


class PartitionProxy:
    """A TCP proxy to Redis that can cut one replica off (a network partition).

    While :meth:`cut` is in effect every open connection is closed and new ones
    are closed on accept; :meth:`heal` lets traffic through again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.blocked = False
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.blocked:
                conn.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._open += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self.blocked = True
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self._open.clear()

    def heal(self) -> None:
        self.blocked = False

    def close(self) -> None:
        self.cut()
        self.listener.close()
