"""Parsing of the Redis URLs :mod:`monitor.redis_conn` takes (its docstring lists the
forms): one server, Sentinel (``redis+sentinel://``), Cluster (``redis+cluster://``).
Errors are :class:`~monitor.errors.ConfigError` and never quote the credentials.
Base module: imports nothing of restrav-monitor but the error tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError

SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
"""URL schemes of Redis Sentinel (the second with TLS)."""

CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
"""URL schemes of Redis Cluster (the second with TLS)."""

PLAIN_SCHEMES = frozenset({"redis", "rediss", "unix"})
"""URL schemes of one Redis server."""

DEFAULT_SENTINEL_PORT = 26379
DEFAULT_CLUSTER_PORT = 6379

_TLS_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password", "sentinel_tls"})
_CERT_REQS = frozenset({"required", "optional", "none"})
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _credentials(username: str | None, password: str | None, tls: bool,
                 tls_options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """redis-py connection arguments for a user, a password and TLS (each if set)."""
    out: dict[str, Any] = {}
    if username is not None:
        out["username"] = username
    if password is not None:
        out["password"] = password
    if tls:
        out["ssl"] = True
        out.update(tls_options)
    return out


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL. ``repr`` never shows the passwords."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False
    sentinel_tls: bool = False
    tls_options: tuple[tuple[str, Any], ...] = ()

    def data_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the data nodes (primary, replicas)."""
        return {"db": self.db,
                **_credentials(self.username, self.password, self.tls, self.tls_options)}

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the sentinels (timeouts added by the caller)."""
        return _credentials(self.sentinel_username, self.sentinel_password,
                            self.sentinel_tls, self.tls_options)


@dataclass(frozen=True)
class ClusterTarget:
    """A parsed ``redis+cluster://`` URL. ``repr`` never shows the password."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_options: tuple[tuple[str, Any], ...] = ()

    def node_kwargs(self) -> dict[str, Any]:
        """Connection arguments for every node."""
        return _credentials(self.username, self.password, self.tls, self.tls_options)


def _bad(what: str) -> ConfigError:
    return ConfigError(f"redis URL: {what}")


def _host_port(item: str, default_port: int, what: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port); ``what`` names the
    node kind in errors (``sentinel``, ``cluster node``)."""
    if not item:
        raise _bad(f"an empty {what} address (two commas in a row?)")
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad(f"a {what}'s IPv6 address must be written [addr]:port")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise _bad(f"a {what} address without a host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(f"{what} port {port_text!r} is not a port number")
    return host, int(port_text)


@dataclass(frozen=True)
class _Parts:
    """A multi-host URL split by hand (urlsplit would choke on ``h1:1,h2:2`` as a port)."""

    tls: bool
    username: str | None
    password: str | None = field(repr=False)
    hosts: list[str]
    path: list[str]
    options: dict[str, str]


def _split(url: str, schemes: frozenset[str]) -> _Parts | None:
    """``url`` split into its parts when its scheme is one of ``schemes`` (the TLS one
    starts with ``rediss``), else None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        return None
    rest, _, query = rest.partition("?")
    if "#" in query or "#" in rest:
        raise _bad(f"a fragment (#) has no meaning in a {scheme.lower()} URL")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user_text, colon, pw_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(pw_text) if colon else None
        if not colon and username is not None:
            # "user@host": redis-py reads a lone userinfo as the password (legacy AUTH)
            password, username = username, None
    parts = [unquote(p) for p in path.split("/")] if slash else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    return _Parts(scheme.lower().startswith("rediss"), username, password,
                  hosts.split(","), parts, options)


