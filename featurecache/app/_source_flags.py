"""The flags of ``extract`` that describe tar shards and parquet files, and the
:class:`~featurecache.data.Source` they make of DATA.
"""

from __future__ import annotations

import os

__all__ = ["add_source_flags", "data_argument"]


def add_source_flags(group) -> None:
    """Where tar shards and parquet files keep each sample's image, id, label and split."""
    group.add_argument(
        "--label-field", default=None, metavar="FIELD[:KEY]",
        help="the field holding each label: a member extension of tar shards (default: cls) "
        "or a parquet column (default: label); FIELD:KEY reads KEY of a JSON field, e.g. "
        "json:label. Integer labels index --classes, text labels name them",
    )  # fmt: skip
    group.add_argument(
        "--classes", default=None, metavar="FILE|A,B,...",
        help="class names in index order: a file of one name per line, or a comma-separated "
        "list (default: 0, 1, ... for integer labels, the sorted names for text labels)",
    )  # fmt: skip
    group.add_argument(
        "--split-from", action="append", default=None, metavar="FIELD[:KEY]|SPLIT=PATTERN",
        help="each sample's split: a field (e.g. json:split), or, repeated, the shards of each "
        "split (e.g. --split-from 'train=train-*.tar' --split-from "
        "'test=test-*.tar') (default: no split)",
    )  # fmt: skip
    group.add_argument(
        "--image-field", default=None, metavar="FIELD",
        help="the member extension (tar) or column (parquet) holding the image (default: the "
        "first of jpg, jpeg, png, webp... in a tar sample; the column jpg in parquet)",
    )  # fmt: skip
    group.add_argument(
        "--id-column", default=None, metavar="COLUMN",
        help="parquet: the column of sample ids (default: key)",
    )  # fmt: skip
    group.add_argument(
        "--shard-index", default=None, metavar="DIR", dest="index_dir",
        help="tar: keep each shard's scan in DIR and reuse it while the shard's size and time "
        "stamp are unchanged, so a run reads only new shards before its first batch "
        "(default: scan every shard)",
    )  # fmt: skip


def data_argument(args):
    """DATA as typed, or the tar shards or parquet files its source flags describe."""
    import dataclasses

    from featurecache.data import ParquetImages, source_for
    from featurecache.exceptions import InvalidArgumentError

    given = {
        name: getattr(args, name)
        for name in (
            "label_field",
            "classes",
            "split_from",
            "image_field",
            "id_column",
            "index_dir",
        )  # fmt: skip
        if getattr(args, name, None) is not None
    }
    source = source_for(args.data)
    if source is None:
        if given:
            shown = ", ".join(args.flags.get(name, name) for name in given)
            raise InvalidArgumentError(
                f"{shown} describe .tar shards or .parquet files; DATA {args.data!r} is neither: "
                "leave them out, or name shards (e.g. 'train-{000000..000009}.tar')."
            )
        return args.data
    if "classes" in given:
        given["classes"] = _class_list(given["classes"])
    if "split_from" in given:
        given["split_from"] = _split_from(given["split_from"])
    if "image_field" in given and isinstance(source, ParquetImages):
        given["image_column"] = given.pop("image_field")
    if "index_dir" in given and isinstance(source, ParquetImages):
        raise InvalidArgumentError(
            f"--shard-index keeps scans of tar shards; DATA {args.data!r} is parquet files: "
            "leave it out."
        )
    if "id_column" in given and not isinstance(source, ParquetImages):
        raise InvalidArgumentError(
            f"--id-column names a parquet column; DATA {args.data!r} is tar shards, whose "
            "sample ids are their keys: leave it out."
        )
    return dataclasses.replace(source, **given)


def _class_list(text: str) -> list[str]:
    """Class names from a file of one per line, or from a comma-separated list."""
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


def _split_from(values: list[str]):
    """One field spec, or ``{split: pattern}`` from repeated ``SPLIT=PATTERN``."""
    from featurecache.exceptions import InvalidArgumentError

    patterns = [v for v in values if "=" in v]
    if not patterns and len(values) == 1:
        return values[0]
    if len(patterns) != len(values):
        raise InvalidArgumentError(
            f"--split-from takes one field (e.g. json:split) or SPLIT=PATTERN pairs; got "
            f"{' '.join(map(repr, values))}: give either one field or only SPLIT=PATTERN pairs."
        )
    return dict(value.split("=", 1) for value in patterns)
