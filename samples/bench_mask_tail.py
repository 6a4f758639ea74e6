"""CPU cost of the mask head's tails (NCHW for TensorRT, NHWC, and the top-K tail of CPU graphs) on
ONNX Runtime and, when installed, OpenVINO (f32).

    python samples/bench_mask_tail.py                   # LRFormer-T 512x512 ADE20K (150 classes) and the demo model
    python samples/bench_mask_tail.py --threads 1 --rounds 30

The tail is what the exporter appends to the stride-8 logits of a mask graph: bilinear Resize to the
input size, ArgMax over classes, Cast to int32 (lrformer_deploy.model.lrformer.logits_to_mask, exported the
same way as in a full graph). The NHWC form is made from it by the exporter's own rewrite
(export_onnx.channels_last_mask_tail), the top-K form by build/mask_tail.replace_with_topk_tail (what
`lrformer-export --target cpu` writes). All run on the same logits in interleaved rounds: random normal
logits (every class competes everywhere: the worst case for the top-K tail) and smooth ones (a few
regions, like a trained model's). Prints median ms per tail and backend, and the fraction of pixels equal
to the NCHW tail on ONNX Runtime. Not a test: nothing is asserted
about speed, numbers depend on the machine (give `uptime`'s load average with them).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# (label, classes, input size): LRFormer-T ADE20K at 512x512, and the demo model at the sample video's size.
CASES = [("T ade20k 512x512", 150, (512, 512)), ("demo 256x448", 6, (256, 448))]


def tail_graph(classes: int, size: tuple[int, int], folder: Path) -> Path:
    import torch

    from lrformer_deploy.build.export import _quiet_exporter
    from lrformer_deploy.model.lrformer import logits_to_mask

    class Tail(torch.nn.Module):
        def forward(self, logits):
            return logits_to_mask(logits, size)

    path = folder / f"tail-{classes}-{size[0]}x{size[1]}.onnx"
    logits = torch.zeros(1, classes, size[0] // 8, size[1] // 8)
    with _quiet_exporter():  # the exporter's narration, as lrformer-export silences it
        torch.onnx.export(Tail(), (logits,), dynamo=True, opset_version=17, input_names=["logits"],
                          output_names=["mask"]).save(str(path))
    return path


def smooth_logits(classes: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Stride-8 logits of a few large regions with soft boundaries, as a trained segmenter gives."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size[0] // 8, size[1] // 8
    coarse = rng.standard_normal((classes, max(2, h // 16), max(2, w // 16))).astype(np.float32) * 4
    return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC) for c in coarse])[None]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (default: all)")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()

    import onnx
    import onnxruntime as ort

    from lrformer_deploy.build.export import channels_last_mask_tail, mask_tail_layout
    from lrformer_deploy.build.mask_tail import replace_with_topk_tail
    from lrformer_deploy.runtime.backends import openvino_missing

    os.environ.setdefault("CI", "true")  # openvino-telemetry stays off
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, "
          f"{args.threads} thread(s), onnxruntime {ort.__version__}")
    tails = ("nchw", "nhwc", "topk")
    with tempfile.TemporaryDirectory() as tmp:
        for label, classes, size in CASES:
            paths = {"nchw": tail_graph(classes, size, Path(tmp))}
            for tail, rewrite in (("nhwc", channels_last_mask_tail), ("topk", replace_with_topk_tail)):
                proto = onnx.load(str(paths["nchw"]))
                assert mask_tail_layout(proto) == "nchw" and rewrite(proto)
                paths[tail] = paths["nchw"].with_name(f"{paths['nchw'].stem}-{tail}.onnx")
                onnx.save(proto, str(paths[tail]))
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            run = {}
            for t in tails:
                sess = ort.InferenceSession(str(paths[t]), so, providers=["CPUExecutionProvider"])
                run[f"ort {t}"] = (lambda s: lambda x: s.run(None, {"logits": x})[0])(sess)
            if openvino_missing() is None:
                from lrformer_deploy.runtime.backends.openvino import OpenVINORunner

                for t in tails:
                    runner = OpenVINORunner(paths[t], threads=args.threads, cache=False).activate()
                    run[f"ov {t}"] = (lambda r: lambda x: r.infer({"logits": x})["mask"])(runner)
            shape = (1, classes, size[0] // 8, size[1] // 8)
            inputs = {"random": np.random.default_rng(0).standard_normal(shape).astype(np.float32),
                      "smooth": smooth_logits(classes, size)}
            for kind, x in inputs.items():
                ref = run["ort nchw"](x)
                agree = {k: float((f(x) == ref).mean()) for k, f in run.items()}  # also the warm-up
                times: dict[str, list[float]] = {k: [] for k in run}
                names = list(run)
                for r in range(args.rounds):
                    shift = r % len(names)
                    for k in names[shift:] + names[:shift]:
                        t0 = time.perf_counter()
                        run[k](x)
                        times[k].append((time.perf_counter() - t0) * 1000)
                print(f"{label}, {kind} logits:")
                for k in names:
                    print(f"  {k:<10} {statistics.median(times[k]):8.1f} ms   pixels equal to ort nchw {agree[k]:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
