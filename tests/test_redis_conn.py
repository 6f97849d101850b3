"""Redis URLs (one server or Sentinel) and the clients built from them: parsing,
redaction, settings, and a real Sentinel setup (a primary, a replica, three
sentinels on loopback) whose primary is SIGKILLed under a connected client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from monitor import keys
from monitor.config import load_settings
from monitor.errors import ConfigError
from monitor.queue import connect
from monitor.redaction import redact_text, redact_url
from monitor.redis_conn import (
    AsyncSentinelRedis,
    SentinelRedis,
    async_redis_client,
    check_redis_url,
    is_cluster,
    parse_cluster_url,
    parse_sentinel_url,
    redis_client,
    rediscover,
)
from tests.clusterproc import ClusterSetup
from tests.sentinelproc import SERVICE, SentinelSetup, retrying, started

ROOT = Path(__file__).resolve().parents[1]


def test_plain_urls_are_not_sentinel_and_are_accepted() -> None:
    for url in ("redis://h:6379/0", "rediss://:pw@h/1", "unix:///tmp/r.sock?db=2"):
        assert parse_sentinel_url(url) is None
        check_redis_url(url)


def test_sentinel_url_parts() -> None:
    t = parse_sentinel_url(
        "redis+sentinel://app:s%40cret@10.0.0.1:26380,sent-b,[::1]:5000/mymaster/3"
        "?sentinel_password=spw&sentinel_username=watch"
    )
    assert t is not None
    assert t.sentinels == (("10.0.0.1", 26380), ("sent-b", 26379), ("::1", 5000))
    assert (t.service, t.db, t.username, t.password) == ("mymaster", 3, "app", "s@cret")
    assert (t.sentinel_username, t.sentinel_password) == ("watch", "spw")
    assert not t.tls and not t.sentinel_tls
    assert t.data_kwargs() == {"db": 3, "username": "app", "password": "s@cret"}
    assert t.sentinel_kwargs() == {"username": "watch", "password": "spw"}
    assert "s@cret" not in repr(t) and "spw" not in repr(t)


def test_sentinel_url_defaults_and_password_only() -> None:
    t = parse_sentinel_url("redis+sentinel://:pw@h:1/svc")
    assert t is not None
    assert (t.db, t.username, t.password, t.sentinel_password) == (0, None, "pw", None)
    t = parse_sentinel_url("redis+sentinel://h/svc/")
    assert t is not None and t.sentinels == (("h", 26379),) and t.service == "svc"


def test_sentinel_tls_options() -> None:
    t = parse_sentinel_url(
        "rediss+sentinel://h:1/svc?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required"
        "&ssl_check_hostname=false"
    )
    assert t is not None and t.tls and t.sentinel_tls
    want = {"ssl": True, "ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required",
            "ssl_check_hostname": False}
    assert t.data_kwargs() == {"db": 0, **want}
    assert t.sentinel_kwargs() == want
    t = parse_sentinel_url("rediss+sentinel://h:1/svc?sentinel_tls=false")
    assert t is not None and t.tls and not t.sentinel_tls and "ssl" not in t.sentinel_kwargs()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h:1", "service"),
        ("redis+sentinel://h:1/", "service"),
        ("redis+sentinel://h:1/svc/x", "not a number"),
        ("redis+sentinel://h:1/svc/0/extra", "/SERVICE/DB"),
        ("redis+sentinel://h:99999/svc", "port"),
        ("redis+sentinel://h:1,,h2:2/svc", "empty"),
        ("redis+sentinel://:hunter2@h:1/svc?nope=1", "unknown option"),
        ("redis+sentinel://h:1/svc?ssl_ca_certs=/ca", "TLS options need"),
        ("redis+sentinel://h:1/svc?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("rediss+sentinel://h:1/svc?sentinel_tls=perhaps", "true or false"),
        ("redis+cluster://h:1/1", "only database 0"),
        ("redis+cluster://h:1,,h2:2", "empty cluster node"),
        ("redis+cluster://h:70000", "cluster node port"),
        ("redis+cluster://:hunter2@h:1?ssl_ca_certs=/ca", "TLS options need"),
        ("redis+cluster://:hunter2@h:1?sentinel_tls=true", "unknown option"),
        ("http://:hunter2@h/0", "unsupported scheme"),
        ("h:6379", "unsupported scheme"),
    ],
)
def test_malformed_urls_are_config_errors_without_secrets(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_redis_url(url)
    assert why in info.value.message
    assert "hunter2" not in info.value.message


def test_settings_take_a_sentinel_url_and_refuse_a_bad_one_without_quoting_it() -> None:
    url = "redis+sentinel://:hunter2@127.0.0.1:26379,127.0.0.1:26380/restrav/1"
    s = load_settings(None, redis={"url": url})
    assert s.redis.url is not None and s.redis.url.get_secret_value() == url
    with pytest.raises(ConfigError) as info:
        load_settings(None, redis={"url": "redis+sentinel://:hunter2@h:1"})
    assert "redis.url" in info.value.message and "hunter2" not in info.value.message


def test_sentinel_credentials_are_redacted() -> None:
    url = "redis+sentinel://app:hunter2@h1:1,h2:2/svc/0?sentinel_password=spw2"
    shown = redact_url(url)
    assert "hunter2" not in shown and "spw2" not in shown
    assert "h1:1,h2:2/svc/0" in shown
    assert "hunter2" not in redact_text(f"cannot reach {url}: refused")


def test_clients_of_a_sentinel_url_are_sentinel_clients() -> None:
    url = "redis+sentinel://127.0.0.1:1/svc/2"
    c = redis_client(url, decode_responses=True, socket_connect_timeout=0.5)
    assert isinstance(c, SentinelRedis) and c.sentinel_manager is not None
    assert c.connection_pool.connection_kwargs["db"] == 2
    # the sentinels get the connect timeout as their read timeout too
    assert c.sentinel_manager.sentinel_kwargs["socket_timeout"] == 0.5
    with pytest.raises(redis.ConnectionError):  # nothing listens there: no primary found
        c.ping()
    c.close()

    async def run() -> None:
        a = async_redis_client(url, socket_connect_timeout=0.5)
        assert isinstance(a, AsyncSentinelRedis)
        with pytest.raises(redis.ConnectionError):
            await a.ping()
        await a.aclose()

    asyncio.run(run())


def test_cluster_url_parts() -> None:
    t = parse_cluster_url("redis+cluster://app:s%40cret@10.0.0.1:7000,node-b,[::1]:7001/")
    assert t is not None and parse_sentinel_url("redis+cluster://h:1") is None
    assert t.nodes == (("10.0.0.1", 7000), ("node-b", 6379), ("::1", 7001))
    assert t.node_kwargs() == {"username": "app", "password": "s@cret"}
    assert "s@cret" not in repr(t)
    t = parse_cluster_url("rediss+cluster://:pw@h:1?ssl_ca_certs=/ca.pem&ssl_check_hostname=no")
    assert t is not None and t.tls
    assert t.node_kwargs() == {"password": "pw", "ssl": True, "ssl_ca_certs": "/ca.pem",
                               "ssl_check_hostname": False}
    assert parse_cluster_url("redis://h:1/0") is None
    url = "redis+cluster://:hunter2@h1:1,h2:2"
    assert load_settings(None, redis={"url": url}).redis.url is not None
    assert "hunter2" not in redact_url(url) and "h1:1,h2:2" in redact_url(url)


def test_clients_of_a_cluster_url_are_cluster_clients() -> None:
    # the sync client reads the slot map when built: nothing there is a connection error
    with pytest.raises(redis.ConnectionError) as info:
        redis_client("redis+cluster://:hunter2@127.0.0.1:1", socket_connect_timeout=0.5)
    assert "hunter2" not in str(info.value)

    async def run() -> None:
        a = async_redis_client("redis+cluster://127.0.0.1:1", socket_connect_timeout=0.5)
        assert is_cluster(a) and is_cluster(a.pipeline(transaction=False))
        with pytest.raises(redis.RedisError):
            await a.ping()
        await a.aclose()

    asyncio.run(run())
    assert not is_cluster(redis.Redis())


def test_cluster_client_follows_a_failover(redis_cluster: ClusterSetup) -> None:
    client = connect(redis_cluster.url(), read_timeout_s=5)
    try:
        assert is_cluster(client)
        names = [f"k{i}" for i in range(20)]  # over every primary
        for k in names:
            client.set(k, k)
        victim = redis_cluster.port_of_slot_owner(names[0])
        assert redis_cluster.node(victim).wait(1, 5000) == 1
        redis_cluster.kill(victim)
        redis_cluster.wait_promoted(victim)
        # the same client, no restart: MOVED / a dead node makes it read the slot map
        assert retrying(lambda: client.mget_nonatomic(names)) == names
        retrying(lambda: client.set(names[0], "after"))
        assert client.get(names[0]) == "after"
    finally:
        client.close()


# ---- a real Sentinel setup --------------------------------------------------------


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    # 2 s before a node counts as down: a busy CI machine must not fail over by itself
    setup = SentinelSetup(tmp_path / "sentinel", password="hunter2", down_after_ms=2000)
    with started(setup):
        yield setup


def test_sentinel_client_follows_a_failover(sentinel_setup: SentinelSetup) -> None:
    setup = sentinel_setup
    client = connect(setup.url())
    try:
        client.set("before", "1")
        assert client.wait(1, 5000) == 1  # on the replica before the primary dies
        idle = list(client.connection_pool._available_connections)
        assert idle and all(c._sock is not None for c in idle)
        rediscover(client)  # idle connections closed: the next command asks the sentinels
        assert all(c._sock is None for c in idle)
        assert client.get("before") == "1"
        old = setup.kill_primary()
        new = setup.wait_promoted(old)
        # the same client object, no restart: its next writes reach the new primary
        retrying(lambda: client.set("after", "2"))
        assert client.get("before") == "1" and client.get("after") == "2"
        direct = setup.node(new)
        assert direct.get("after") == "2"
        direct.close()
        setup.bring_back(old)
        # the old primary rejoined: the setup is one primary and one in-sync replica again
        primary, replicas = setup.topology()
        assert {primary, *replicas} == {old, new} and len(replicas) == 1
    finally:
        client.close()

    async def run() -> None:  # the asyncio client, used by serve, sees the new primary
        a = async_redis_client(setup.url(), socket_connect_timeout=2, socket_timeout=2)
        try:
            assert await a.get("after") == b"2"
            await a.set("async", "3")
        finally:
            await a.aclose()

    asyncio.run(run())
    direct = setup.node(setup.topology()[0])  # the primary now (a busy machine may fail over again)
    assert direct.get("async") == "3"
    direct.close()


def submit_and_doctor(url: str, tmp_path: Path) -> dict[str, Any]:
    """``restrav submit`` job ``s1`` to ``url``, then ``restrav doctor --json`` on it:
    both succeed without showing the password (hunter2); returns doctor's redis part."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "submit", "--redis-url", url, "--job-id", "s1",
         str(clip)], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["job_id"] == "s1"
    assert "hunter2" not in out.stdout + out.stderr
    doc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "doctor", "--json"],
        capture_output=True, text=True, env={**env, "RESTRAV_REDIS__URL": url}, timeout=120,
        cwd=ROOT,
    )
    assert "hunter2" not in doc.stdout + doc.stderr
    report: dict[str, Any] = json.loads(doc.stdout)["redis"]
    assert report["reachable"] is True, report
    return report


