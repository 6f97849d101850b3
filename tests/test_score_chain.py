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
