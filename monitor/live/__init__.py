"""``restrav serve``: the engine (one device worker micro-batching every stream), stream
tasks, the stream manager and its desired set in Redis, alerts, the evidence kept for
them (``evidence/``), sinks (``sinks/``), the
control API and OpenAPI, the live feed and the operator page (``static/``). May use
``core``, ``media`` and the base; never ``cluster`` or ``webrtc``, which build on it.

``desired`` lives here, not in ``cluster``: the single-replica stream manager keeps the
desired set too (``service`` imports it)."""