def test_submit_and_doctor_take_a_sentinel_url(
    sentinel_setup: SentinelSetup, tmp_path: Path
) -> None:
    report = submit_and_doctor(sentinel_setup.url(), tmp_path)
    assert SERVICE in report["url"]
    primary = sentinel_setup.node(sentinel_setup.primary_port() or 0)
    try:
        entries = primary.xrange(keys.JOBS)
        assert [json.loads(f[keys.JOB_FIELD])["job_id"] for _, f in entries] == ["s1"]
    finally:
        primary.close()


def test_submit_and_doctor_take_a_cluster_url(
    redis_cluster: ClusterSetup, tmp_path: Path
) -> None:
    report = submit_and_doctor(redis_cluster.url(), tmp_path)
    assert report["url"].startswith("redis+cluster://")
    client = connect(redis_cluster.url())
    try:
        entries = client.xrange(keys.JOBS)
        assert [json.loads(f[keys.JOB_FIELD])["job_id"] for _, f in entries] == ["s1"]
    finally:
        client.close()


def test_queue_clients_of_the_cli_time_out_reads_past_their_longest_block() -> None:
    from workers.queue_cmd import _redis

    s = load_settings(None, redis={"url": "redis+sentinel://127.0.0.1:1/svc",
                                   "connect_timeout_s": 2, "wait_timeout_s": 3},
                      queue={"block_ms": 1000})
    c = _redis(s)
    try:  # a frozen primary is a TimeoutError after 2 + 3 + 1 s, not a hang
        assert c.connection_pool.connection_kwargs["socket_timeout"] == 6.0
    finally:
        c.close()


