"""Frame sources: each an async ``recv() -> Frame`` plus ``aclose()`` (see monitor.types)."""
