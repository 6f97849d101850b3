"""One live stream's state: its status (what ``/streams`` and the page show), the
record the stream manager keeps for it, its reconnect backoff, and the credentials
kept out of its URL.

* :data:`STATES`: ``starting``, ``running``, ``stalled``, ``reconnecting``,
  ``paused``, ``stopped``, ``failed`` (see :mod:`monitor.live.stream_task`); no frame
  is scored in :data:`UNWATCHED_STATES`, and a WHIP stream waiting for its publisher
  is neither stalled nor failing (:func:`publisher_awaited`).
* :class:`StreamStatus` round-trips through JSON (replicas publish it in Redis).
* :class:`Backoff`: full jitter between a floor and an exponential ceiling; the
  attempt count resets after a stable run.
* :func:`strip_credentials` / :func:`inject_credentials`: a URL's user and password
  are kept apart and put back only at connect time.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..config import StreamSpec
from ..media.sampler import LiveSampler
from ..media.sources.base import SourceFrame
from ..redaction import redact_url
from ..types import StreamScore
from .alerts import AlertTracker, EventBudget

STATES = ("starting", "running", "stalled", "reconnecting", "paused", "stopped", "failed")
UNWATCHED_STATES = frozenset({"paused", "stopped", "failed"})
"""States in which no frames are scored: an alert ends on entering them."""


def publisher_awaited(kind: str, state: str | None) -> bool:
    """A WHIP stream ``starting`` (declared, no publisher yet, or one still connecting) or
    ``reconnecting`` (its publisher left) is waiting for its publisher: normal, not a stall."""
    return kind == "whip" and state in ("starting", "reconnecting")


def awaiting_publisher(st: ManagedStream) -> bool:
    """Whether ``st`` waits for its WHIP publisher (:func:`publisher_awaited`)."""
    return publisher_awaited(st.kind, st.status.state)


def watched(st: ManagedStream) -> bool:
    """Whether ``st`` may be in alert: not paused, stopped or failed, and not a WHIP stream
    waiting for its publisher. Scores of windows still in the engine when a stream stops
    being watched are published but leave its alert state alone."""
    return st.status.state not in UNWATCHED_STATES and not awaiting_publisher(st)


class Backoff:
    """Exponential backoff with full jitter, a floor, a cap and a reset.

    The n-th consecutive delay is uniform in ``[floor, max(floor, min(cap,
    floor * 2**n))]``. :meth:`succeeded` after a run of at least
    ``reset_after_s`` resets n to 0. Pure: times are passed in, randomness comes
    from ``rng``.
    """

    def __init__(
        self,
        floor_s: float,
        cap_s: float,
        reset_after_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.floor_s = floor_s
        self.cap_s = cap_s
        self.reset_after_s = reset_after_s
        self.rng = rng or random.Random()
        self.attempt = 0

    def ceiling(self, attempt: int | None = None) -> float:
        """Upper bound of the delay for ``attempt`` (default: the next one)."""
        n = self.attempt if attempt is None else attempt
        return max(self.floor_s, min(self.cap_s, self.floor_s * math.pow(2.0, min(n, 60))))

    def next_delay(self) -> float:
        """The delay before the next attempt; counts the attempt."""
        d = self.rng.uniform(self.floor_s, self.ceiling())
        self.attempt += 1
        return d

    def ran_for(self, run_s: float) -> None:
        """Report how long the last connection ran; a stable one resets the backoff."""
        if run_s >= self.reset_after_s:
            self.attempt = 0


def strip_credentials(url: str) -> tuple[str, bool]:
    """``url`` without user info, and whether it had any."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, False
    if "@" not in parts.netloc:
        return url, False
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), True