async def test_a_task_awaiting_redis_is_stopped_though_redis_py_swallows_its_cancel(
    redis_url: str,
) -> None:
    """A renewal loop on Redis (serve's single-serve key: ``SoloGuard.run``) cancelled
    while its command is in flight: redis-py can swallow the cancellation (the command
    returns, the loop sleeps on), which hung serve's drain under load. ``_let_go`` (via
    ``cancel_and_wait``) ends it every time; each attempt cancels after 1-3 loop turns,
    where a single cancel was swallowed in about 9 of 10 tries here."""
    import redis.asyncio as aioredis

    from monitor.live.solo import SoloGuard
    from monitor.redis_faults import cancel_and_wait
    from workers.serve_cmd import _let_go

    for turn in range(30):
        guard = SoloGuard(aioredis.from_url(redis_url), "r1", ttl_s=5.0,
                          renew_s=0.0)  # always renewing
        await guard.acquire()
        task = asyncio.create_task(guard.run())
        for _ in range(1 + turn % 3):
            await asyncio.sleep(0)
        # stops, releases, closes; not wait_for: its cancel of a hung _let_go would be
        # swallowed in turn, and the test would hang instead of failing
        stopping = asyncio.ensure_future(_let_go(guard, task))
        await asyncio.wait({stopping}, timeout=5.0)
        if not stopping.done():
            await cancel_and_wait(task)  # clean up (the code under test failed)
            await stopping
            pytest.fail(f"try {turn}: the renewal task was still running after 5 s")
        stopping.result()
        assert task.done() and not guard.held


async def test_cancel_and_wait_raises_what_the_task_ended_with() -> None:
    """Not a cancellation: the task's own error comes back, as ``await task`` gives it."""
    from monitor.redis_faults import cancel_and_wait

    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    task = asyncio.create_task(fails_when_cancelled())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="cleanup failed"):
        await cancel_and_wait(task)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await cancel_and_wait(done)  # already ended: returns at once
