"""Live frame sources: RTSP and HTTP/HLS through PyAV, files played in real time.

See :mod:`monitor.media.sources.base` for the contract every source kind implements.
Kinds registered here: ``rtsp`` (``rtsp://``, ``rtsps://``), ``http``
(``http://``, ``https://``: progressive HTTP or HLS playlists) and ``file``
(``file://`` or a bare path). Other kinds (WebRTC) call
:func:`register_source_kind` from their own module.
"""

from __future__ import annotations

from .base import (
    DropPolicy,
    FrameBuffer,
    LiveSource,
    SourceClosed,
    SourceContext,
    SourceError,
    SourceFrame,
    SourceOpener,
    kind_for,
    opener_for,
    register_source_kind,
    registered_kinds,
)
from .file import FileSource
from .rtsp import AVSource

register_source_kind("rtsp", AVSource.open, ("rtsp", "rtsps"))
register_source_kind("http", AVSource.open, ("http", "https"))
register_source_kind("file", FileSource.open, ("file",))

__all__ = [
    "AVSource",
    "DropPolicy",
    "FileSource",
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
