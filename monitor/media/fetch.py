"""Turn a job's ``source`` into a local file, within the bounds configuration allows.

Contract of :func:`local_source`: a context manager that yields ``source`` as
a local file opened once or raises a typed :class:`~monitor.errors.InputError`:

* a local path must be absolute, local paths must be enabled
  (``allow_local_paths``) and, when ``local_roots`` is set, the file must lie
  under one of them: the check is made on the file once opened (its real path
  from ``/proc/self/fd``), and what is yielded is that open file
  (:class:`~monitor.media.safe_input.OpenedFile`), so a symlink swapped between the
  check and the read cannot redirect it;
* a URL's scheme must be in ``allowed_url_schemes`` (only ``http`` and
  ``https`` are implemented; ``file://`` is refused unless listed *and* local
  paths are enabled), its host in ``allowed_url_hosts`` when that is set, and
  every address the host resolves to must be public unless
  ``allow_private_addresses``: loopback, private, link-local, multicast and
  reserved addresses are refused. The connection goes to the address that
  was checked (no second DNS lookup), so DNS rebinding cannot bypass the check.
  Redirects are followed (at most :data:`MAX_REDIRECTS`), each one checked again;
* a URL holding whitespace or control characters, or non-ASCII characters in
  its path or query (they must be percent-encoded), is refused as not a valid URL;
* a download is bounded in bytes, in time per socket operation
  (``download_timeout_s``: ``download_failed``) and in wall time as a whole
  (``download_deadline_s``, redirects included: :class:`DownloadTimeout`, code
  ``timeout``), and lands in a temporary file that is removed when the context exits.

Credentials in URLs never appear in error messages (:func:`redact_url`), not even
where an exception's own text quotes the URL.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ..errors import InputError, InputTooLarge, SourceNotFound, UnsupportedSource
from ..redaction import redact_url
from .safe_input import OpenedFile, open_local

MAX_REDIRECTS = 3
CHUNK_BYTES = 1 << 16
IMPLEMENTED_SCHEMES = frozenset({"http", "https"})
_NOT_IN_URLS = re.compile(r"[\x00-\x20\x7f-\x9f]")
"""Whitespace and control characters: never valid in a URL (they must be percent-encoded)."""


class DownloadFailed(InputError):
    """A URL could not be fetched (HTTP error status, network error, timeout)."""

    code = "download_failed"


class DownloadTimeout(DownloadFailed):
    """A download as a whole took longer than ``download_deadline_s``."""

    code = "timeout"


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """What a job may name as its source (built from ``QueueSettings``)."""

    allow_local_paths: bool = True
    local_roots: tuple[Path, ...] = ()
    allowed_url_schemes: tuple[str, ...] = ()
    allowed_url_hosts: tuple[str, ...] = ()
    allow_private_addresses: bool = False
    max_download_bytes: int = 512 * 1024**2
    download_timeout_s: float = 30.0
    download_deadline_s: float = 300.0


def _check_local(source: str, policy: SourcePolicy, max_bytes: int) -> OpenedFile:
    if not policy.allow_local_paths:
        raise UnsupportedSource("local paths are not accepted by this queue (allow_local_paths)")
    path = Path(source)
    if not path.is_absolute():
        raise UnsupportedSource(f"{source}: local paths must be absolute")
    # the roots are checked on the opened file, so a symlink swapped after the check
    # cannot redirect the read: decoding reads this descriptor, never the path again
    return open_local(path, max_bytes, policy.local_roots)


def _check_address(host: str, port: int, policy: SourcePolicy, shown: str) -> str:
    """Resolve ``host`` and return an address to connect to, refusing internal ones."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadFailed(f"{shown}: cannot resolve host {host!r}") from exc
    addresses = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not policy.allow_private_addresses and not ip.is_global:
            raise UnsupportedSource(
                f"{shown}: host {host!r} resolves to a non-public address ({ip}); "
                "internal addresses are refused (queue.allow_private_addresses)"
            )
        addresses.append(str(ip))
    if not addresses:
        raise DownloadFailed(f"{shown}: host {host!r} has no address")
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to a pre-resolved address, with the URL's host in the Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a pre-resolved address; the certificate is checked against the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def check_url(url: str, policy: SourcePolicy) -> tuple[str, str, int]:
    """Check a URL's scheme and host against the policy; return (scheme, host, port)."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsupportedSource(f"{shown}: not a valid URL ({exc})") from exc
    if _NOT_IN_URLS.search(url) or not (parts.path + parts.query).isascii():
        # http.client would refuse them with messages that quote the raw URL; repr: no
        # control character reaches a message
        raise UnsupportedSource(
            f"{shown!r}: not a valid URL (whitespace, control characters and non-ASCII "
            "characters in the path or query must be percent-encoded)"
        )
    scheme = parts.scheme.lower()
    if scheme not in policy.allowed_url_schemes:
        allowed = ", ".join(policy.allowed_url_schemes) or "none"
        raise UnsupportedSource(
            f"{shown}: URL scheme {scheme!r} is not allowed (allowed: {allowed}; "
            "queue.allowed_url_schemes)"
        )
    if scheme not in IMPLEMENTED_SCHEMES:
        raise UnsupportedSource(f"{shown}: URL scheme {scheme!r} is not supported (http, https)")
    host = parts.hostname
    if not host:
        raise UnsupportedSource(f"{shown}: URL has no host")
    if policy.allowed_url_hosts and host not in policy.allowed_url_hosts:
        raise UnsupportedSource(
            f"{shown}: host {host!r} is not in queue.allowed_url_hosts"
        )
    return scheme, host, port or (443 if scheme == "https" else 80)


class _Watchdog:
    """Shuts a connection's socket down once the download's deadline passes, so that
    no blocked read (response headers included, which http.client reads many times
    over) outlives it; :attr:`fired` says that it did."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.fired = False
        self._conn = conn
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            sock = self._conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    # the plain socket's shutdown (an SSLSocket's would drop its TLS state
                    # under the reading thread): a blocked read then returns at once
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        """Stop the timer; once this returns it never touches the connection."""
        with self._lock:
            self._done = True
        self._timer.cancel()


