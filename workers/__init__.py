"""Composition roots of restrav-monitor: parse settings, build the graph, own
signals and exit codes. The library (``monitor``) never does any of that."""
