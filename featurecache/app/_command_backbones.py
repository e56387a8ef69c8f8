"""``featurecache backbones``: the backbones that can be extracted."""

from __future__ import annotations

from featurecache.app._argparse import add_command

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    parser = add_command(
        sub, "backbones", help="list the backbones that can be extracted",
        description="List every registered backbone: its name (for --model), its family and "
        "its default weights; with --source, the names a library offers. `featurecache "
        "layers NAME` lists a backbone's layers.",
    )  # fmt: skip
    parser.add_argument(
        "--source",
        default=None,
        help="torchvision, timm, open_clip or hf (default: the built-in backbones)",
    )
    parser.add_argument(
        "--filter", default=None, help="names containing this, * wildcards (default: all)"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurecache.models._registry import get_backbone, list_backbones

    names = list_backbones(args.source, args.filter)
    if args.source not in (None, "torchvision", "builtin"):
        print("\n".join(names))  # building every record would import and inspect each model
        return 0
    for name in names:
        backbone = get_backbone(name)
        print(f"{name:32s} {backbone.family:16s} default weights: {backbone.default_weights}")
    return 0
