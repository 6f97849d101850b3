"""The per-score path on the event loop (issue 25): the metric children the sinks cache,
the batch hand-over and the status built when asked, each the same as per score."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry

from monitor.live.sinks import MemorySink
from monitor.metrics import StreamMetrics
from monitor.types import Score, StreamScore, WindowFeatures


def score(stream: str, seq: int, arrival_s: float = 0.0, p: float | None = 0.25
          ) -> StreamScore:
    wf = WindowFeatures(features=np.arange(21, dtype=np.float64) + seq, repeated_frames=0)
    return StreamScore(stream, seq, 0, seq * 0.087, seq * 0.087 + 2.0,
                       Score(window=wf, p_ai=p, threshold=0.5), arrival_s=arrival_s,
                       scored_at=1000.0 + seq)


async def test_e2e_latency_is_observed_in_each_streams_own_child() -> None:
    """The sink looks each stream's latency child up once: every later write still
    counts each score in its own stream's series, whichever order they come in."""
    registry = CollectorRegistry()
    sink = MemorySink(metrics=StreamMetrics(registry), write_batch=3)
    await sink.start()
    for i, sid in enumerate(["a", "b", "a", "c", "a", "b", "a"]):
        sink.publish(score(sid, i))
    assert await sink.flush(10)
    sink.publish(score("b", 9, arrival_s=1e12))  # in the future: observed as 0
    assert await sink.flush(10)
    await sink.aclose()

    def count(sid: str) -> float | None:
        return registry.get_sample_value("restrav_stream_e2e_latency_seconds_count",
                                         {"stream": sid})

    assert (count("a"), count("b"), count("c")) == (4, 3, 1)
    assert registry.get_sample_value("restrav_stream_e2e_latency_seconds_bucket",
                                     {"stream": "b", "le": "0.005"}) == 1


def test_last_score_is_built_from_the_last_window_when_read() -> None:
    """``status.last_score`` is the dict ``_on_score`` built for every window before:
    of the last window (with the stream's seq offset), the same dict until the next one,
    and what another replica published after a JSON round trip."""
    from monitor.config import StreamSpec, load_settings
    from monitor.live.alerts import AlertTracker
    from monitor.live.service import StreamManager
    from monitor.live.stream_state import ManagedStream, StreamStatus

    mgr = StreamManager(None, MemorySink(), load_settings().serve)  # type: ignore[arg-type]
    st = ManagedStream(StreamSpec(id="s", url="rtsp://127.0.0.1/s"), "rtsp", 8,
                       AlertTracker("s", 0.8, 0.6, 0.0))
    st.seq_offset = 100
    mgr._streams["s"] = st
    assert st.status.last_score is None and st.status.to_json()["last_score"] is None
    sc = score("s", 3, p=0.123456789)
    sc = StreamScore(sc.stream_id, sc.seq, sc.segment, 1.23456789, 3.0000004, sc.score,
                     sc.arrival_s, 1700000000.12345)
    mgr._on_score(st, score("s", 2))
    mgr._on_score(st, sc)
    first = st.status.last_score
    assert first == {"seq": 103, "p_ai": 0.123456789, "start_s": 1.234568, "end_s": 3.0,
                     "flagged": False, "at": 1700000000.123}
    assert st.status.last_score is first and st.status.to_json()["last_score"] is first
    mgr._on_score(st, score("s", 4, p=None))
    assert st.status.last_score == {"seq": 104, "p_ai": None, "start_s": 0.348,
                                    "end_s": 2.348, "flagged": False, "at": 1004.0}
    remote = StreamStatus.from_json(st.status.to_json())
    assert remote.last_score == st.status.last_score
    assert remote.to_json() == st.status.to_json()
    remote.last_score = None
    assert remote.to_json()["last_score"] is None


