"""Who may call the control plane: named bearer tokens with roles.

Contract: :func:`named_tokens` lists the tokens of ``serve.api.tokens`` and the single
``serve.api.token`` (its file) as the operator token named ``operator``;
:func:`authorize` checks a request's ``Authorization: Bearer`` header against all of
them in constant time and answers 503 (no token configured: control plane off), 401
(missing or unknown token) or 403 (a ``viewer`` token on a change), else leaves the
caller's :class:`NamedToken` at ``request[PRINCIPAL_KEY]`` for the log line naming who
changed what. Token values are never logged, put in metrics or in Redis.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from ..config import ApiSettings


def _refusal(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@dataclass(frozen=True, slots=True)
class NamedToken:
    """A bearer token, its name (what logs show) and its role (``viewer``, ``operator``)."""

    name: str
    role: str
    secret: str


ROLES = ("viewer", "operator")
"""Roles from least to most: an operator may do what a viewer may."""


def named_tokens(settings: ApiSettings, token: str | None) -> tuple[NamedToken, ...]:
    """The named tokens of ``settings.tokens``, plus ``token`` (``serve.api.token`` or
    its file) as the operator token named ``operator`` unless that name is taken."""
    out = [NamedToken(name, t.role, t.token.get_secret_value().strip())
           for name, t in sorted(settings.tokens.items())]
    if token is not None and "operator" not in settings.tokens:
        out.append(NamedToken("operator", "operator", token))
    return tuple(out)


PRINCIPAL_KEY: web.RequestKey[NamedToken] = web.RequestKey("restrav_token", NamedToken)
"""Where :func:`authorize` leaves the caller's :class:`NamedToken` on the request."""


def authorize(request: web.Request, tokens: tuple[NamedToken, ...], role: str
              ) -> web.Response | None:
    """None when the request's bearer token is one of ``tokens`` with at least ``role``
    (the token is then at ``request[PRINCIPAL_KEY]``), else the response to send: 503
    without tokens, 401 for a missing or unknown token, 403 for a viewer's change. Every
    token is compared in constant time, all of them on every request."""
    if not tokens:
        return _refusal(
            503, "control_disabled",
            "the control API is disabled: set serve.api.token, token_file or tokens",
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given_b = given.strip().encode("utf-8", "replace")
    found: NamedToken | None = None
    for t in tokens:
        if hmac.compare_digest(given_b, t.secret.encode("utf-8")) and found is None:
            found = t
    if scheme.lower() != "bearer" or found is None:
        resp = _refusal(401, "unauthorized", "missing or wrong bearer token")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="restrav"'
        return resp
    if ROLES.index(found.role) < ROLES.index(role):
        return _refusal(403, "forbidden",
                          f"token {found.name!r} is a {found.role} token: {role} needed")
    request[PRINCIPAL_KEY] = found
    return None



__all__ = ["PRINCIPAL_KEY", "ROLES", "NamedToken", "authorize", "named_tokens"]