def _reason(exc: BaseException, url: str, target: str) -> str:
    """``Type: message`` of a download error, with the URL and request target redacted
    wherever the message quotes them (http.client's InvalidURL does)."""
    text = f"{type(exc).__name__}: {exc}"
    for raw in (url, target):
        for form in {raw, repr(raw)[1:-1]}:
            text = text.replace(form, redact_url(raw))
    return text


def download(url: str, dest: Path, policy: SourcePolicy, max_bytes: int) -> int:
    """Fetch ``url`` into ``dest`` (bounded by ``max_bytes`` and the policy's timeouts).

    Returns the number of bytes written. Each socket operation is bounded by
    ``download_timeout_s``; the whole download, redirects included, by
    ``download_deadline_s`` (checked between reads, and a watchdog cuts a read
    still blocked when it passes). Raises :class:`UnsupportedSource`,
    :class:`SourceNotFound` (HTTP 404/410), :class:`InputTooLarge`,
    :class:`DownloadTimeout` or :class:`DownloadFailed`; no message holds the
    URL's credentials or secret query values.
    """
    limit = min(max_bytes, policy.max_download_bytes)
    deadline = time.monotonic() + policy.download_deadline_s
    shown = redact_url(url)

    def timed_out() -> DownloadTimeout:
        return DownloadTimeout(
            f"{shown}: the download took longer than {policy.download_deadline_s:g} s "
            "(queue.download_deadline_s)"
        )

    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port = check_url(url, policy)
        address = _check_address(host, port, policy, shown)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        left = deadline - time.monotonic()
        if left <= 0:
            raise timed_out()
        timeout = min(policy.download_timeout_s, left)
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = _PinnedHTTPSConnection(host, port, address, timeout)
        else:
            conn = _PinnedHTTPConnection(host, port, address, timeout)
        watchdog = _Watchdog(conn, left)
        resp: http.client.HTTPResponse | None = None
        try:
            conn.request("GET", target, headers={"User-Agent": "restrav-monitor"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise DownloadFailed(f"{shown}: redirect without a Location")
                url = urljoin(url, location)
                shown = redact_url(url)
                continue
            if resp.status in (404, 410):
                raise SourceNotFound(f"{shown}: HTTP {resp.status} (no such resource)")
            if resp.status != 200:
                raise DownloadFailed(f"{shown}: HTTP {resp.status} {resp.reason}")
            declared = resp.getheader("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise InputTooLarge(
                    f"{shown}: {declared} bytes exceeds the download limit of {limit} bytes"
                )
            total = 0
            with dest.open("wb") as fh:
                # read1: whatever has arrived, so that the deadline is checked between reads
                while chunk := resp.read1(CHUNK_BYTES):
                    total += len(chunk)
                    if total > limit:
                        raise InputTooLarge(
                            f"{shown}: more than the download limit of {limit} bytes"
                        )
                    fh.write(chunk)
                    if time.monotonic() >= deadline:
                        raise timed_out()
            if watchdog.fired:
                raise timed_out()  # the cut read looked like the end of the body
            return total
        except (OSError, http.client.HTTPException) as exc:
            if watchdog.fired or time.monotonic() >= deadline:
                raise timed_out() from exc
            raise DownloadFailed(f"{shown}: download failed ({_reason(exc, url, target)})") from exc
        finally:
            watchdog.cancel()
            if resp is not None:
                resp.close()  # its socket too, when the connection was already closed
            conn.close()
    raise DownloadFailed(f"{shown}: more than {MAX_REDIRECTS} redirects")


@contextmanager
def local_source(source: str, policy: SourcePolicy, max_bytes: int) -> Iterator[OpenedFile]:
    """Yield ``source`` as a local file opened once (see the module docstring for the
    checks); it is closed (and a download removed) when the context exits."""
    if "://" not in source:
        with _check_local(source, policy, max_bytes) as opened:
            yield opened
        return
    scheme = source.split("://", 1)[0].lower()
    if scheme == "file":
        if "file" not in policy.allowed_url_schemes:
            raise UnsupportedSource(
                f"{redact_url(source)}: file:// URLs are not allowed (queue.allowed_url_schemes)"
            )
        with _check_local(urlsplit(source).path, policy, max_bytes) as opened:
            yield opened
        return
    check_url(source, policy)
    fd, name = tempfile.mkstemp(prefix="restrav-dl-", suffix=".video")
    os.close(fd)
    path = Path(name)
    try:
        download(source, path, policy, max_bytes)
        with open_local(path, max_bytes) as opened:
            yield opened
    finally:
        path.unlink(missing_ok=True)


__all__ = [
    "DownloadFailed",
    "DownloadTimeout",
    "SourcePolicy",
    "check_url",
    "download",
    "local_source",
]
