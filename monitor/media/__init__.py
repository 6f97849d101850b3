"""Getting frames in: decoding (``decode`` is the only module that imports PyAV), safe
file opening, bounded URL fetches, the 11.5 Hz samplers, colour conversion, and the live
sources (``sources/``: file, RTSP/HTTP/HLS). May use the base only (types, errors, config,
metrics, keys, redaction, redis_faults)."""
