"""lrformer-triton: write a Triton model repository for an exported model (its manifest)."""
from __future__ import annotations

import sys
from pathlib import Path

from lrformer_deploy.errors import UserError, cli_entry
from lrformer_deploy.cli.common import OneLineParser, parse_pixels
from lrformer_deploy.contract import MAX_PIXELS_SERVE


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="lrformer-triton", description=__doc__.splitlines()[0])
    p.add_argument("manifest", help="the manifest NAME.json that lrformer-export wrote beside the graph")
    p.add_argument("repository", help="model repository folder (created; models of other names are left alone)")
    p.add_argument("--name", help="Triton model name (default: the manifest's name)")
    p.add_argument("--frames-max-batch", type=int, default=8,
                   help="max_batch_size of the NAME_frames model's dynamic batcher (default 8)")
    p.add_argument("--instances", type=int, default=1, help="instances of the graph model per device (default 1)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads per instance (0 = default)")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "openvino", "tensorrt"), default="auto",
                   help="runtime backend of NAME_frames (default auto: the plan when TensorRT and a GPU are there, "
                        "OpenVINO for int8/bf16 artifacts on a CPU where installed)")
    p.add_argument("--resize", choices=("stretch", "keep-ratio"), default="stretch",
                   help="how NAME_frames fits frames to the graph's input (default stretch)")
    p.add_argument("--max-pixels", type=parse_pixels, default=MAX_PIXELS_SERVE, metavar="N",
                   help=f"NAME_frames refuses frames with more pixels than this, before decoding "
                        f"(N or WxH; default {MAX_PIXELS_SERVE} = 4096x4096; 0 = no limit)")
    return p


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    manifest = Path(args.manifest)
    if manifest.suffix.lower() != ".json":
        raise UserError(f"give the manifest (.json) written beside the graph, not {manifest.name}")
    if not manifest.is_file():
        raise UserError(f"manifest not found: {manifest}")
    for flag in ("frames_max_batch", "instances"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.threads < 0:
        raise UserError("--threads must be 0 or more")
    from lrformer_deploy.triton.repository import check_repository_dir, write_repository

    check_repository_dir(Path(args.repository))
    repo = write_repository(manifest, Path(args.repository), args.name, frames_max_batch=args.frames_max_batch,
                            instances=args.instances, threads=args.threads, backend=args.backend,
                            resize=args.resize, max_pixels=args.max_pixels)
    print(f"triton: {repo.models_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
