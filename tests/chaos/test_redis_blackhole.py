"""A partition between `serve` and Redis that keeps TCP open: nothing is closed, nothing
answers (``tests/blackhole.py``, an asyncio proxy that stops forwarding).

A real redis-server, one `restrav serve` replica with leases (``serve.cluster``,
lease TTL 30 s, longer than the partition, so the streams keep their owner) scoring
two looping file streams; serve reaches Redis only through the proxy. The proxy
holds for RESTRAV_CHAOS_REDIS_FAULT_S (default 10 s), then forwards again, with
what waited in it: requests serve gave up on (a score batch that timed out and is
buffered to be written again) reach Redis late.

Asserted: /readyz turns 503 within the configured bound (its Redis PING times out
after ``redis.connect_timeout_s``; 0.5 s here, plus the poll and a slack for a
loaded machine) and stays 503 during the partition; after it, 200 again, the
buffered scores flushed, and, once the streams are paused, every window serve
scored is in Redis exactly once: no seq gap, none repeated (a late batch and its
retry store each score once: the fenced score script skips a seq already stored
under the same token), one owner. Figures printed and recorded in RELIABILITY.md.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from monitor import keys
from tests.blackhole import Blackhole
from tests.chaos.test_redis_serve import ready
from tests.chaos.test_sentinel_serve import audit
from tests.cluster_procs import Cluster, stream_clip, wait_for
from tests.redisproc import RedisProcess

pytestmark = pytest.mark.chaos

FAULT_S = float(os.environ.get("RESTRAV_CHAOS_REDIS_FAULT_S", "10"))
CONNECT_TIMEOUT_S = 0.5  # redis.connect_timeout_s of tests.cluster_procs.Cluster
SLACK_S = 10.0  # a loaded 2-core machine; a partition never detected waits for ever
STREAMS = 2


def test_a_partition_that_keeps_tcp_open(tmp_path: Path, tiny_model_dir: Path) -> None:
    rp = RedisProcess(tmp_path)
    rp.start()
    proxy = Blackhole(rp.port)
    c = Cluster(tmp_path, rp.url, tiny_model_dir, lease_ttl_s=30.0, renew_interval_s=0.5)
    try:
        rep = c.start("a", redis_url=proxy.url)
        c.wait_registered(["a"])
        ids = c.add_streams(["a"], stream_clip(tmp_path), STREAMS)
        wait_for(lambda: all(c.r.xlen(keys.stream_scores(s)) >= 3 for s in ids), 180,
                 "first scores")
        assert ready(rep.port) == 200
        proxy.hold()
        t0 = time.monotonic()
        try:
            wait_for(lambda: ready(rep.port) == 503, CONNECT_TIMEOUT_S + SLACK_S, "/readyz 503",
                     step_s=0.05)
            t_503 = time.monotonic() - t0
            # the hold is in effect by now: nothing more may reach Redis until it ends
            n0 = sum(c.r.xlen(keys.stream_scores(s)) for s in ids)
            time.sleep(max(0.0, FAULT_S - (time.monotonic() - t0)))
            assert ready(rep.port) == 503  # still: nothing answered meanwhile
            during = sum(c.r.xlen(keys.stream_scores(s)) for s in ids) - n0
        finally:
            proxy.release()
        t1 = time.monotonic()
        wait_for(lambda: ready(rep.port) == 200, 60, "/readyz 200 after the partition")
        t_200 = time.monotonic() - t1
        for sid in ids:
            assert c.api("a", "POST", f"/streams/{sid}/pause")[0] == 200

        def settled() -> bool:
            before = c.metric("a", "restrav_stream_windows_scored_total")
            time.sleep(1.0)
            after = c.metric("a", "restrav_stream_windows_scored_total")
            stored = sum(c.r.xlen(keys.stream_scores(s)) for s in ids)
            return before == after and stored >= after

        wait_for(settled, 60, "scoring settled and every scored window in Redis")
        scored = int(c.metric("a", "restrav_stream_windows_scored_total"))
        entries = {s: [(0, e) for e in c.scores(s)] for s in ids}
        flushed = [int(x) for x in re.findall(r"available again; flushing (\d+)",
                                              rep.log.read_text(errors="replace"))]
        refused = c.metric("a", "restrav_stale_writes_refused_total")
    finally:
        c.stop_all()
        proxy.close()
        rp.stop()
    totals = {"gaps": 0, "backwards": 0, "double_owner": 0}
    for v in entries.values():
        for k, n in audit(v).items():
            totals[k] += n
    stored = sum(len(v) for v in entries.values())
    print(f"\nRedis behind a proxy that stops forwarding ({FAULT_S:.0f} s, {STREAMS} streams): "
          f"/readyz 503 after {t_503:.2f} s, 200 again {t_200:.1f} s after it forwards; "
          f"{during} scores reached Redis during it; flushed {flushed[-1] if flushed else 0}; "
          f"windows scored {scored}, in Redis {stored}; seq gaps {totals['gaps']}, repeated "
          f"{totals['backwards']}, two owners {totals['double_owner']}; stale writes refused "
          f"{refused:.0f}; connections the proxy accepted {proxy.accepted}")
    assert during == 0 and flushed and flushed[-1] > 0
    assert totals == {"gaps": 0, "backwards": 0, "double_owner": 0}
    assert stored == scored and refused == 0
