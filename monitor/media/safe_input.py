"""Opening local media files safely: once, without following them anywhere else.

Contract:

* :func:`open_local` opens a path once (``O_NONBLOCK``, so a FIFO cannot hang the
  open) and checks the *opened* file: a regular file, non-empty, within the byte
  bound and, when ``roots`` are given, really under one of them (the check reads
  the path of the open descriptor from ``/proc/self/fd``, so a symlink swapped
  after the check cannot redirect the read). The result, :class:`OpenedFile`,
  is what decoding reads: FFmpeg gets a file object on that descriptor, never
  the path, so nothing resolves the name a second time. A name that cannot be a
  path (an embedded NUL byte) is :class:`~monitor.errors.UnsupportedSource`.
* :func:`sniff_refused` names text formats whose FFmpeg demuxers open other
  files or URLs (HLS playlists, ffconcat lists, SDP); decoding refuses them with
  :class:`~monitor.errors.UnsupportedSource` before FFmpeg sees them.
* :data:`DEFAULT_FORMATS` is the allowlist of FFmpeg demuxers for files (video
  containers, elementary video streams, GIF, single images and audio files; none
  of them opens another file). Decoding passes it as ``format_whitelist`` with
  ``protocol_whitelist=file``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULT_FORMATS
from ..errors import (
    EmptyInput,
    InputTooLarge,
    NotAFile,
    SourceNotFound,
    UnsupportedSource,
)

_REFUSED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"#EXTM3U", "an HLS playlist"),
    (b"ffconcat", "an ffconcat list"),
    (b"v=0", "an SDP session description"),
    (b"<?xml", "an XML document (DASH manifest?)"),
    (b"<MPD", "a DASH manifest"),
)


@dataclass(slots=True)
class OpenedFile:
    """A local file opened once; decoding reads this descriptor, never ``path`` again.

    ``path`` is only for messages. The owner closes it with :meth:`close`, once or
    more: only the first call closes the descriptor (``fd`` is then -1), so a later
    call can never close a descriptor number the process has reused since.
    """

    fd: int
    path: Path
    size_bytes: int
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def reader(self) -> io.BufferedReader:
        """A fresh file object at offset 0 on a duplicate of the descriptor (closing it
        leaves :attr:`fd` open). Readers share the offset: use one at a time."""
        f = os.fdopen(os.dup(self.fd), "rb")
        f.seek(0)
        return f

    def head(self, n_bytes: int = 512) -> bytes:
        """The first ``n_bytes`` of the file (no offset change)."""
        return os.pread(self.fd, n_bytes, 0)

    def close(self) -> None:
        """Close the descriptor; idempotent, also from several threads at once."""
        with self._lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _under(real: Path, roots: Sequence[Path]) -> bool:
    resolved = [Path(os.path.realpath(r)) for r in roots]
    return any(real == r or r in real.parents for r in resolved)


def open_local(
    path: str | Path, max_bytes: int, roots: Sequence[Path] = ()
) -> OpenedFile:
    """Open ``path`` for decoding, or raise a typed :class:`~monitor.errors.InputError`.

    See the module docstring: the checks apply to the opened file, not the name.
    """
    p = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(p, flags)
    except ValueError as exc:  # an embedded NUL byte: no file can have that name
        raise UnsupportedSource(f"{str(p)!r}: not a valid path (it holds a NUL byte)") from exc
    except FileNotFoundError as exc:
        raise SourceNotFound(f"{p}: no such file; check the path") from exc
    except IsADirectoryError as exc:
        raise NotAFile(f"{p}: is a directory; pass video files, not folders") from exc
    except PermissionError as exc:
        raise SourceNotFound(f"{p}: not readable (permissions)") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAFile(f"{p}: a symlink loop") from exc
        raise SourceNotFound(f"{p}: cannot open ({exc.strerror})") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise NotAFile(f"{p}: is a directory; pass video files, not folders")
        if not stat.S_ISREG(st.st_mode):
            raise NotAFile(f"{p}: not a regular file (a FIFO, socket or device)")
        if roots:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if not _under(real, roots):
                raise UnsupportedSource(
                    f"{p}: outside the directories this queue reads (queue.local_roots)"
                )
        if st.st_size == 0:
            raise EmptyInput(f"{p}: file is empty (0 bytes)")
        if st.st_size > max_bytes:
            raise InputTooLarge(
                f"{p}: {st.st_size} bytes exceeds the limit of {max_bytes} "
                "(raise decode.max_file_bytes to accept it)"
            )
        # reads of a regular file never block; clear O_NONBLOCK for FFmpeg's sake
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return OpenedFile(fd=fd, path=p, size_bytes=int(st.st_size))


def sniff_refused(head: bytes) -> str | None:
    """What refused text format ``head`` (a file's first bytes) starts, or None."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    for magic, what in _REFUSED_MAGIC:
        if text.startswith(magic):
            return what
    return None


__all__ = ["DEFAULT_FORMATS", "OpenedFile", "open_local", "sniff_refused"]
