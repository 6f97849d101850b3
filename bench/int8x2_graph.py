"""The int8x2 scheme as a real ONNX Runtime graph: speed and drift beside float32.

bench/precision_schemes.py found that int8 weights (per output channel) with each
activation carried in two int8 parts (the second quantises the first's residual, per
token) keep the features within 1 % (emulated). This rewrites the exported float32
graph (monitor.core.graphs.export_onnx) so that every MatMul with a constant weight
runs as two ``MatMulInteger`` (uint8 activations with zero point 128, int8 weights,
int32 sums) scaled back to float32 and added; everything else stays float32. It then
times the bare forward of eager torch float32, ONNX Runtime float32 and ONNX Runtime
int8x2 round-robin, and measures the drift of int8x2 against torch float32 on the shared
clips (monitor.core.backends.feature_drift).

Usage: python -m bench.int8x2_graph [--every 3] [--threads 2] [--batch 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from bench.bench_backends import CLIPS, cpu_line, window_frames
from bench.bench_cpu_paths import loadavg
from bench.common import random_backbone_dir, table, timed, window_features_of
from monitor.core.backbone import load_backbone
from monitor.core.backends import feature_drift
from monitor.core.classifier import load_classifier
from monitor.core.embed import Embedder, preprocess
from monitor.core.graphs import export_onnx
from monitor.core.published import resolve_classifier_ref


def int8x2(onnx_bytes: bytes) -> tuple[bytes, int]:
    """The graph with every constant-weight MatMul split into two int8 matmuls; (bytes,
    MatMuls rewritten)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes: list[Any] = []
    done = 0

    def const(name: str, value: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(value, name))
        return name

    const("x2_127", np.array(127.0, np.float32))
    const("x2_128", np.array(128.0, np.float32))
    const("x2_tiny", np.array(1e-30, np.float32))
    const("x2_zp", np.array(128, np.uint8))
    for node in g.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)  # (K, N)
        sw = np.maximum(np.abs(w).max(axis=0), 1e-30) / 127.0  # per output channel
        p = f"x2_{done}"
        wq = const(p + "_wq", np.clip(np.round(w / sw), -127, 127).astype(np.int8))
        swn = const(p + "_sw", sw.astype(np.float32))
        x, y = node.input[0], node.output[0]

        def part(src: str, k: int, p: str = p, wq: str = wq, swn: str = swn) -> list[Any]:
            """Quantise ``src`` per token (last axis) and multiply: outputs
            ``{p}_y{k}`` (float32 product) and ``{p}_d{k}`` (the dequantised input)."""
            q = f"{p}_{k}"
            return [
                helper.make_node("Abs", [src], [q + "_abs"]),
                helper.make_node("ReduceMax", [q + "_abs"], [q + "_max"], axes=[-1],
                                 keepdims=1),
                helper.make_node("Div", [q + "_max", "x2_127"], [q + "_s0"]),
                helper.make_node("Max", [q + "_s0", "x2_tiny"], [q + "_s"]),
                helper.make_node("Div", [src, q + "_s"], [q + "_r"]),
                helper.make_node("Round", [q + "_r"], [q + "_q"]),
                helper.make_node("Mul", [q + "_q", q + "_s"], [f"{p}_d{k}"]),
                helper.make_node("Add", [q + "_q", "x2_128"], [q + "_u"]),
                helper.make_node("Cast", [q + "_u"], [q + "_u8"], to=TensorProto.UINT8),
                helper.make_node("MatMulInteger", [q + "_u8", wq, "x2_zp"], [q + "_i"]),
                helper.make_node("Cast", [q + "_i"], [q + "_f"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [q + "_f", q + "_s"], [q + "_fs"]),
                helper.make_node("Mul", [q + "_fs", swn], [f"{p}_y{k}"]),
            ]

        nodes += part(x, 1)
        nodes.append(helper.make_node("Sub", [x, f"{p}_d1"], [p + "_res"]))
        nodes += part(p + "_res", 2)
        nodes.append(helper.make_node("Add", [f"{p}_y1", f"{p}_y2"], [y]))
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain in ("", "ai.onnx") and o.version >= 13 for o in model.opset_import):
        raise RuntimeError("expected opset >= 13")
    # ReduceMax takes axes as an attribute up to opset 17
    return model.SerializeToString(), done


def session(data: bytes, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def runner(sess: Any) -> Any:
    def run(px: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {"pixels": px.contiguous().numpy()})[0])

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_line()}; threads {args.threads}; load at start {loadavg()}")
    bb = load_backbone(str(random_backbone_dir("vits14")), "cpu")
    fp32 = export_onnx(bb)
    x2, n = int8x2(fp32)
    print(f"int8x2: {n} MatMuls rewritten")
    embs = {
        "torch float32": Embedder(bb, batch_size=args.batch),
        "onnxruntime float32": Embedder(bb, batch_size=args.batch,
                                        runner=runner(session(fp32, args.threads))),
        "onnxruntime int8x2": Embedder(bb, batch_size=args.batch,
                                       runner=runner(session(x2, args.threads))),
    }
    clips = sorted(p for p in CLIPS.iterdir() if p.suffix in (".mp4", ".avi", ".gif"))
    wins = [window_frames(p) for p in clips[:: args.every]]
    px = preprocess(wins[0][: args.batch], 224, "cpu")
    times: dict[str, list[float]] = {k: [] for k in embs}
    for r in range(args.rounds):
        for name, emb in embs.items():
            per, _ = timed(lambda e=emb: e.forward(px), torch.device("cpu"), args.seconds,
                           warmup=1 if r == 0 else 0)
            times[name].append(per)
    clf_dir = resolve_classifier_ref(None)
    assert clf_dir is not None
    clf = load_classifier(clf_dir)
    ref, zr = window_features_of(embs["torch float32"], wins, clf.zero_step_angle_deg)
    pr = clf.predict_proba(ref)
    base = args.batch / float(np.median(times["torch float32"]))
    rows = []
    for name, emb in embs.items():
        fps = args.batch / float(np.median(times[name]))
        f, zs = (ref, zr) if name == "torch float32" else window_features_of(
            emb, wins, clf.zero_step_angle_deg)
        d = feature_drift(f, ref)
        step = np.concatenate([
            np.linalg.norm(np.diff(z, axis=0) - np.diff(q, axis=0), axis=1)
            / np.maximum(np.linalg.norm(np.diff(q, axis=0), axis=1), 1e-12)
            for z, q in zip(zs, zr)])
        rows.append([name, f"{fps:.2f}", f"{fps / base:.2f}x", f"{d.max():.2g}",
                     f"{float(np.abs(clf.predict_proba(f) - pr).max()):.3g}",
                     f"{np.median(step):.2g}"])
    print(f"\nbatch {args.batch}, {args.rounds} round-robin rounds (median); drift on "
          f"{len(wins)} shared clips' centre windows")
    print(table(["runtime mode", "frames/s", "vs torch float32", "drift", "max dP(AI)",
                 "step rel. err (median)"], rows))
    print(f"\n(load at the end: {loadavg()})")


if __name__ == "__main__":
    main()
