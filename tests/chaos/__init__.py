"""Fault-injection scenarios with real processes (run with ``./scripts/test.sh -m chaos``).

Every scenario is bounded in count and time, prints its figure, and is recorded in RELIABILITY.md.
"""
