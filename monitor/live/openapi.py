"""The control API's OpenAPI 3.1 document, generated from the pydantic models.

:data:`OPERATIONS` lists every route of :mod:`monitor.live.api` (method, path,
auth, request body model, responses); :func:`openapi_document` turns it into
the document served at ``GET /openapi.json``: the request body schema is
:class:`~monitor.config.StreamSpec`'s own JSON schema, responses use the
models below. ``tests/test_openapi.py`` checks that the document lists
exactly the routes the application serves, and the chaos suite fuzzes the
running service from it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from ..config import STREAM_ID_PATTERN, StreamSpec
from .evidence.recorder import EVIDENCE_ID_PATTERN
from .review import MAX_EVENTS
from .sinks.eventlog import KINDS


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code`` and a message for people."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class StreamStatusBody(BaseModel):
    """One stream's status (the main fields; more may be added)."""

    model_config = ConfigDict(extra="allow")

    id: str
    kind: str
    url: str = Field(description="The stream URL with credentials redacted.")
    state: str
    paused: bool
    reconnects: int
    frames: int
    windows_scored: int


class StreamList(BaseModel):
    """``GET /streams``."""

    streams: list[StreamStatusBody]


class StreamOutcome(BaseModel):
    """``POST``/``PUT /streams``: what happened and the stream's status."""

    outcome: str = Field(description="created, unchanged or replaced")
    stream: StreamStatusBody


class Readiness(BaseModel):
    """``GET /readyz``: ready, or the reasons it is not (by check)."""

    ready: bool
    reasons: dict[str, str]


class EvidenceRecord(BaseModel):
    """``GET /evidence/{eid}``: the record written for a flagged window (more fields may
    be added; ``score`` is the score as sinks write it, with its 21 features)."""

    model_config = ConfigDict(extra="allow")

    id: str
    stream: str
    reason: str = Field(description="alert_start or low_threshold")
    score: dict[str, Any]
    frames: list[dict[str, Any]] = Field(description="time_s, wall_s, repeated, k per frame")
    urls: dict[str, str] = Field(description="clip and sheet")


class Health(BaseModel):
    """``GET /healthz``."""

    status: str


MODELS: tuple[type[BaseModel], ...] = (
    StreamSpec, ErrorBody, StreamStatusBody, StreamList, StreamOutcome, Readiness, Health,
    EvidenceRecord,
)

_ERR = "ErrorBody"
_AUTH_ERRORS = {401: _ERR, 503: _ERR}
_BODY_ERRORS = {400: _ERR, 413: _ERR, 415: _ERR, 422: _ERR}

# (method, path, summary, needs the token, request body model, {status: model name or None})
OPERATIONS: tuple[tuple[str, str, str, bool, str | None, dict[int, str | None]], ...] = (
    ("get", "/healthz", "Liveness", False, None, {200: "Health"}),
    ("get", "/readyz", "Readiness", False, None, {200: "Readiness", 503: "Readiness"}),
    ("get", "/metrics", "Prometheus metrics (text)", False, None, {200: "text"}),
    ("get", "/openapi.json", "This document", False, None, {200: "json"}),
    ("get", "/streams", "Every stream's status", True, None, {200: "StreamList"}),
    ("post", "/streams", "Add a stream (idempotent by id)", True, "StreamSpec",
     {200: "StreamOutcome", 201: "StreamOutcome", 409: _ERR, 429: _ERR, **_BODY_ERRORS}),
    ("put", "/streams/{id}", "Create or replace a stream", True, "StreamSpecNoId",
     {200: "StreamOutcome", 201: "StreamOutcome", 429: _ERR, **_BODY_ERRORS}),
    ("get", "/streams/{id}", "One stream's status", True, None,
     {200: "StreamStatusBody", 404: _ERR}),
    ("delete", "/streams/{id}", "Remove a stream (also when absent)", True, None, {204: None}),
    ("post", "/streams/{id}/pause", "Pause a stream", True, None,
     {200: "StreamStatusBody", 404: _ERR}),
    ("post", "/streams/{id}/resume", "Resume a paused stream", True, None,
     {200: "StreamStatusBody", 404: _ERR}),
    ("get", "/streams/{id}/thumbnail", "The stream's latest sampled frame, small", True, None,
     {200: "image/jpeg", 404: _ERR}),
    ("get", "/evidence/{eid}", "An evidence record: the flagged window's score and frames",
     True, None, {200: "EvidenceRecord", 404: _ERR}),
    ("get", "/evidence/{eid}/clip.mp4", "The flagged window's 24 frames (H.264)", True, None,
     {200: "video/mp4", 404: _ERR}),
    ("get", "/evidence/{eid}/sheet.jpg", "The flagged window's contact sheet", True, None,
     {200: "image/jpeg", 404: _ERR}),
    ("post", "/evidence/{eid}/ack", "Acknowledge a record (operator)", True, None,
     {200: "json", 404: _ERR}),
    ("get", "/events", "Recent events, newest first: alerts, changes, acknowledgements, "
     "state changes (every replica's from Redis)", True, None,
     {200: "json", 400: _ERR, 404: _ERR}),
)
"""The routes of :func:`monitor.live.api.create_app`, in the document's terms."""


