"""Hostile HTTP input at the edge of the control plane: bounded JSON, quiet refusals.

* :func:`loads_json` parses a request body with a nesting bound: a body
  nested deeper than ``max_depth`` is refused (:class:`JsonTooDeep`) before
  ``json.loads`` could recurse into a ``RecursionError`` (which was a 500).
* :class:`ServerLog` is the logger handed to aiohttp's server. aiohttp logs a
  malformed request (bad request line, invalid header character, oversized
  line, broken chunking) at ERROR with a traceback whose message quotes the
  offending bytes verbatim: an ``Authorization`` header with one stray
  character put the bearer token in the log. ``ServerLog`` turns each such
  refusal into ONE line naming only the error class and status (no request
  bytes, no traceback, at INFO) and calls ``on_refused(status)``; every other record passes
  through unchanged (a bug in a handler still logs its traceback).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

MAX_JSON_DEPTH = 32
"""Deepest nesting of objects/arrays accepted in a control-plane body (specs use 2)."""

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]")


class JsonTooDeep(ValueError):
    """A JSON body nested deeper than the bound."""


def json_depth(raw: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in ``raw`` (brackets inside strings ignored)."""
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", raw))
    depth = deepest = 0
    for ch in brackets:
        if ch in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with a nesting bound; :class:`JsonTooDeep` beyond it.

    Other malformed input raises ``ValueError`` (or ``UnicodeDecodeError``) as
    ``json.loads`` does.
    """
    if json_depth(raw) > max_depth:
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels")
    return json.loads(raw)


ExcInfo = (
    bool
    | BaseException
    | tuple[type[BaseException], BaseException, TracebackType | None]
    | tuple[None, None, None]
    | None
)


def _refusal(exc_info: ExcInfo) -> HttpProcessingError | None:
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    return exc if isinstance(exc, HttpProcessingError) else None


class ServerLog(logging.Logger):
    """aiohttp's server logger without request bytes (see the module docstring).

    Records go to the handlers of ``parent`` (default: the ``restrav.http``
    logger), so they are formatted and filtered like every other project log.
    """

    def __init__(
        self,
        on_refused: Callable[[int], None] | None = None,
        parent: logging.Logger | None = None,
    ) -> None:
        super().__init__("restrav.http")
        self.parent = parent or logging.getLogger("restrav.http")
        self.on_refused = on_refused

    def debug(self, msg: object, *args: Any, **kw: Any) -> None:
        """As ``Logger.debug``; a refusal is logged (at INFO) even when DEBUG is off."""
        if _refusal(kw.get("exc_info")) is not None:
            self._log(logging.DEBUG, msg, args, **kw)
        else:
            super().debug(msg, *args, **kw)

    def _log(
        self,
        level: int,
        msg: object,
        args: Any,
        exc_info: ExcInfo = None,
        extra: Mapping[str, object] | None = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        refused = _refusal(exc_info)
        if refused is None:
            super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel)
            return
        if self.on_refused is not None:
            self.on_refused(refused.code)
        # args[0] is the peer address when aiohttp says "... from %s"
        peer = args[0] if isinstance(args, tuple) and args else "?"
        super()._log(
            logging.INFO, "refused a malformed HTTP request from %s: %s (%d)",
            (peer, type(refused).__name__, refused.code), None, extra, False, stacklevel,
        )


__all__ = ["MAX_JSON_DEPTH", "JsonTooDeep", "ServerLog", "json_depth", "loads_json"]
