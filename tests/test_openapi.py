"""/openapi.json: a valid OpenAPI 3.1 document that lists exactly the routes served.

The document is validated by schemathesis (its OpenAPI 3.1 meta-schema, an
implementation we did not write); real answers of the control API are checked
against the document's schemas with jsonschema_rs. The fuzzing run is
tests/chaos/test_api_fuzz.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import schemathesis

from monitor.live.openapi import OPERATIONS, openapi_document

from . import test_api
from .test_api import AUTH, Harness

embedder = test_api.embedder  # the control API harness of test_api (fixtures)
h = test_api.h

DOC = openapi_document()


def conforms(body: Any, model: str) -> None:
    schema = {"$ref": f"#/components/schemas/{model}", "components": DOC["components"]}
    jsonschema_rs.validator_for(schema).validate(body)


def test_document_is_valid_openapi() -> None:
    schema = schemathesis.openapi.from_dict(DOC)
    schema.validate()
    assert len(list(schema.get_all_operations())) == len(OPERATIONS)


async def test_document_lists_exactly_the_routes_served(h: Harness) -> None:
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in h.client.server.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(m, p) for m, p, *_ in OPERATIONS}
    assert served == documented
    resp = await h.client.get("/openapi.json")
    assert resp.status == 200 and await resp.json() == DOC


async def test_answers_match_the_documented_schemas(h: Harness) -> None:
    c = h.client
    conforms(await (await c.get("/healthz")).json(), "Health")
    conforms(await (await c.get("/streams", headers=AUTH)).json(), "StreamList")
    spec = {"id": "doc-1", "url": "rtsp://127.0.0.1:9/none", "paused": True}
    resp = await c.post("/streams", json=spec, headers=AUTH)
    assert resp.status == 201
    conforms(await resp.json(), "StreamOutcome")
    conforms(await (await c.get("/streams/doc-1", headers=AUTH)).json(), "StreamStatusBody")
    resp = await c.put("/streams/doc-1", json={"url": "rtsp://127.0.0.1:9/none", "hop": 2},
                       headers=AUTH)
    assert resp.status == 200
    conforms(await resp.json(), "StreamOutcome")
    # each error with its exact status, documented for its route, in the ErrorBody shape
    errors = {
        ("get", "/streams/{id}", 404): await c.get("/streams/nope", headers=AUTH),
        ("post", "/streams", 422): await c.post("/streams", json={"id": "x"}, headers=AUTH),
        ("get", "/streams", 401): await c.get("/streams"),
    }
    for (method, path, status), resp in errors.items():
        assert resp.status == status, (method, path, resp.status)
        assert str(status) in DOC["paths"][path][method]["responses"], (method, path, status)
        conforms(await resp.json(), "ErrorBody")
    assert (await c.delete("/streams/doc-1", headers=AUTH)).status == 204


async def test_the_routes_open_without_a_token_are_the_ones_the_readme_names(
    h: Harness
) -> None:
    """The token policy is documented where operators read it: every route that answers
    without a token (documented ``needs the token`` False) is named in README's control
    API section as needing none, and answers 200 without one."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Control API", 1)[1].split("###", 1)[0]
    policy = section.split("need none", 1)[0]
    open_routes = {p for m, p, _, auth, *_ in OPERATIONS if not auth}
    assert open_routes == set(re.findall(r"`(/[a-z.]+)`", policy)), policy
    for path in sorted(open_routes):
        assert (await h.client.get(path)).status == 200, path
