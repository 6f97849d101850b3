"""WebRTC: the WHIP endpoint (``whip``), its join to the stream manager and the
service (``hub``), its publisher sessions (``sessions``) and SDP
handling (``sdp``), aiortc tracks as live sources (``tracks``) and the WHEP pull
client (``whep``). Builds on ``live`` (a WHIP
publisher feeds a stream of the stream manager) and everything below it."""
