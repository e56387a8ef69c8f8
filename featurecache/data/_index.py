"""What a scan of one shard found, kept between runs while the shard is unchanged.

A shard's entry is named by the shard, its stamp (size and modification time for a local
file; size and ETag, else the modification time, for an object) and what the scan read
(the label and split specs, the image fields). The stamp is a pre-filter: a shard
rewritten in place with the same size and time stamp would keep its old entry, as a file
in a folder keeps its stat.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from featurecache.cache import atomic_write
from featurecache.data._files import filesystem, is_url

__all__ = ["ShardIndex"]

#: Version of the entries' content; a new one ignores the old entries.
VERSION = 1


class ShardIndex:
    """Scans of shards kept as JSON files in ``folder``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def load(self, name: str, what: str) -> dict | None:
        """The samples a scan of ``name`` found, or None (no entry, or the shard changed)."""
        path = self._path(name, what)
        if path is None or not path.is_file():
            return None
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # a damaged entry is scanned again
        for fields in found.values():
            if "image" in fields:
                offset, size, digest = fields["image"]
                fields["image"] = (offset, size, bytes.fromhex(digest))
        return found

    def save(self, name: str, what: str, samples: dict) -> None:
        """Keep a scan of ``name`` (written atomically; a failure only loses the entry)."""
        path = self._path(name, what)
        if path is None:
            return
        plain = {
            key: {k: ([v[0], v[1], v[2].hex()] if k == "image" else v) for k, v in fields.items()}
            for key, fields in samples.items()
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(plain)))

    def _path(self, name: str, what: str) -> Path | None:
        stamp = _stamp(name)
        if stamp is None:
            return None
        key = json.dumps([VERSION, name, stamp, what])
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"


def _stamp(name: str) -> str | None:
    """``size:version`` of a shard, or None when the store gives neither."""
    try:
        if not is_url(name):
            stat = os.stat(name)
            return f"{stat.st_size}:{stat.st_mtime_ns}"
        fs, path = filesystem(name)
        info = fs.info(path)
    except Exception:  # no stamp: scan it
        return None
    version = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime")
    return f"{info.get('size')}:{version}" if version is not None else None
