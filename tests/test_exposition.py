"""/metrics made off the event loop (``monitor.metrics.Exposition``): the loop keeps
running while a scrape is made, concurrent scrapes share one, a scrape that goes away
does not cancel the others'."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from monitor.metrics import Exposition


class _Gated(Collector):
    """A collector that blocks until ``gate`` is set (at most 10 s) and records whether
    it was: set by the event loop, it can only be set while ``collect`` runs if the
    loop is not the thread running it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0
        self.opened: list[bool] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.calls += 1
        self.opened.append(self.gate.wait(10))
        yield GaugeMetricFamily("gated", "a collector that waits", value=self.calls)


def _registry() -> tuple[CollectorRegistry, _Gated]:
    reg = CollectorRegistry()
    Counter("things_total", "things", registry=reg).inc(3)
    gated = _Gated()
    reg.register(gated)
    return reg, gated


async def _open_when_started(gated: _Gated) -> None:
    """On the loop: open the gate once ``collect`` has begun."""
    while gated.calls == 0:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # the other scrapes arrive meanwhile
    gated.gate.set()


async def test_the_loop_runs_while_a_scrape_is_made_and_scrapes_share_it() -> None:
    reg, gated = _registry()
    gated.calls = 0
    expo = Exposition(reg)
    scrapes = [asyncio.ensure_future(expo.text()) for _ in range(3)]
    await asyncio.wait_for(_open_when_started(gated), 10)
    texts = await asyncio.gather(*scrapes)
    assert gated.opened == [True], "collect ran on the loop: the gate could not open"
    assert gated.calls == 1 and texts[0] == texts[1] == texts[2]
    assert b"things_total 3.0" in texts[0] and b"gated 1.0" in texts[0]
    # the next scrape is a new one (the values of its own moment)
    gated.gate.clear()
    later = asyncio.ensure_future(expo.text())
    gated.gate.set()
    assert b"gated 2.0" in await later


async def test_a_scrape_that_goes_away_does_not_cancel_the_others() -> None:
    reg, gated = _registry()
    expo = Exposition(reg)
    first = asyncio.ensure_future(expo.text())
    second = asyncio.ensure_future(expo.text())
    while gated.calls == 0:
        await asyncio.sleep(0.005)
    first.cancel()
    gated.gate.set()
    assert b"gated 1.0" in await second
    assert first.cancelled() and gated.calls == 1
