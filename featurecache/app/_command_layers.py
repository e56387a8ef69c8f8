"""``featurecache layers MODEL``: the capturable layers of a backbone, with their shapes."""

from __future__ import annotations

from featurecache.app._argparse import add_command
from featurecache.core._spec import MAX_IMAGE_SIZE

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    parser = add_command(
        sub, "layers", help="list the capturable layers of a backbone with their shapes"
    )
    parser.add_argument("model", help="a backbone name (see `featurecache backbones`)")
    parser.add_argument(
        "--image-size", type=int, default=None,
        help=f"input size S of the dummy forward pass, 1 to {MAX_IMAGE_SIZE} (default: the "
        "backbone's)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurecache.models._registry import list_layers

    infos = list_layers(args.model, image_size=args.image_size)
    print(f"{'layer':40s} {'output shape':20s} {'depth':>6s}  default  stage")
    for info in infos:
        shape = "x".join(str(s) for s in info.shape)
        default, stage = "*" if info.default else "", "stage" if info.stage else ""
        print(f"{info.name:40s} {shape:20s} {info.depth:6.2f}  {default:7s}  {stage}")
    print(
        f"\n* = default set; stage = exposed by the library itself (forward_intermediates); "
        f"choose others with `featurecache extract DATA --model {args.model} --layers a,b,c`."
    )
    return 0
