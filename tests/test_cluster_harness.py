"""The Redis Cluster test harness (:mod:`tests.clusterproc`) survives a port taken
between choosing it and binding it: a CI run lost a cluster test that way ("cluster
node on port 10045 did not start")."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.clusterproc import ClusterSetup


@contextmanager
def stranger_on(port: int) -> Iterator[socket.socket]:
    """Something else listening on ``port`` (as any process on the machine may)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("which", ["client", "bus"])
def test_a_node_whose_port_was_taken_moves_to_another(tmp_path: Path, which: str) -> None:
    setup = ClusterSetup(tmp_path / "cluster", primaries=3)
    first = setup.ports[0]
    taken = first if which == "client" else first + 10000
    try:
        with stranger_on(taken):
            setup.start()
            assert first not in setup.ports  # moved, and the cluster came up without it
            assert len(set(setup.ports)) == 6
            assert setup.state(setup.ports[0]).get("cluster_state") == "ok"
            assert "Address already in use" in (tmp_path / "cluster" / f"node-{first}.log"
                                                ).read_text()
    finally:
        setup.stop()


def test_a_node_that_fails_otherwise_says_why(tmp_path: Path) -> None:
    setup = ClusterSetup(tmp_path / "cluster", primaries=3)
    setup.node_timeout_ms = -5  # redis-server refuses the configuration and exits
    try:
        said = r"(?s)did not start .*its log ends:.*cluster-node-timeout"
        with pytest.raises(RuntimeError, match=said):
            setup.start()
    finally:
        setup.stop()


def test_chosen_ports_never_collide_with_a_bus_port(tmp_path: Path) -> None:
    for _ in range(200):
        setup = ClusterSetup(tmp_path / "cluster", primaries=3)
        every = [q for p in setup.ports for q in (p, p + 10000)]
        assert len(every) == len(set(every)) == 12


def test_free_port_never_hands_out_a_port_twice() -> None:
    from tests.redisproc import free_port

    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
