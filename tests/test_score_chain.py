"""The per-score path on the event loop (issue 25): the metric children the sinks cache,
the batch hand-over and the status built when asked, each the same as per score."""

from __future__ import annotations

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
