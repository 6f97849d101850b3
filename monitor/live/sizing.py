"""The engine's sizes and stream slots, from the measured batch cost (issue: overload
sheds load, it never collapses).

:class:`EngineSizing` is the engine's control loop, run a few times a second under
the engine's lock (:meth:`EngineSizing.tick`): it re-derives the unset batch limit
and queue bound (:func:`~monitor.live.shedding.derive_sizes`), estimates the
worker's capacity (the batch-cost fit, or less when the worker, saturated for a whole
second, delivered less), and once the engine is overloaded sets the number of
streams that run at once (:meth:`~monitor.live.shedding.Shedder.set_slots`), with a
small correction from the queue's depth. It also sets the engine's gauges. The
counters it reads (``full_batches``, ``fallback_skips``, ``idle_takes``) are
incremented by the engine as batches are taken and samples refused.
"""

from __future__ import annotations

import logging
import math

from ..config import EngineSettings
from ..metrics import StreamMetrics
from ..types import SAMPLE_HZ
from .shedding import MAX_DERIVED_BATCH, BatchCost, Shedder, derive_sizes

log = logging.getLogger("restrav.engine")

_TICK_S = 0.25
"""How often the event-loop side re-derives sizes and slots and reclaims idle slots."""


class EngineSizing:
    """Batch limit, queue bound, capacity and slots of one engine (module docstring)."""

    def __init__(
        self, settings: EngineSettings, shedder: Shedder, metrics: StreamMetrics | None
    ) -> None:
        self.settings = settings
        self.shedder = shedder
        self.metrics = metrics
        self.cost = BatchCost()
        self.batch_limit = settings.max_batch if settings.max_batch is not None else 16
        self.queue_limit = settings.queue_samples if settings.queue_samples is not None else 256
        self.shedding_on = settings.shedding == "rotate"
        self.limited = False  # slots limited since the queue first backed up
        self.probe = 0  # slot correction from the queue's depth (integral control)
        self.full_batches = 0  # batches at the limit since the last tick
        self.fallback_skips = 0  # backstop skips since the last tick
        self.idle_takes = 0  # batches the worker had to wait for, since sat_start
        self.sat_start = 0.0
        self.sat_samples = 0
        self.sat_rate: float | None = None  # samples/s delivered while saturated
        self.next_tick = 0.0
        self.capacity_sps: float | None = None

    def tick(self, now: float, queued: int, streams: int, embedded: int) -> None:
        """Re-derive sizes and slots, reclaim idle slots, set the gauges (under the engine's
        lock; O(streams), a few times a second). ``queued``: samples in the engine queue;
        ``streams``: registered streams; ``embedded``: samples embedded since start."""
        self.next_tick = now + _TICK_S
        self.resize(streams)
        self.shedder.tick(now)
        cap = self.capacity(now, queued, embedded)
        self.capacity_sps = cap
        overloaded = self.fallback_skips > 0 or self.full_batches > 2
        if cap is not None and self.shedding_on and (overloaded or self.limited):
            if not self.limited:
                log.warning("engine overloaded: streams take turns (capacity about %.0f "
                            "samples/s)", cap)
            self.limited = True
            if self.shedder.yielding and queued < self.batch_limit // 2:
                self.probe = min(self.probe + 1, 64)  # the device has room: one more
            elif queued > 2 * self.batch_limit:
                self.probe = max(self.probe - 1, -64)
            base = math.floor(self.settings.target_utilisation * cap / SAMPLE_HZ)
            self.shedder.set_slots(base + self.probe)
        self.fallback_skips = 0
        self.full_batches = 0
        m = self.metrics
        if m is not None:
            m.streams_yielding.set(self.shedder.yielding)
            m.stream_slots.set(self.shedder.slots if self.limited else streams)
            m.capacity.set(cap or 0.0)
            m.batch_limit.set(self.batch_limit)
            m.queue_limit.set(self.queue_limit)
            m.queue_samples.set(queued)

    def capacity(self, now: float, queued: int, embedded: int) -> float | None:
        """Samples/s the worker sustains: the batch-cost fit, or less when the worker,
        saturated for a whole second (never waiting for work), delivered less: the fit
        counts only its busy time, not what it lost to the event loop and to other
        processes for the CPU (on two shared cores, up to a quarter at 4x overload)."""
        cap = self.cost.capacity(self.batch_limit)
        span = now - self.sat_start
        if span >= 1.0:
            done = embedded - self.sat_samples
            if self.idle_takes == 0 and queued > 0 and done > 0:
                rate = done / span
                self.sat_rate = rate if self.sat_rate is None else (
                    0.7 * self.sat_rate + 0.3 * rate)
            elif self.idle_takes > 0 and self.sat_rate is not None and cap is not None:
                # the worker waited for work: what it delivered says nothing of its limit;
                # let the saturated figure drift back towards the fit
                self.sat_rate = min(cap, self.sat_rate * 1.02)
            self.sat_start, self.sat_samples, self.idle_takes = (
                now, embedded, 0)
        if cap is not None and self.sat_rate is not None:
            return min(cap, self.sat_rate)
        return cap

    def resize(self, streams: int) -> None:
        """Derive the unset batch limit and queue bound (under the engine's lock)."""
        s = self.settings
        if s.max_batch is not None and s.queue_samples is not None:
            return
        fit = self.cost.get()
        if fit is not None and fit[0] > 0.0:
            batch, queue = derive_sizes(fit[0], fit[1], streams, SAMPLE_HZ)
        else:  # slope unknown: a batch that fills every time may as well be larger
            batch = self.batch_limit
            if self.full_batches > 2:
                batch = min(MAX_DERIVED_BATCH, batch * 2)
            queue = derive_sizes(0.0, 0.0, streams, SAMPLE_HZ,
                                 min_batch=batch, max_batch=batch)[1]
        if s.max_batch is None:
            self.batch_limit = batch
        if s.queue_samples is None:
            self.queue_limit = max(queue, 4 * self.batch_limit)