def _tls_options(options: dict[str, str], allowed: frozenset[str]) -> tuple[tuple[str, Any], ...]:
    """The TLS query options, checked; unknown options (not in ``allowed``) refused."""
    unknown = set(options) - allowed
    if unknown:
        valid = ", ".join(sorted(allowed))
        raise _bad(f"unknown option(s) {', '.join(sorted(unknown))}; valid: {valid}")
    out: list[tuple[str, Any]] = []
    for key in sorted(_TLS_OPTIONS & set(options)):
        value: Any = options[key]
        if key == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise _bad(f"ssl_cert_reqs must be one of {', '.join(sorted(_CERT_REQS))}")
        if key == "ssl_check_hostname":
            value = _flag(key, value)
        out.append((key, value))
    return tuple(out)


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The sentinel target a ``redis+sentinel://`` or ``rediss+sentinel://`` URL names;
    None for any other scheme. Raises :class:`ConfigError` (credentials never quoted)
    when the URL is malformed or holds an unknown query option."""
    p = _split(url, SENTINEL_SCHEMES)
    if p is None:
        return None
    sentinels = tuple(_host_port(h, DEFAULT_SENTINEL_PORT, "sentinel") for h in p.hosts)
    parts = p.path
    if not parts or not parts[0]:
        raise _bad("a sentinel URL must name the service: redis+sentinel://HOST:PORT/SERVICE")
    if len(parts) > 2:
        raise _bad("a sentinel URL's path is /SERVICE or /SERVICE/DB")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise _bad(f"database {parts[1]!r} is not a number")
        db = int(parts[1])
    options = p.options
    tls_options = _tls_options(options, _TLS_OPTIONS | _SENTINEL_OPTIONS)
    sentinel_tls = _flag("sentinel_tls", options["sentinel_tls"]) if (
        "sentinel_tls" in options) else p.tls
    if tls_options and not (p.tls or sentinel_tls):
        raise _bad("TLS options need rediss+sentinel:// or sentinel_tls=true")
    return SentinelTarget(
        sentinels=sentinels,
        service=parts[0],
        db=db,
        username=p.username,
        password=p.password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        tls=p.tls,
        sentinel_tls=sentinel_tls,
        tls_options=tls_options,
    )


def parse_cluster_url(url: str) -> ClusterTarget | None:
    """The cluster a ``redis+cluster://`` or ``rediss+cluster://`` URL names; None for
    any other scheme. Raises :class:`ConfigError` (credentials never quoted) when the
    URL is malformed or holds an unknown query option."""
    p = _split(url, CLUSTER_SCHEMES)
    if p is None:
        return None
    nodes = tuple(_host_port(h, DEFAULT_CLUSTER_PORT, "cluster node") for h in p.hosts)
    if p.path and p.path != ["0"]:
        raise _bad("a cluster has only database 0: a cluster URL has no path")
    tls_options = _tls_options(p.options, _TLS_OPTIONS)
    if tls_options and not p.tls:
        raise _bad("TLS options need rediss+cluster://")
    return ClusterTarget(nodes=nodes, username=p.username, password=p.password, tls=p.tls,
                         tls_options=tls_options)


def _flag(key: str, value: str) -> bool:
    try:
        return _BOOLS[value.lower()]
    except KeyError:
        raise _bad(f"{key} must be true or false") from None


def check_redis_url(url: str) -> None:
    """Raise :class:`ConfigError` unless ``url`` is a Redis URL this module can connect
    to (scheme, and for Sentinel and Cluster the whole form). Never quotes credentials."""
    if parse_sentinel_url(url) is not None or parse_cluster_url(url) is not None:
        return
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in PLAIN_SCHEMES:
        every = PLAIN_SCHEMES | SENTINEL_SCHEMES | CLUSTER_SCHEMES
        schemes = ", ".join(f"{s}://" for s in sorted(every))
        raise _bad(f"unsupported scheme {scheme or '(none)'!r}; use one of {schemes}")


__all__ = [
    "CLUSTER_SCHEMES",
    "PLAIN_SCHEMES",
    "SENTINEL_SCHEMES",
    "ClusterTarget",
    "SentinelTarget",
    "check_redis_url",
    "parse_cluster_url",
    "parse_sentinel_url",
]
