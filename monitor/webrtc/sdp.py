"""SDP handling of the WHIP endpoint, with aiortc's SDP parser (``aiortc.sdp``), never
line surgery.

* :func:`parse_offer` checks a publisher's offer before a peer connection sees it:
  every malformed offer raises :class:`BadOffer` (a 400 for the client), including
  those aiortc's parser fails on with ``StopIteration`` (an ``a=fmtp`` for a
  payload type the ``m=`` line lacks), which inside a
  coroutine would surface as a ``RuntimeError``.
* :func:`answer_as_dtls_server` makes the answer say ``a=setup:passive`` to an
  ``actpass`` offer: aiortc as DTLS *client* offers only ECDHE-ECDSA suites, so
  a publisher with an RSA certificate (GStreamer's webrtcbin) shares none and the
  handshake fails; as DTLS *server* aiortc presents its ECDSA certificate and
  accepts any client certificate whose fingerprint matches the offer.
* :func:`with_bitrate_hints` adds ``x-google-start-bitrate`` and
  ``x-google-min-bitrate`` to every video codec of an answer (VP8 included, which
  has no ``a=fmtp`` line of its own).
"""

from __future__ import annotations

import logging

from aiortc import RTCPeerConnection
from aiortc import sdp as aiosdp

log = logging.getLogger("monitor.whip")

RTX_MIME = "video/rtx"


class BadOffer(ValueError):
    """An SDP offer that cannot be used; the message says why, for the publisher."""


def parse_offer(text: str) -> aiosdp.SessionDescription:
    """Parse and check an offer: SDP, a video section, ICE credentials and a DTLS
    fingerprint (RFC 8829). Raises :class:`BadOffer` with the reason."""
    if not text.startswith("v=0"):
        raise BadOffer("the body is not an SDP offer (must start v=0)")
    # SDP values never hold control characters (RFC 8866 section 9); aiortc accepts some
    # (a NUL after the c= address) and then fails re-serialising the offer it stored
    for number, line in enumerate(text.split("\n"), start=1):
        bad = next((c for c in line.rstrip("\r") if (ord(c) < 0x20 and c != "\t")
                    or c == "\x7f"), None)
        if bad is not None:
            raise BadOffer(f"line {number} of the offer holds a control character "
                           f"(U+{ord(bad):04X})")
    try:
        desc = aiosdp.SessionDescription.parse(text)
    # aiortc's parser reports malformed lines with ValueError, KeyError, IndexError,
    # bare asserts, and StopIteration (an attribute for a payload type the m= line lacks)
    except StopIteration as exc:
        raise BadOffer(
            "an a=fmtp line names a payload type its m= line does not list"
        ) from exc
    except (ValueError, KeyError, IndexError, TypeError, AssertionError) as exc:
        raise BadOffer(f"the SDP offer cannot be parsed: {exc or type(exc).__name__}") from exc
    video = [m for m in desc.media if m.kind == "video"]
    if not video:
        raise BadOffer("the offer has no video section")
    for m in video:
        if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
            raise BadOffer("the offer lacks a=ice-ufrag / a=ice-pwd (RFC 8829)")
        if m.dtls is None or not m.dtls.fingerprints:
            raise BadOffer("the offer lacks a=fingerprint or a=setup (RFC 8829)")
    return desc


def answer_as_dtls_server(pc: RTCPeerConnection) -> None:
    """After ``setRemoteDescription(offer)``: where the offer left the DTLS role open
    (``actpass``), take the server role, so the answer says ``a=setup:passive``.

    An offer that chose a role (``active`` / ``passive``) is answered as aiortc
    decided. Uses aiortc's transport role (``_role``/``_set_role``): aiortc has no
    public setting for it (checked with aiortc 1.16).
    """
    offer = aiosdp.SessionDescription.parse(pc.remoteDescription.sdp)
    if any(m.dtls is None or m.dtls.role != "auto" for m in offer.media):
        return  # the offerer chose its role: aiortc takes the other one
    for tr in pc.getTransceivers():
        transport = tr.receiver.transport
        if not hasattr(transport, "_set_role"):  # another aiortc: answer as it decides
            log.warning("aiortc has no DTLS role setting; answering a=setup:active")
            return
        if getattr(transport, "_role", None) == "auto":
            transport._set_role("server")


def with_bitrate_hints(sdp: str, start_kbps: int) -> str:
    """``sdp`` with ``x-google-start-bitrate=start_kbps`` and ``x-google-min-bitrate``
    (half) on every video codec but RTX.

    aiortc's congestion feedback keeps a browser sender near 0.2-0.5 Mbps, after
    which Chromium halves the resolution; the hint keeps full size and rate.
    ``start_kbps <= 0`` returns ``sdp`` unchanged.
    """
    if start_kbps <= 0:
        return sdp
    desc = aiosdp.SessionDescription.parse(sdp)
    for m in desc.media:
        if m.kind != "video":
            continue
        for codec in m.rtp.codecs:
            if codec.mimeType.lower() != RTX_MIME:
                codec.parameters["x-google-start-bitrate"] = start_kbps
                codec.parameters["x-google-min-bitrate"] = start_kbps // 2
    return str(desc)