async def test_publish_many_is_publish_of_each() -> None:
    """``publish_many`` leaves the buffer, the drops and the metrics as ``publish`` of each
    score would, with room for all of them and past ``buffer_max``."""
    from monitor.live.alerts import AlertEvent

    def exposition(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return sorted((s.name, s.labels, s.value) for m in registry.collect()
                      for s in m.samples if s.name.startswith("restrav_sink")
                      and not s.name.endswith("_created"))

    event = AlertEvent("a", "alert_start", 0.9, 1.0, 1.0)
    batches = [[score(sid, k) for sid in ("a", "b", "c")] for k in range(3)]
    for buffer_max in (100, 7):
        sinks = []
        for many in (False, True):
            registry = CollectorRegistry()
            sink = MemorySink(metrics=StreamMetrics(registry), buffer_max=buffer_max)
            sink.publish_event(event)
            for batch in batches:
                if many:
                    sink.publish_many(batch)
                    sink.publish_many([])
                else:
                    for sc in batch:
                        sink.publish(sc)
            sinks.append((sink, exposition(registry)))
        (one, one_m), (many_, many_m) = sinks
        assert list(map(id, many_._buf)) == list(map(id, one._buf))
        assert many_.dropped == one.dropped
        assert many_m == one_m
        assert many_._wake.is_set() and not many_._idle.is_set()
    assert one.dropped == 3 and len(one._buf) == 7


def test_a_batch_publishes_in_order_when_it_ends_and_isolates_callbacks() -> None:
    """Within the engine's batch scope the scores (and an alert between them) reach the
    sink only when the batch's callbacks have all run, in the order published, runs of
    scores with one ``publish_many``; a callback that raises loses no other score."""
    import types

    from monitor.config import StreamSpec, load_settings
    from monitor.live.alerts import AlertEvent, AlertTracker
    from monitor.live.engine import _dispatch
    from monitor.live.service import StreamManager
    from monitor.live.stream_state import ManagedStream

    sink = MemorySink()
    calls: list[str] = []
    publish_many = sink.publish_many

    def counted(scores: list[StreamScore]) -> None:
        calls.append(",".join(f"{s.stream_id}{s.seq}" for s in scores))
        publish_many(scores)

    sink.publish_many = counted  # type: ignore[method-assign]
    engine = types.SimpleNamespace()
    mgr = StreamManager(engine, sink, load_settings().serve)  # type: ignore[arg-type]
    assert engine.batch_scope == mgr.out.batch
    streams = {}
    for sid in ("a", "b"):
        st = ManagedStream(StreamSpec(id=sid, url=f"rtsp://127.0.0.1/{sid}"), "rtsp", 8,
                           AlertTracker(sid, 0.8, 0.6, 0.0))
        mgr._streams[sid] = st
        mgr.runner.set_state(st, "running")
        streams[sid] = st
    sink._buf.clear()
    seen: list[int] = []

    def on(sid: str) -> Callable[[StreamScore], None]:
        def cb(sc: StreamScore) -> None:
            seen.append(len(sink._buf))
            mgr._on_score(streams[sid], sc)
        return cb

    def bad(sc: StreamScore) -> None:
        raise RuntimeError("boom")

    _dispatch([(on("a"), score("a", 0, p=0.1)), (bad, score("x", 0)),
               (on("b"), score("b", 0, p=0.9)), (on("a"), score("a", 1, p=0.2))],
              engine.batch_scope)
    assert seen == [0, 0, 0]  # nothing queued while the batch runs
    got = [(type(x).__name__, x.stream_id, getattr(x, "seq", None)) for x in sink._buf]
    assert got == [("StreamScore", "a", 0), ("AlertEvent", "b", None),
                   ("StreamScore", "b", 0), ("StreamScore", "a", 1)]
    assert isinstance(sink._buf[1], AlertEvent) and sink._buf[1].kind == "alert_start"
    assert calls == ["a0", "b0,a1"]
    mgr._on_score(streams["a"], score("a", 2))  # outside a batch: queued at once
    assert [getattr(x, "seq", None) for x in sink._buf][-1] == 2 and len(calls) == 2


def test_fanout_publish_many_reaches_every_sink_past_a_failing_one() -> None:
    """The fan-out queues a batch in every sink; one that raises is counted once and the
    others still get it; the live feed folds the batch as one publish per score, the
    event log ignores it."""
    from monitor.live.livefeed import LiveFeed
    from monitor.live.sinks import EventLog, FanoutSink

    class Broken(MemorySink):
        def publish_many(self, scores: Sequence[StreamScore]) -> None:
            raise RuntimeError("boom")

    clock = [2000.0]
    batch = [score("a", 1, p=0.3), score("b", 1, p=0.5), score("a", 2, p=0.1)]
    statuses = [{"id": sid, "kind": "file", "url": f"file:///{sid}.mp4", "state": "running",
                 "paused": False, "error": None, "reconnects": 0, "windows_scored": 1,
                 "alert_active": False, "gaps": {}, "history": []} for sid in ("a", "b")]
    feeds = [LiveFeed(statuses=lambda: statuses, clock=lambda: clock[0]) for _ in range(2)]
    mem, log = MemorySink(), EventLog()
    fan = FanoutSink([Broken(), mem, feeds[0], log])
    fan.publish_many(batch)
    for sc in batch:
        feeds[1].publish(sc)
    assert fan.errors == 1 and list(map(id, mem._buf)) == list(map(id, batch))
    tick = feeds[0].tick()
    assert tick == feeds[1].tick() and tick["points"]["a"][1] == 0.3
    assert feeds[0].detail("a") == feeds[1].detail("a") is not None


def test_a_failing_score_callback_is_counted_and_the_others_run() -> None:
    """The callback boundary logs and counts a callback that raises, per stream, and the
    batch's other callbacks still run."""
    from prometheus_client import CollectorRegistry

    from monitor.live.engine import _dispatch
    from monitor.metrics import StreamMetrics

    metrics = StreamMetrics(CollectorRegistry())
    got: list[str] = []

    def bad(sc: StreamScore) -> None:
        raise RuntimeError("boom")

    _dispatch([(bad, score("x", 0)), (lambda sc: got.append(sc.stream_id), score("a", 0)),
               (bad, score("x", 1))], metrics=metrics)
    assert got == ["a"]
    assert metrics.windows_skipped.labels("x", "callback_failed")._value.get() == 2
