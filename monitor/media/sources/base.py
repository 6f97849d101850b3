"""The live source contract, the frame buffer between a decode thread and asyncio,
and the registry of source kinds.

Contract of a live source (what :class:`monitor.live.service.StreamManager` drives,
and what a new kind such as WebRTC implements)::

    source = await opener(spec, ctx)      # connect; raises SourceError
    frame = await source.recv()           # -> SourceFrame, in arrival order
                                          #    SourceClosed: ended for good (file end)
                                          #    SourceError: lost (reconnect)
    await source.aclose()                 # idempotent; stops threads

* A :class:`SourceFrame` carries its presentation time ``pts_s`` on the
  source's clock, its arrival time (``time.monotonic()``), a per-connection
  ``index`` and the frame in the source's own form (``image``) with a
  ``to_rgb`` function (and optionally ``to_planes``, its 4:2:0 planes for
  conversion on the device, and ``to_small`` for evidence): only the few frames
  the 11.5 Hz grid samples are
  ever converted, and the conversion runs on the engine's side, not on the
  event loop.
* ``recv`` may be cancelled (a stream stopped, a stall that ends the read): a
  cancelled ``recv`` loses no frame (:class:`FrameBuffer` takes a frame off only
  when it returns it).
* ``dropped_before`` counts frames the source dropped just before this one (a
  full buffer keeping the latest): the stream ends its window there.
* Optionally ``await source.recv_due(next_pts_s)`` -> a non-empty list of frames in
  arrival order (the same errors as ``recv``): every frame buffered, returned once
  one of them may close the sample time ``next_pts_s`` (None: any frame), or may end
  the window (time going back, a dropped frame), or the buffer is half full
  (:meth:`FrameBuffer.get_due`). The frames between two samples then cost the event
  loop no wake-up; a reader without it uses ``recv``.
* Openers register per kind with :func:`register_source_kind`; a spec's kind
  is explicit or inferred from its URL scheme (:func:`kind_for`).
* Error messages and ``description`` never contain credentials (use
  :func:`monitor.redaction.redact_url`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, Protocol, runtime_checkable
from urllib.parse import urlsplit

from ...config import ServeSourceSettings, StreamSpec
from ...errors import RestravError, UnsupportedSource
from ...types import RGBArray, SourceClosed
from ..colour import YUVPlanes

__all__ = [
    "DropPolicy",
    "FrameBuffer",
    "LiveSource",
    "SourceClosed",
    "SourceContext",
    "SourceError",
    "SourceFrame",
    "SourceOpener",
    "kind_for",
    "opener_for",
    "register_source_kind",
    "registered_kinds",
]


class SourceError(RestravError):
    """A source failed. ``permanent`` errors (a missing file, a bad URL) stop the
    stream in state ``failed``; the others are retried with backoff. ``expected`` marks
    a normal end that is not a fault (a WHIP publisher's DELETE): the stream waits for
    its source again, logged at INFO, with no error left on its status."""

    code = "source_error"

    def __init__(self, message: str, code: str | None = None, permanent: bool = False,
                 expected: bool = False) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.permanent = permanent
        self.expected = expected


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """One frame from a live source; see the module docstring."""

    pts_s: float
    arrival_s: float
    index: int
    image: Any
    to_rgb: Callable[[Any], RGBArray]
    dropped_before: int = 0
    to_planes: Callable[[Any], YUVPlanes | None] | None = None
    to_small: Callable[[Any, int, Any], RGBArray] | None = None
    """Scale and convert in one step (:func:`~monitor.media.decode.frame_to_small_rgb`);
    None: :meth:`small_rgb` converts the whole frame and subsamples it."""

    def rgb(self) -> RGBArray:
        """The frame as RGB ``uint8`` ``(H, W, 3)`` (converts; call once per sample)."""
        return self.to_rgb(self.image)

    def small_rgb(self, width: int, scaler: Any = None) -> RGBArray:
        """The frame at most ``width`` px wide, RGB ``uint8`` (for evidence and thumbnails;
        raises ValueError for a frame that cannot be scaled). ``scaler``: the calling
        thread's own (:func:`~monitor.media.decode.new_scaler`)."""
        if self.to_small is not None:
            return self.to_small(self.image, width, scaler)
        rgb = self.to_rgb(self.image)
        step = max(1, -(-rgb.shape[1] // width))
        return rgb[::step, ::step]

    def planes(self) -> YUVPlanes | None:
        """The frame's 4:2:0 planes for conversion on the device, or None when the
        source or the pixel format offers none (the caller then uses :meth:`rgb`)."""
        return self.to_planes(self.image) if self.to_planes is not None else None


@runtime_checkable
class LiveSource(Protocol):
    """One connection to a feed (see the module docstring)."""

    description: str
    """Redacted, printable name of the source."""

    async def recv(self) -> SourceFrame:
        """The next frame; SourceClosed at the end, SourceError when lost."""
        ...

    async def aclose(self) -> None:
        """Stop and release everything; idempotent."""
        ...


@dataclass(frozen=True)
class SourceContext:
    """What an opener gets besides the spec: the URL with credentials injected
    (never print it), its redacted form, and the source settings."""

    url: str
    description: str
    settings: ServeSourceSettings
    decode_threads: int = 0
    max_pixels: int = 8192 * 8192
    extra: dict[str, Any] = field(default_factory=dict)
    waker: LoopWaker | None = None
    """Shared by the frame buffers of all streams of the loop (None: each its own)."""


SourceOpener = Callable[[StreamSpec, SourceContext], Awaitable[LiveSource]]

_KINDS: dict[str, SourceOpener] = {}
_SCHEMES: dict[str, str] = {}


def register_source_kind(kind: str, opener: SourceOpener, schemes: tuple[str, ...] = ()) -> None:
    """Make ``kind`` available to stream specs; URLs with one of ``schemes`` default to it."""
    _KINDS[kind] = opener
    for s in schemes:
        _SCHEMES[s] = kind


def registered_kinds() -> tuple[str, ...]:
    """Every kind a spec may name."""
    return tuple(sorted(_KINDS))


def kind_for(spec: StreamSpec) -> str:
    """The source kind of ``spec``: explicit, or from its URL scheme (a bare path is a file)."""
    if spec.kind is not None:
        if spec.kind not in _KINDS:
            raise UnsupportedSource(
                f"unknown source kind {spec.kind!r}; known: {', '.join(registered_kinds())}"
            )
        return spec.kind
    try:
        scheme = urlsplit(spec.url).scheme.lower()
    except ValueError:
        raise UnsupportedSource("malformed URL") from None
    if len(scheme) <= 1:  # a bare path (or a drive letter)
        scheme = "file"
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise UnsupportedSource(
            f"unsupported URL scheme {scheme!r}; use one of {', '.join(sorted(_SCHEMES))}"
        )
    return kind


def opener_for(kind: str) -> SourceOpener:
    """The opener registered for ``kind``."""
    try:
        return _KINDS[kind]
    except KeyError:
        raise UnsupportedSource(f"unknown source kind {kind!r}") from None


_DUE_EPS_S = 1e-9
"""Slack of :meth:`FrameBuffer.get_due`'s time comparison (the sampler's own is 1e-9)."""


class DropPolicy(enum.Enum):
    """What a full :class:`FrameBuffer` does with a new frame."""

    KEEP_LATEST = "keep_latest"
    """Drop the oldest buffered frame (live sources: never fall behind real time)."""
    BLOCK = "block"
    """Make the producer wait (inputs read faster than real time that must not drop)."""


class Settable(Protocol):
    """What :class:`LoopWaker` sets: an :class:`asyncio.Event`, or anything with ``set()``."""

    def set(self) -> None:
        """Called on the loop's thread."""


class LoopWaker:
    """Sets :class:`asyncio.Event` s (any :class:`Settable`) of one event loop from other
    threads, coalesced: the events set while a wake-up is on its way ride on it, so many
    producers (one decode thread per stream) cost the loop one self-pipe write per
    wake-up, not one per frame. At 300 streams x 25 fps a write per frame was a wake-up,
    a handle and a pipe read each, 7,500 times a second (BENCHMARKS.md, issue 25).
    Thread-safe; an event may be set from the loop's own thread too."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._due: list[Settable] = []

    def set(self, event: Settable) -> None:
        """Set ``event`` on the loop soon (never blocks; a closed loop is ignored)."""
        with self._lock:
            self._due.append(event)
            if len(self._due) > 1:
                return  # a wake-up is on its way and takes this one along
        # a RuntimeError means the loop closed at shutdown: nobody is waiting
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            due, self._due = self._due, []
        for event in due:
            event.set()


class _Wakeup:
    """A :class:`FrameBuffer` consumer's wait: a future per wait, resolved on the loop by
    :meth:`set` (no :class:`asyncio.Event` waiter list). On the loop's thread only."""

    __slots__ = ("fut",)

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Wake the waiting consumer, if any (a cancelled wait is left as it is)."""
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_result(None)


class FrameBuffer:
    """A bounded hand-off of frames from one producer thread to one asyncio consumer.

    ``put`` (thread side) applies the :class:`DropPolicy`, counting drops; a frame
    after drops carries them in ``dropped_before``. ``close(error)`` ends the
    stream: ``get`` raises ``error`` (or :class:`SourceClosed`) once the frames
    before it are consumed.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        capacity: int,
        policy: DropPolicy = DropPolicy.KEEP_LATEST,
        waker: LoopWaker | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._loop = loop
        # shared by the buffers of one loop (SourceContext.waker), or this buffer's own
        self._waker = waker if waker is not None else LoopWaker(loop)
        self.capacity = capacity
        self.policy = policy
        self._items: collections.deque[SourceFrame] = collections.deque()
        self._lock = threading.Lock()  # bare on the hot paths: no Condition.__enter__
        self._cond = threading.Condition(self._lock)
        self._wakeup = _Wakeup()
        self._closed = False
        self._error: BaseException | None = None
        self._pending_drops = 0
        self._waiting = False  # the consumer waits on _wakeup (guarded by _lock)
        self._wake_pts: float | None = None  # get_due's hint while it waits (ditto)
        self._last_pts = -math.inf  # the last frame put (ditto)
        self.dropped = 0

    def _wake(self) -> None:
        self._waker.set(self._wakeup)

    def put(self, frame: SourceFrame, quit_event: threading.Event | None = None) -> bool:
        """Add a frame (producer thread). Returns False when the buffer is closed."""
        with self._lock:
            if self._closed:
                return False
            if len(self._items) >= self.capacity:
                if self.policy is DropPolicy.KEEP_LATEST:
                    # the frame after the dropped one inherits the hole (and any before it)
                    old = self._items.popleft()
                    self.dropped += 1
                    hole = old.dropped_before + 1
                    if self._items:
                        head = self._items[0]
                        self._items[0] = replace(head, dropped_before=head.dropped_before + hole)
                    else:
                        self._pending_drops += hole
                else:
                    while len(self._items) >= self.capacity and not self._closed:
                        if quit_event is not None and quit_event.is_set():
                            return False
                        self._cond.wait(0.1)
                    if self._closed:
                        return False
            if self._pending_drops:
                frame = replace(frame, dropped_before=frame.dropped_before + self._pending_drops)
                self._pending_drops = 0
            self._items.append(frame)
            # wake the loop only when the consumer waits: a self-pipe write per frame cost
            # the loop a wake-up per frame even while it was busy draining the buffer;
            # get_due's consumer only for a frame it needs now (see get_due)
            wake = self._waiting and self._due(frame)
            self._last_pts = frame.pts_s
            if wake:
                self._waiting = False
        if wake:
            self._wake()
        return True

    def close(self, error: BaseException | None = None) -> None:
        """End the stream (producer or consumer side); idempotent, first error wins."""
        with self._cond:
            if not self._closed:
                self._closed = True
                self._error = error
            self._cond.notify_all()
        self._wake()

    def _due(self, frame: SourceFrame) -> bool:
        """Whether ``frame`` must wake a waiting consumer (under ``_lock``): always for
        ``get``; for ``get_due``, when the frame may close the sample time it waits for,
        may end the window (time going back, not finite, a hole before it), or the
        buffer is half full (never a drop for want of a wake-up)."""
        wake_pts = self._wake_pts
        pts = frame.pts_s
        return (
            wake_pts is None
            or not pts + _DUE_EPS_S < wake_pts  # also NaN
            or pts + _DUE_EPS_S < self._last_pts
            or frame.dropped_before > 0
            or len(self._items) * 2 >= self.capacity
        )

    def _raise_closed(self) -> NoReturn:
        if self._error is not None:
            raise self._error
        raise SourceClosed("source ended")

    async def get(self) -> SourceFrame:
        """The next frame (consumer side)."""
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    if self.policy is DropPolicy.BLOCK:  # only a BLOCK producer waits
                        self._cond.notify_all()
                    return item
                if self._closed:
                    self._raise_closed()
                self._waiting = True
                self._wake_pts = None
                # created on the loop's thread before any wake-up can run there
                fut = self._wakeup.fut = self._loop.create_future()
            await fut

    async def get_due(self, next_pts_s: float | None) -> list[SourceFrame]:
        """Every buffered frame, in order (consumer side; at least one).

        With the buffer empty, waits until a frame arrives whose ``pts_s`` is at least
        ``next_pts_s`` (less a nanosecond: it may close that sample time; None: any
        frame), or one that may end the window (its pts before the previous frame's,
        not finite, or ``dropped_before``), or the buffer is half full, or it is
        closed. The frames before such a frame wait in the buffer, unread, and come
        with it: a live sampler's frames between two sample times cost the event loop
        no wake-up, and a sample is resolved as soon as it was with :meth:`get` (by the
        first frame after its time). Raises as :meth:`get` once the frames are taken;
        a cancelled call takes none."""
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    if self.policy is DropPolicy.BLOCK:
                        self._cond.notify_all()
                    return items
                if self._closed:
                    self._raise_closed()
                self._waiting = True
                self._wake_pts = next_pts_s
                fut = self._wakeup.fut = self._loop.create_future()
            await fut

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