def inject_credentials(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password@`` (percent-encoded) in place of any user info."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass
class StreamStatus:
    """What the API shows for one stream (no credentials anywhere).

    ``owner`` is the replica running the stream (None: not owned by any replica,
    or a single-replica service) and ``fence`` its fencing token. ``yielding`` is true
    while the stream yields its turn on an overloaded device (degraded: its samples
    are dropped in whole windows, ``windows_yielded`` of them so far), ``priority``
    the operator's priority for keeping it running.
    """

    id: str
    kind: str
    url: str
    state: str
    state_since: float
    paused: bool
    hop: int
    error: dict[str, str] | None = None
    reconnects: int = 0
    frames: int = 0
    samples: int = 0
    frames_dropped: int = 0
    windows_scored: int = 0
    windows_skipped: int = 0
    gaps: dict[str, int] = field(default_factory=dict)
    alert_active: bool = False
    history: list[tuple[str, float]] = field(default_factory=list)
    owner: str | None = None
    fence: int | None = None
    priority: int = 0
    yielding: bool = False
    windows_yielded: int = 0
    scored: StreamScore | None = field(default=None, init=False, repr=False, compare=False)
    """The stream's last scored window, kept as is (set for every window): :attr:`last_score`
    is built from it when read, not for every window."""
    _last_score: dict[str, Any] | None = field(default=None, init=False, repr=False,
                                               compare=False)

    @property
    def last_score(self) -> dict[str, Any] | None:
        """The last scored window: ``seq``, ``p_ai``, ``start_s`` and ``end_s`` (rounded
        to 6 places), ``flagged``, ``at`` (the time it was scored, 3 places); None before
        the first. Built from :attr:`scored` when first read after a window (the same
        dict until the next), or as set (another replica's, from :meth:`from_json`)."""
        sc = self.scored
        if sc is not None:
            self.scored = None
            self._last_score = {
                "seq": sc.seq,
                "p_ai": sc.p_ai,
                "start_s": round(sc.start_s, 6),
                "end_s": round(sc.end_s, 6),
                "flagged": sc.score.flagged,
                "at": round(sc.scored_at, 3),
            }
        return self._last_score

    @last_score.setter
    def last_score(self, value: dict[str, Any] | None) -> None:
        self.scored = None
        self._last_score = value

    def to_json(self) -> dict[str, Any]:
        """JSON view (``history``: the last state transitions, oldest first)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "url": self.url,
            "state": self.state,
            "state_since": round(self.state_since, 3),
            "paused": self.paused,
            "hop": self.hop,
            "error": self.error,
            "reconnects": self.reconnects,
            "frames": self.frames,
            "samples": self.samples,
            "frames_dropped": self.frames_dropped,
            "windows_scored": self.windows_scored,
            "windows_skipped": self.windows_skipped,
            "gaps": dict(self.gaps),
            "last_score": self.last_score,
            "alert_active": self.alert_active,
            "history": [{"state": s, "at": round(t, 3)} for s, t in self.history[-20:]],
            "owner": self.owner,
            "fence": self.fence,
            "priority": self.priority,
            "yielding": self.yielding,
            "windows_yielded": self.windows_yielded,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StreamStatus:
        """The status another replica published with :meth:`to_json`. Raises KeyError,
        TypeError or ValueError for a malformed object."""
        status = cls(
            id=str(d["id"]), kind=str(d["kind"]), url=str(d["url"]), state=str(d["state"]),
            state_since=float(d["state_since"]), paused=bool(d["paused"]), hop=int(d["hop"]),
            error=d.get("error"), reconnects=int(d.get("reconnects", 0)),
            frames=int(d.get("frames", 0)), samples=int(d.get("samples", 0)),
            frames_dropped=int(d.get("frames_dropped", 0)),
            windows_scored=int(d.get("windows_scored", 0)),
            windows_skipped=int(d.get("windows_skipped", 0)),
            gaps={str(k): int(v) for k, v in dict(d.get("gaps") or {}).items()},
            alert_active=bool(d.get("alert_active", False)),
            history=[(str(h["state"]), float(h["at"])) for h in d.get("history") or []],
            owner=d.get("owner"), fence=d.get("fence"),
            priority=int(d.get("priority", 0)), yielding=bool(d.get("yielding", False)),
            windows_yielded=int(d.get("windows_yielded", 0)),
        )
        status.last_score = d.get("last_score")
        return status


class ManagedStream:
    """One managed stream: spec, status, sampler, alert state and its task.

    ``fence`` is the fencing token of the lease this replica holds for it (None
    without leases); ``seq_offset`` is added to the engine's per-stream window
    counter so that ``seq`` continues where the previous owner stopped.
    """

    def __init__(self, spec: StreamSpec, kind: str, hop: int, tracker: AlertTracker) -> None:
        self.spec = spec
        self.kind = kind
        self.status = StreamStatus(
            id=spec.id, kind=kind, url=redact_url(spec.url), state="starting",
            state_since=time.time(), paused=spec.paused, hop=hop, priority=spec.priority,
        )
        self.sampler: LiveSampler[SourceFrame] | None = None
        self.tracker = tracker
        self.task: asyncio.Task[None] | None = None
        self.inline_credentials = strip_credentials(spec.url)[1]
        self.lost_credentials = False
        self.fence: int | None = None
        self.seq_offset = 0
        self.state_budget: EventBudget | None = None
        """What this stream may still put on ``restrav:events`` of its state changes."""
