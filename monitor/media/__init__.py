"""Getting frames in: decoding (``decode`` and ``encode``, which writes evidence clips, are
the only modules that import PyAV), still images (``stills``, Pillow), safe
file opening, bounded URL fetches, the 11.5 Hz samplers, colour conversion, and the live
sources (``sources/``: file, RTSP/HTTP/HLS). May use the base only (types, errors, config,
metrics, keys, redaction, redis_faults)."""
