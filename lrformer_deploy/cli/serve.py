"""lrformer-serve: serve a model on a real Triton server (HTTP + gRPC) from Python, via NVIDIA PyTriton."""
from __future__ import annotations

import signal
import socket
import sys
import time

from lrformer_deploy.errors import UserError, cli_entry
from lrformer_deploy.cli.common import OneLineParser, parse_pixels
from lrformer_deploy.contract import MAX_PIXELS_SERVE


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="lrformer-serve", description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help=".onnx, .engine or manifest .json (default: the demo model)")
    p.add_argument("--name", help="Triton model name (default: <manifest name>_frames, as in lrformer-triton's repository)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind HTTP/gRPC to (default 127.0.0.1; 0.0.0.0 = all)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (default: off)")
    p.add_argument("--max-batch", type=int, default=8, help="dynamic batcher's max_batch_size (default 8)")
    p.add_argument("--instances", type=int, default=1,
                   help="model instances, each with its own Segmenter (default 1)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per instance (default: cores / instances)")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "openvino", "tensorrt"), default="auto")
    p.add_argument("--device", help="auto, cpu, cuda[:N] or tensorrt (ONNX Runtime provider), as lrformer-infer")
    p.add_argument("--resize", choices=("stretch", "keep-ratio"), default="stretch")
    p.add_argument("--max-pixels", type=parse_pixels, default=MAX_PIXELS_SERVE, metavar="N",
                   help=f"refuse frames with more pixels than this, from the tensor's shape or the image header, "
                        f"before decoding (N or WxH; default {MAX_PIXELS_SERVE} = 4096x4096; 0 = no limit)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def _check_port(host: str, port: int, flag: str) -> None:
    if not 1 <= port <= 65535:
        raise UserError(f"{flag} {port} is not a port number (1-65535)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}") from None


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("max_batch", "instances"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    ports = [("--http-port", args.http_port), ("--grpc-port", args.grpc_port)]
    if args.metrics_port is not None:
        ports.append(("--metrics-port", args.metrics_port))
    if len({p for _, p in ports}) != len(ports):
        raise UserError("the HTTP, gRPC and metrics ports must differ")
    for flag, port in ports:
        _check_port(args.host, port, flag)
    from lrformer_deploy.runtime.spec import resolve_model
    from lrformer_deploy.triton.serve import Server, require_pytriton

    require_pytriton()
    if args.model is not None:
        resolve_model(args.model)  # a missing or unsupported file fails before the server starts

    # A server started in the background by a script inherits an ignored SIGINT; Ctrl-C must still stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = Server(args.model, name=args.name, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                    metrics_port=args.metrics_port, max_batch=args.max_batch, instances=args.instances,
                    backend=args.backend, device=args.device, resize=args.resize, threads=args.threads,
                    max_pixels=args.max_pixels)
    try:
        server.start()
        if not args.quiet:
            seg = server.segmenters[0]
            print(f"serving {server.name} ({seg.backend_name}, input {seg.input_size[0]}x{seg.input_size[1]}, "
                  f"max batch {args.max_batch}, {args.instances} instance(s)) on http://{args.host}:{args.http_port} "
                  f"and grpc {args.host}:{args.grpc_port}; started in {server.start_seconds:.1f} s; Ctrl-C stops",
                  file=sys.stderr, flush=True)
        while server.is_alive():
            time.sleep(0.5)
        raise UserError(server.failure_line("stopped unexpectedly", None, server.failure_cause(), server.keep_log()))
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
