"""Which replica should run which live stream: a pure plan from one snapshot.

Contract (every replica computes :func:`plan` from its own snapshot of Redis
and acts only on its own part; the leases make conflicting acts harmless: two
replicas can never both acquire a stream):

* Live replicas are those with a heartbeat that are not draining. A replica's
  load is the number of leases it holds; its free capacity is capacity - load.
* Unowned streams (no lease) go, one by one in id order, to the live replica
  with the most free capacity (ties: by name); none goes to a full replica.
* Rebalance: each live replica has a target, its fair share by the same rule
  (:func:`targets`: equal capacities give an even split; the ones already
  holding more get the remainder, so the split needs the fewest moves). A replica
  above its target releases at most ``max_moves`` streams per interval (the
  ones it started last); they become unowned and go to the replica with the
  most free capacity. Repeated, this converges to loads within one stream of
  even (equal capacities) without any stream being owned twice.
* A draining replica acquires nothing and is handled by its own drain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .leases import ReplicaInfo


@dataclass
class Plan:
    """What one replica should do this interval."""

    acquire: list[str] = field(default_factory=list)
    release: list[str] = field(default_factory=list)
    targets: dict[str, int] = field(default_factory=dict)


def targets(
    replicas: Sequence[ReplicaInfo], loads: Mapping[str, int], total: int
) -> dict[str, int]:
    """The fair share of each replica: ``total`` streams handed out one by one to the
    replica with the most free capacity (ties: the one holding more now, so that the
    split needs the fewest moves; then by name). Equal capacities: an even split."""
    out = {r.name: 0 for r in replicas}
    cap = {r.name: r.capacity for r in replicas}
    for _ in range(total):
        best = max(sorted(out), key=lambda n: (cap[n] - out[n], loads.get(n, 0)))
        if cap[best] - out[best] <= 0:
            break
        out[best] += 1
    return out


def plan(
    me: str,
    replicas: Sequence[ReplicaInfo],
    owners: Mapping[str, str | None],
    mine_newest_first: Sequence[str],
    max_moves: int,
) -> Plan:
    """The plan of replica ``me`` for this interval.

    ``owners``: every desired stream -> the replica holding its lease (None: free).
    ``mine_newest_first``: the streams ``me`` holds, most recently acquired first
    (the ones released first when above target).
    """
    live = [r for r in replicas if not r.draining]
    names = {r.name for r in live}
    out = Plan()
    if me not in names:
        return out
    loads = {n: 0 for n in names}
    for owner in owners.values():
        if owner in loads:
            loads[owner] += 1
    free = {r.name: r.capacity - loads[r.name] for r in live}
    for sid in sorted(s for s, o in owners.items() if o is None):
        best = max(sorted(free), key=lambda n: free[n])
        if free[best] <= 0:
            break
        free[best] -= 1
        if best == me:
            out.acquire.append(sid)
    out.targets = targets(live, loads, len(owners))
    excess = loads[me] - out.targets[me]
    if excess > 0 and not out.acquire:
        out.release = list(mine_newest_first[: min(max_moves, excess)])
    return out