_KIND = "(" + "|".join(sorted(KINDS)) + ")"
_EVENTS_QUERY = [
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS, "default": 100}},
    {"name": "kind", "in": "query", "required": False,
     "description": "comma-separated kinds to keep: " + ", ".join(sorted(KINDS)),
     "schema": {"type": "string", "pattern": f"^{_KIND}(,{_KIND})*$"}},
]
"""``GET /events``'s query parameters."""


def _response(model: str | None) -> dict[str, Any]:
    if model is None:
        return {"description": "no content"}
    if model == "text":
        return {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    if model in ("image/jpeg", "video/mp4"):
        return {"description": "OK (Cache-Control: no-store)", "content": {model: {
            "schema": {"type": "string", "contentMediaType": model}}}}
    if model == "json":
        return {"description": "OK", "content": {"application/json": {"schema": {
            "type": "object"}}}}
    return {"description": model, "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{model}"}}}}


def openapi_document(version: str = "0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the control API (see the module docstring)."""
    _, defs = models_json_schema(
        [(m, "validation" if m is StreamSpec else "serialization") for m in MODELS],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    no_id = dict(schemas["StreamSpec"])
    no_id["properties"] = {k: v for k, v in no_id["properties"].items() if k != "id"}
    no_id["required"] = [k for k in no_id.get("required", []) if k != "id"]
    no_id["title"] = "StreamSpecNoId"
    no_id["description"] = "A stream spec for PUT: the id comes from the path."
    schemas["StreamSpecNoId"] = no_id
    paths: dict[str, dict[str, Any]] = {}
    id_param = {"name": "id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": STREAM_ID_PATTERN}}
    eid_param = {"name": "eid", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": EVIDENCE_ID_PATTERN}}
    for method, path, summary, auth, body, responses in OPERATIONS:
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '')}"
                           .replace("}", "").replace(".", "_") or method,
            "responses": {
                str(code): _response(model)
                for code, model in {**(_AUTH_ERRORS if auth else {}),
                                    # a viewer token may read, never change
                                    **({403: _ERR} if auth and method != "get" else {}),
                                    **responses}.items()
            },
        }
        if "{id}" in path or "{eid}" in path:
            op["parameters"] = [id_param if "{id}" in path else eid_param]
            # an id outside the pattern matches no route: 404 (never a 5xx)
            op["responses"].setdefault("404", _response(_ERR))
        if path == "/events":
            op["parameters"] = _EVENTS_QUERY
        if auth:
            op["security"] = [{"bearer": []}]
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{body}"}}}}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "restrav serve control API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


__all__ = ["MODELS", "OPERATIONS", "ErrorBody", "StreamStatusBody", "openapi_document"]
