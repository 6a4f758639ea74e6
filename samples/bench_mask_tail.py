"""ONNX Runtime CPU cost of the mask head's two tails (NCHW for TensorRT, NHWC for CPUs).

    python samples/bench_mask_tail.py                   # LRFormer-T 512x512 ADE20K (150 classes) and the demo model
    python samples/bench_mask_tail.py --threads 1 --rounds 30

The tail is what the exporter appends to the stride-8 logits of a mask graph: bilinear Resize to the
input size, ArgMax over classes, Cast to int32 (lrformer_deploy.model.lrformer.logits_to_mask, exported the
same way as in a full graph). The NHWC form is made from it by the exporter's own rewrite
(export_onnx.channels_last_mask_tail). Both run on the same random logits in interleaved rounds; the
masks are checked equal. Prints median ms per tail and the ratio. Not a test: nothing is asserted
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime intra-op threads (default: all)")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()

    import onnx
    import onnxruntime as ort

    from lrformer_deploy.build.export import channels_last_mask_tail, mask_tail_layout

    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, "
          f"{args.threads} thread(s), onnxruntime {ort.__version__}")
    print(f"{'case':<20} {'nchw ms':>9} {'nhwc ms':>9} {'nchw/nhwc':>10}  masks equal")
    with tempfile.TemporaryDirectory() as tmp:
        for label, classes, size in CASES:
            nchw = tail_graph(classes, size, Path(tmp))
            proto = onnx.load(str(nchw))
            assert mask_tail_layout(proto) == "nchw" and channels_last_mask_tail(proto)
            nhwc = nchw.with_name(nchw.stem + "-nhwc.onnx")
            onnx.save(proto, str(nhwc))
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            sessions = {t: ort.InferenceSession(str(g), so, providers=["CPUExecutionProvider"])
                        for t, g in (("nchw", nchw), ("nhwc", nhwc))}
            x = np.random.default_rng(0).standard_normal((1, classes, size[0] // 8, size[1] // 8)).astype(np.float32)
            masks = {t: s.run(None, {"logits": x})[0] for t, s in sessions.items()}  # also the warm-up
            times: dict[str, list[float]] = {t: [] for t in sessions}
            for r in range(args.rounds):
                for t in (("nchw", "nhwc") if r % 2 == 0 else ("nhwc", "nchw")):
                    t0 = time.perf_counter()
                    sessions[t].run(None, {"logits": x})
                    times[t].append((time.perf_counter() - t0) * 1000)
            med = {t: statistics.median(v) for t, v in times.items()}
            print(f"{label:<20} {med['nchw']:>9.1f} {med['nhwc']:>9.1f} {med['nchw'] / med['nhwc']:>10.2f}  "
                  f"{np.array_equal(masks['nchw'], masks['nhwc'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
