"""Webdataset tar shards as DATA.

A sample is the group of members sharing a key: ``dir/000123.jpg`` and ``dir/000123.cls``
are the fields ``jpg`` and ``cls`` of the sample ``dir/000123`` (the key is the name up
to the first dot of its last part, as webdataset splits it; fields are lower-cased).
The sample id is the key as it is, not qualified by the shard: webdataset keys are
unique across a dataset by convention (img2dataset numbers them by shard), so the same
data copied elsewhere, or re-sharded, keeps its ids; a key found in two shards is refused.

Rows follow the shards in order and the members in each shard, so a batch is a run of
consecutive members of one shard. Scanning reads each shard once, front to back (labels,
splits, and the content digest of each image); extraction then reads each image by its
byte range.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from featurecache.data._files import is_url, open_binary, source_error
from featurecache.data._index import ShardIndex
from featurecache.data._members import TarMembers, content_digest
from featurecache.data._source import Scanned, Source, register
from featurecache.exceptions import InvalidArgumentError

__all__ = ["WebDataset", "IMAGE_FIELDS"]

#: Member extensions read as the sample's image, the first one present wins.
IMAGE_FIELDS = (
    "jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm",
)  # fmt: skip
#: Shards scanned at once (I/O-bound: object storage answers requests in parallel).
SCAN_THREADS = 8


@register
@dataclass(frozen=True)
class WebDataset(Source):
    """Webdataset tar shards (``.tar``): see :class:`featurecache.data.Source`.

    ``image_field`` picks the member holding the image (default: the first of
    :data:`IMAGE_FIELDS` the sample has). ``label_field`` defaults to ``cls``.
    ``index_dir`` keeps each shard's scan there and reuses it while the shard's size and
    time stamp (or ETag) are unchanged (:mod:`featurecache.data._index`): a run then
    reads only new or changed shards before its first batch.
    """

    image_field: str | None = None
    index_dir: str | os.PathLike | None = None

    kind: ClassVar[str] = "webdataset"
    extension: ClassVar[str] = ".tar"
    default_label: ClassVar[str] = "cls"
    lower_fields: ClassVar[bool] = True

    def scan(self) -> Scanned:
        files = self.files()
        split_of = self.split_by_file(files)
        with ThreadPoolExecutor(min(SCAN_THREADS, len(files))) as pool:
            shards = list(pool.map(self._scan_shard, files))
        ids, raw_labels, splits, skipped = [], [], [], []
        file_index, offsets, sizes, digests = [], [], [], []
        first_shard: dict[str, int] = {}
        for index, (name, samples) in enumerate(zip(files, shards, strict=True)):
            for key, fields in samples.items():
                if "image" not in fields:
                    skipped.append(f"{_shown(name)}:{key}")
                    continue
                if first_shard.setdefault(key, index) != index:
                    raise InvalidArgumentError(
                        f"DATA {self.data!r}: the key {key!r} is in {_shown(files[first_shard[key]])!r} "
                        f"and {_shown(name)!r}; webdataset keys must be unique across the shards "
                        "(write each sample once, or prefix the keys with their shard)."
                    )
                offset, size, digest = fields["image"]
                ids.append(key)
                raw_labels.append(fields.get("label"))
                splits.append(split_of.get(name) or fields.get("split") or "")
                file_index.append(index)
                offsets.append(offset)
                sizes.append(size)
                digests.append(digest)
        labels, class_names = self.labels(raw_labels)
        members = TarMembers(
            files=tuple(files),
            file_index=np.array(file_index, dtype=np.int64),
            digests=np.array(digests + [b""], dtype=object)[:-1],
            offsets=np.array(offsets, dtype=np.int64),
            sizes=np.array(sizes, dtype=np.int64),
        )
        return self.scanned(ids, labels, splits, class_names, members, skipped)

    def _scan_shard(self, name: str) -> dict[str, dict]:
        """``{key: fields}`` of one shard, in member order: ``image`` is ``(offset, size,
        digest)``; ``label`` and ``split`` the text of those fields."""
        if self.index_dir is None:
            return self._read_shard(name)
        index = ShardIndex(self.index_dir)
        what = json.dumps([str(self.label_spec), str(self.split_spec), self.image_field])
        samples = index.load(name, what)
        if samples is None:
            samples = self._read_shard(name)
            index.save(name, what, samples)
        return samples

    def _read_shard(self, name: str) -> dict[str, dict]:
        """The scan of one shard, front to back."""
        wanted: dict[str, list] = {}
        for what, spec in (("label", self.label_spec), ("split", self.split_spec)):
            if spec is not None:
                wanted.setdefault(spec.field, []).append((what, spec))
        images = (self.image_field.lower(),) if self.image_field else IMAGE_FIELDS
        samples: dict[str, dict] = {}
        try:
            with open_binary(name) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
                for member in tar:
                    key, extension = _key_and_field(member)
                    if key is None:
                        continue
                    fields = samples.setdefault(key, {})
                    if extension in images and "image" not in fields:
                        data = tar.extractfile(member).read()
                        fields["image"] = (member.offset_data, member.size, content_digest(data))
                    elif extension in wanted:
                        data = tar.extractfile(member).read()
                        for what, spec in wanted[extension]:
                            fields[what] = spec.value(data)
        except InvalidArgumentError:
            raise
        except tarfile.TarError as error:
            raise InvalidArgumentError(
                f"DATA {self.data!r}: {_shown(name)!r} is not a readable tar file ({error}); "
                "write shards with tar or the webdataset package."
            ) from None
        except Exception as error:
            raise source_error(name, error) from None
        return samples


def _key_and_field(member: tarfile.TarInfo) -> tuple[str | None, str]:
    """``(key, field)`` of a member, ``(None, "")`` for one that is no sample's field."""
    if not member.isfile():
        return None, ""
    folder, base = posixpath.split(member.name)
    if base.startswith(".") or "." not in base:
        return None, ""
    stem, extension = base.split(".", 1)
    return posixpath.join(folder, stem), extension.lower()


def _shown(name: str) -> str:
    return name if is_url(name) else posixpath.basename(name)
