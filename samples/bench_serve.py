"""Frames/s through lrformer-serve (a real Triton server) vs the same Segmenter in-process, one run.

    python samples/bench_serve.py                          # demo model, car-detection.mp4, 60 frames
    python samples/bench_serve.py --model m.json --frames 120 --clients 1 4 8 --protocol grpc --instances 2

Order: the Segmenter alone on the frames (in this process, before any server exists), then
`lrformer-serve` is started as a subprocess (its start time = spawn until the model answers ready),
then the same frames are sent by 1, then N concurrent clients (each frame once, split between the
clients), then the server is stopped. Prints frames/s, request latency p50/p95, the ratio to
in-process throughput and the load average (the machine may be shared: compare within one run only).
Needs the serve extra.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "car-detection.mp4"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_frames(video: Path, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        sys.exit(f"error: cannot read frames from {video}")
    return frames


def percentiles(latencies: list[float]) -> dict:
    ms = np.asarray(latencies) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def in_process(model, frames, threads) -> dict:
    from lrformer_deploy.runtime import Segmenter

    with Segmenter(model, intra_op_threads=threads) as seg:
        seg(frames[0])  # warm-up
        lat = []
        t0 = time.perf_counter()
        for f in frames:
            t = time.perf_counter()
            seg(f)
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
    return {"frames_per_s": round(len(frames) / wall, 2), **percentiles(lat)}


def through_server(url: str, stats_url: str, protocol: str, name: str, frames, clients: int) -> dict:
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc

    def request(client, frame):
        inp = tc.InferInput("frame", [1, *frame.shape], "UINT8")
        inp.set_data_from_numpy(frame[None])
        return client.infer(name, [inp]).as_numpy("mask")

    lat: list[float] = []
    lock = threading.Lock()
    shares = [frames[i::clients] for i in range(clients)]
    ready = threading.Barrier(clients + 1)

    def loop(share):
        client = tc.InferenceServerClient(url)  # HTTP clients are gevent-based: one per thread, made there
        request(client, frames[0])  # warm-up
        ready.wait()
        mine = []
        for f in share:
            t = time.perf_counter()
            request(client, f)
            mine.append(time.perf_counter() - t)
        client.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=loop, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stats = None
    try:
        import tritonclient.http as th

        s = th.InferenceServerClient(stats_url).get_inference_statistics(name)["model_stats"][0]
        if s:
            stats = {"inferences": int(s["inference_count"]), "executions": int(s["execution_count"])}
    except Exception:  # statistics are informative only
        pass
    return {"clients": clients, "frames_per_s": round(len(frames) / wall, 2), **percentiles(lat),
            "server_totals": stats}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model for both sides (default: the demo model)")
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores, both sides)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from lrformer_deploy.runtime.segmenter import default_model_path

    model = Path(args.model) if args.model else default_model_path()
    frames = read_frames(Path(args.video), args.frames)
    load_before = os.getloadavg()
    base = in_process(model, frames, args.threads)

    http, grpc = free_port(), free_port()
    cmd = [sys.executable, "-m", "lrformer_deploy.cli.serve", str(model), "--http-port", str(http), "--grpc-port",
           str(grpc), "--instances", str(args.instances), "--max-batch", str(args.max_batch), "--quiet"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    import tritonclient.http as th

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    results = []
    try:
        probe = th.InferenceServerClient(f"127.0.0.1:{http}")
        from lrformer_deploy.runtime.spec import resolve_model

        resolved = resolve_model(model)
        name = f"{resolved.spec.name if resolved.spec else model.stem}_frames"
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                sys.exit(f"error: lrformer-serve exited: {proc.stderr.read()}")
            try:
                if probe.is_model_ready(name):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                sys.exit("error: the server did not get ready in 180 s")
            time.sleep(0.1)
        start_s = time.perf_counter() - t0
        url = f"127.0.0.1:{http if args.protocol == 'http' else grpc}"
        for clients in args.clients:
            r = through_server(url, f"127.0.0.1:{http}", args.protocol, name, frames, clients)
            r["ratio_to_in_process"] = round(r["frames_per_s"] / base["frames_per_s"], 3)
            results.append(r)
    finally:
        probe.close()
        t1 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        stop_s = time.perf_counter() - t1
    report = {"model": str(model), "frames": len(frames), "frame_size": list(frames[0].shape[:2]),
              "protocol": args.protocol, "instances": args.instances, "max_batch": args.max_batch,
              "in_process": base, "server_start_s": round(start_s, 2), "server_stop_s": round(stop_s, 2),
              "server": results, "loadavg_before": [round(v, 2) for v in load_before],
              "loadavg_after": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {model.name}, {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, {args.protocol}, "
          f"{args.instances} instance(s), load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"in-process Segmenter: {base['frames_per_s']:7.2f} frames/s  p50 {base['p50_ms']} ms  p95 {base['p95_ms']} ms")
    print(f"server start {start_s:.2f} s (spawn -> model ready), stop {stop_s:.2f} s")
    for r in results:
        print(f"server, {r['clients']} client(s): {r['frames_per_s']:7.2f} frames/s  p50 {r['p50_ms']} ms  "
              f"p95 {r['p95_ms']} ms  ratio {r['ratio_to_in_process']:.3f}  {r['server_totals']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
