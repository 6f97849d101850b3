"""The clip queue's payloads: a :class:`Job` and its options, reason codes, and the
best-effort reading of a payload that may be invalid. No Redis here."""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import RestravError

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
REPLY_PATTERN = r"^restrav:replies:[A-Za-z0-9._:{}-]{1,128}$"
MAX_SOURCE_CHARS = 4096
MAX_JOB_BYTES = 16 * 1024
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Characters no job source may hold: C0 controls (NUL, newlines...), DEL, C1 controls."""

# reason codes that are not exceptions of monitor.errors
INVALID_JOB = "invalid_job"
UNKNOWN_CLASSIFIER = "unknown_classifier"
DEAD_LETTERED = "dead_lettered"
WORKER_LOST = "worker_lost"
INTERNAL = "internal"

OUTCOME_SCORED = "scored"
OUTCOME_ERROR = "error"
OUTCOME_DUPLICATE = "duplicate"
OUTCOME_DEAD = "dead_lettered"
OUTCOME_RELEASED = "released"


class JobOptions(BaseModel):
    """How to score a clip. ``hop`` is in 11.5 Hz samples (1 = a window at every sample)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: bool = Field(True, description="Score every window along the clip.")
    hop: int = Field(1, ge=1, description="One window every `hop` samples.")
    classifier: str | None = Field(
        None,
        max_length=128,
        description="Name of a classifier in queue.classifiers; 'none': features only "
        "(score null); unset: the worker's classifier (the bundled default unless "
        "configured otherwise).",
    )


class Job(BaseModel):
    """One clip to score: the JSON in the ``job`` field of a ``restrav:jobs`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(
        pattern=JOB_ID_PATTERN, description="Idempotency key: one result per job id."
    )
    source: str = Field(
        min_length=1,
        max_length=MAX_SOURCE_CHARS,
        description="Absolute path or http(s) URL, without control characters.",
    )
    options: JobOptions = JobOptions()
    reply_to: str | None = Field(
        None,
        pattern=REPLY_PATTERN,
        description="Stream to append the full result to (must start with restrav:replies:).",
    )

    @field_validator("source")
    @classmethod
    def _no_control_characters(cls, source: str) -> str:
        """Refuse NUL and other control characters: no path or URL holds them, and the
        operating system would refuse the name only later, as a bug."""
        found = CONTROL_CHARACTERS.search(source)
        if found is not None:
            raise ValueError(
                f"source holds a control character ({found.group()!r} at {found.start()}); "
                "paths and URLs cannot contain NUL, newlines or other control characters"
            )
        return source


def new_job_id() -> str:
    """A fresh random job id."""
    return uuid.uuid4().hex


class QueueFull(RestravError):
    """The queue holds ``max_queue_length`` unfinished jobs: try again later."""

    code = "queue_full"


class JobRejected(Exception):
    """A job that cannot be run as asked (reason ``code``); answered, never retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Entry:
    """One delivered stream entry as a worker holds it.

    ``token`` is the fencing token of this attempt once the job id's lock is
    taken: the answer is written only while the lock still holds it.
    """

    id: str
    fields: dict[str, str]
    deliveries: int
    picked_at: float = field(default_factory=time.monotonic)
    job_id: str | None = None
    token: str | None = None


def entry_ms(entry_id: str) -> int:
    """The millisecond timestamp part of a stream entry id."""
    return int(entry_id.split("-", 1)[0])


def short(exc: BaseException, limit: int = 500) -> str:
    text = str(exc).replace("\n", "; ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def peek(raw: str) -> tuple[str | None, str | None, str | None]:
    """Best-effort job id, source and reply stream of a payload that may be invalid."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    job_id = data.get("job_id")
    source = data.get("source")
    reply = data.get("reply_to")
    ok_id = isinstance(job_id, str) and re.match(JOB_ID_PATTERN, job_id) is not None
    ok_reply = isinstance(reply, str) and re.match(REPLY_PATTERN, reply) is not None
    return (
        job_id if ok_id else None,
        source[:MAX_SOURCE_CHARS] if isinstance(source, str) else None,
        reply if ok_reply else None,
    )
