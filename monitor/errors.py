"""One exception tree for restrav-monitor.

Every error the library raises on purpose derives from :class:`RestravError` and
carries a stable machine-readable ``code`` (used in JSON error objects, job
results and metric labels) next to a human message that says what to do::

    RestravError                      code
    ├── ConfigError                   "config"
    ├── InputError                    (bad input from whoever called us)
    │   ├── SourceNotFound            "not_found"
    │   ├── NotAFile                  "not_a_file"
    │   ├── EmptyInput                "empty"
    │   ├── InputTooLarge             "too_large"
    │   ├── UnsupportedSource         "unsupported_source"
    │   └── DecodeError               "decode_error"
    │       ├── NoVideoStream         "no_video_stream"
    │       ├── NotEnoughFrames       "too_short"
    │       ├── DecodeTimeout         "timeout"
    │       └── SourceUnreachable     "unreachable"
    ├── ModelError                    "model"
    │   └── ModelNotFound             "model_not_found"
    └── ArtifactError                 "artifact"

Bugs are not part of this tree: they propagate as ordinary Python exceptions.
"""

from __future__ import annotations


class RestravError(Exception):
    """Base of every deliberate restrav-monitor error."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        """Return ``{"code": ..., "message": ...}`` for JSON error objects."""
        return {"code": self.code, "message": self.message}


class ConfigError(RestravError):
    """Settings are invalid or inconsistent."""

    code = "config"


class InputError(RestravError):
    """The input given to us (a file, URL or payload) cannot be used."""

    code = "bad_input"


class SourceNotFound(InputError):
    """The path or URL does not exist."""

    code = "not_found"


class NotAFile(InputError):
    """The path exists but is not a regular file (a directory, a device...)."""

    code = "not_a_file"


class EmptyInput(InputError):
    """The file has zero bytes."""

    code = "empty"


class InputTooLarge(InputError):
    """The input exceeds a configured bound (bytes, duration, resolution, body size)."""

    code = "too_large"


class UnsupportedSource(InputError):
    """The URL scheme or host is not allowed by configuration."""

    code = "unsupported_source"


class DecodeError(InputError):
    """FFmpeg could not demux or decode the input (corrupt, truncated, not a video)."""

    code = "decode_error"


class NoVideoStream(DecodeError):
    """The container holds no video stream (an audio-only file, say)."""

    code = "no_video_stream"


class NotEnoughFrames(DecodeError):
    """The input decodes to too few frames to form a window."""

    code = "too_short"


class DecodeTimeout(DecodeError):
    """Opening or reading the input took longer than its timeout."""

    code = "timeout"


class SourceUnreachable(DecodeError):
    """The network input could not be reached: the connection was refused, reset or had
    no route (the server is down or the address is wrong; nothing was decoded)."""

    code = "unreachable"


class ModelError(RestravError):
    """The backbone could not be loaded or run."""

    code = "model"


class ModelNotFound(ModelError):
    """The model reference is neither a local directory/file nor a reachable hub id."""

    code = "model_not_found"


class ArtifactError(RestravError):
    """A classifier artifact is missing, malformed or of another feature spec."""

    code = "artifact"
