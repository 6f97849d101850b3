"""A video file played in real time, as if it were a live feed (demos and tests).

:class:`FileSource` decodes in a thread like :class:`~monitor.media.sources.rtsp.AVSource`
and releases each frame when its presentation time comes (wall clock from the
first frame); ``loop=True`` plays the file again at its end (time goes back:
the sampler starts a new window there). A missing or unreadable file is a
permanent failure; the end of the file stops the stream (``SourceClosed``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ...config import StreamSpec
from ...errors import InputError
from ..decode import LiveVideo
from .base import DropPolicy, SourceContext, SourceError
from .rtsp import AVSource, _limits, nvdec_device


def file_path(url: str) -> Path:
    """The path of a ``file://`` URL or a bare path."""
    if url.startswith("file://"):
        return Path(unquote(urlsplit(url).path))
    return Path(url)


class FileSource(AVSource):
    """Real-time playback of a file (see the module docstring)."""

    def __init__(self, path: Path, loop: bool = False, realtime: bool = True, **kw: Any) -> None:
        super().__init__(str(path), str(path), live=False, **kw)
        self.path = path
        self.loop = loop
        self.realtime = realtime
        self._paced = realtime

    @classmethod
    async def open(cls, spec: StreamSpec, ctx: SourceContext) -> FileSource:
        """The ``file`` opener: ``file:///abs/path.mp4`` or a bare path."""
        path = file_path(ctx.url)
        if not path.is_file():
            raise SourceError(f"{path}: no such file", code="not_found", permanent=True)
        src = cls(
            path,
            loop=spec.loop,
            limits=_limits(ctx),
            buffer_frames=ctx.settings.buffer_frames,
            policy=DropPolicy.KEEP_LATEST,
            cuda_device=nvdec_device(ctx.settings),
        )
        await src.start()
        return src

    def _permanent(self, exc: InputError) -> bool:
        return True

    def _frames(self, video: LiveVideo) -> Iterator[tuple[Any, float]]:
        current = video
        while True:
            yield from current.frames()
            if not self.loop or self._quit.is_set():
                return
            current.close()
            current = self._open_video()
            self._video = current
            self._clock0 = None  # the next pass restarts the clock at its first frame
