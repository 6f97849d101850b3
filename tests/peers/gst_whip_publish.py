"""A GStreamer webrtcbin WHIP publisher, run with the system python3 and gi (not the venv).

    /usr/bin/python3 tests/peers/gst_whip_publish.py URL TOKEN SECONDS [--codec vp8|h264]

Sends ``videotestsrc`` (320x240, 25 fps) to ``URL`` with a normal ``a=setup:actpass``
offer (webrtcbin's own, ICE candidates gathered before the POST, no trickle), applies the
answer and publishes for SECONDS, then DELETEs the session. Prints one line per event
(``status 201``, ``dtls connected``, ``ice ...``) and exits 0 when the DTLS transport
reached ``connected``, 2 otherwise (3 when the POST was refused).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from urllib.parse import urljoin

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

ENCODERS = {
    "vp8": "vp8enc deadline=1 keyframe-max-dist=25 ! rtpvp8pay pt=96 ! "
           "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! "
            "video/x-h264,profile=constrained-baseline ! rtph264pay pt=102 config-interval=-1 ! "
            "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("token")
    ap.add_argument("seconds", type=float)
    ap.add_argument("--codec", choices=sorted(ENCODERS), default="vp8")
    ap.add_argument("--setup", choices=["actpass", "passive"], default="actpass",
                    help="the offer's a=setup (passive forces the answerer to be DTLS client)")
    args = ap.parse_args()
    Gst.init(None)
    pipe = Gst.parse_launch(
        "webrtcbin name=w bundle-policy=max-bundle "
        "videotestsrc is-live=true pattern=ball ! "
        "video/x-raw,width=320,height=240,framerate=25/1 ! videoconvert ! queue ! "
        f"{ENCODERS[args.codec]} ! w."
    )
    w = pipe.get_by_name("w")
    loop = GLib.MainLoop()
    state = {"dtls": "new", "location": None, "code": 2}

    def say(msg: str) -> None:
        print(msg, flush=True)

    def post_offer() -> bool:
        offer = w.get_property("local-description").sdp.as_text()
        offer = offer.replace("a=setup:actpass", f"a=setup:{args.setup}")
        req = urllib.request.Request(
            args.url, data=offer.encode(), method="POST",
            headers={"Content-Type": "application/sdp",
                     "Authorization": f"Bearer {args.token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = r.read().decode()
                state["location"] = urljoin(args.url, r.headers["Location"])
                say(f"status {r.status}")
        except urllib.error.HTTPError as exc:
            say(f"status {exc.code} {exc.read().decode(errors='replace')}")
            state["code"] = 3
            loop.quit()
            return False
        except (urllib.error.URLError, OSError) as exc:
            say(f"post failed: {exc}")
            state["code"] = 3
            loop.quit()
            return False
        _, msg = GstSdp.SDPMessage.new_from_text(answer)
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        w.emit("set-remote-description", desc, None)
        GLib.timeout_add(int(args.seconds * 1000), loop.quit)
        return False

    def on_gathering(*_: object) -> None:
        if w.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(post_offer)

    def on_offer(promise: Gst.Promise, _: object) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            say(f"no offer: {reply.to_string() if reply is not None else 'no reply'}")
            loop.quit()
            return
        w.emit("set-local-description", offer, None)

    def on_negotiation(*_: object) -> None:
        w.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, None))

    def watch_dtls() -> bool:
        tr = w.emit("get-transceiver", 0)
        if tr is not None and tr.get_property("receiver") is not None:
            transport = tr.get_property("receiver").get_property("transport")
            if transport is not None:
                s = transport.get_property("state").value_nick
                if s != state["dtls"]:
                    state["dtls"] = s
                    say(f"dtls {s}")
                    if s == "connected":
                        state["code"] = 0
        return True

    w.connect("on-negotiation-needed", on_negotiation)
    w.connect("notify::ice-gathering-state", on_gathering)
    w.connect("notify::ice-connection-state", lambda *_: say(
        f"ice {w.get_property('ice-connection-state').value_nick}"))
    GLib.timeout_add(100, watch_dtls)
    GLib.timeout_add(int((args.seconds + 30) * 1000), loop.quit)  # never hang
    pipe.set_state(Gst.State.PLAYING)
    loop.run()
    pipe.set_state(Gst.State.NULL)
    if state["location"]:
        req = urllib.request.Request(state["location"], method="DELETE",
                                     headers={"Authorization": f"Bearer {args.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                say(f"delete {r.status}")
        except (urllib.error.URLError, OSError) as exc:
            say(f"delete failed: {exc}")
    return int(state["code"])


if __name__ == "__main__":
    sys.exit(main())
