"""lrformer-info: parameters, GMACs and LRSA grids of a variant or checkpoint at an input size."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lrformer_deploy.errors import UserError, cli_entry
from lrformer_deploy.cli.common import OneLineParser, parse_size


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="lrformer-info", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--variant", help="T, S, B, L, XL or demo (default T)")
    src.add_argument("--ckpt", help="read variant and classes from a checkpoint")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes (default 150 for --variant; with --ckpt it must match the checkpoint)")
    p.add_argument("--size", type=parse_size, default=(512, 512), help="input HxW (default 512x512)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _fmt_grid(g) -> str:
    return f"{g[0]}x{g[1]}"


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Validate everything before torch is even imported (seconds on a small machine).
    if args.num_classes is not None and args.num_classes <= 0:
        raise UserError(f"--num-classes must be positive, got {args.num_classes}")
    if args.ckpt and not Path(args.ckpt).is_file():
        raise UserError(f"checkpoint not found: {args.ckpt}")
    from lrformer_deploy.contract import check_export_size
    from lrformer_deploy.model.info import model_info
    from lrformer_deploy.model.lrformer import build_model, get_config

    check_export_size(args.size)
    if args.ckpt:
        from lrformer_deploy.model.checkpoint import load_checkpoint

        # Like lrformer-export: a forced class count must match the checkpoint's tensors.
        model = load_checkpoint(args.ckpt, num_classes=args.num_classes, verbose=False)
    else:
        try:
            cfg = get_config(args.variant or "T")
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
        model = build_model(cfg, args.num_classes or 150)
    info = model_info(model, args.size)
    if args.json:
        print(json.dumps(info))
        return 0
    h, w = args.size
    print(f"LRFormer-{info['variant']}  {info['num_classes']} classes  input {h}x{w}")
    print(f"params  {info['params'] / 1e6:.2f} M ({info['params']:,})")
    print(f"GMACs   {info['macs'] / 1e9:.1f}  (multiply-accumulates of convs and matmuls)")
    print("LRSA grids (feature -> query grid | key/value pyramid):")
    for st in info["grids"]["backbone"]:
        print(f"  stage {st['stage']}  {_fmt_grid(st['feature']):>9} -> {_fmt_grid(st['query']):>6} | "
              + " ".join(_fmt_grid(g) for g in st["pyramid"]))
    hd = info["grids"]["head"]
    print(f"  head     {_fmt_grid(hd['feature']):>9} -> {_fmt_grid(hd['query']):>6} | "
          + " ".join(_fmt_grid(g) for g in hd["pyramid"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
