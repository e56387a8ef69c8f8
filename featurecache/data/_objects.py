"""Images that are whole objects behind fsspec URLs: a folder's prefix, a manifest's rows.

A folder of class sub-folders at ``s3://bucket/photos/`` is listed (:func:`list_folder`:
one request per thousand objects on S3, each object's size, ETag and modification time
with it); a CSV manifest's rows name objects by URL (:func:`stat_objects`). Each sample is
then one object (:class:`ObjectFiles`), whose content digest is its bytes' digest, read
when the sample table asks for it.

The sample table compares each object's stamp with the one it recorded, as it compares a
local file's stat, and hashes only objects whose stamp changed (:func:`object_stamp`).
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import xxhash

from featurecache.cache import DataSource, content_digest
from featurecache.cache._identity import UNREADABLE, check_content
from featurecache.data._files import filesystem, is_url, source_error
from featurecache.data._layout import read_layout
from featurecache.data._members import SampleBytes
from featurecache.data._source import Scanned
from featurecache.exceptions import InvalidArgumentError

__all__ = [
    "ObjectFiles",
    "list_folder",
    "object_files",
    "object_stamp",
    "read_object",
    "resolve_url",
    "scan_folder",
    "stat_objects",
]

#: Objects fetched at once when hashing (their bytes are held until hashed).
FETCH_CHUNK = 64
#: Objects stat'ed at once (one request each) where the store cannot list them.
STAT_THREADS = 16
#: Info keys naming an object's version, the first present wins: a new write gets a new one.
VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "crc32c", "Content-MD5", "Digest")
#: Info keys of an object's modification time, the first present wins.
TIME_KEYS = ("LastModified", "mtime", "updated", "last_modified", "Last-Modified", "modified")
_NO_STAMP = (-1, -1, -1, -1)


def object_stamp(info: dict | None) -> tuple[int, int, int, int]:
    """The stat columns of an object: ``(size, mtime_ns, -1, version)``.

    With a version tag (ETag, generation...): ``(size, -1, -1, hash of the tag)``: a
    rewritten object gets a new tag, so the time is not needed (nor the racy rule). Without
    one: ``(size, mtime_ns, -1, -1)``, compared as a file's stat is. Without either, or
    without a size: all ``-1``, so the object is hashed on every run.
    """
    if not info:
        return _NO_STAMP
    size = info.get("size")
    if not isinstance(size, int) or size < 0:
        return _NO_STAMP
    version = next((info[k] for k in VERSION_KEYS if info.get(k)), None)
    if version is not None:
        tag = xxhash.xxh3_64_intdigest(str(version).strip('"').encode()) & (2**63 - 1)
        return (size, -1, -1, tag)
    mtime = next((_ns(info[k]) for k in TIME_KEYS if info.get(k) is not None), None)
    return _NO_STAMP if mtime is None else (size, mtime, -1, -1)


def _ns(value) -> int | None:
    """A modification time (datetime, seconds, or HTTP date text) in ns, or None."""
    import datetime
    from email.utils import parsedate_to_datetime

    try:
        if isinstance(value, str):
            try:
                value = datetime.datetime.fromisoformat(value)
            except ValueError:
                value = parsedate_to_datetime(value)
        if isinstance(value, datetime.datetime):
            return int(value.timestamp() * 1e9)
        return int(float(value) * 1e9)
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True, eq=False)
class ObjectFiles(SampleBytes):
    """One whole object per row: ``files[file_index[row]]``, with its stamp.

    ``digests`` start empty (``b""``) and are filled when the sample table asks for them
    (:meth:`content_digests`); a row read after that must still have its digest, or it fails
    (the object changed during the run).

    Attributes
    ----------
    stamps : ndarray of shape (n_samples, 4), int64
        :func:`object_stamp` of each row's object, as listed.
    """

    stamps: np.ndarray = field(default=None, repr=False)
    _positions: ClassVar[tuple[str, ...]] = ("stamps",)
    what: ClassVar[str] = "object"

    def stats(self) -> np.ndarray:
        return self.stamps

    def read(self, row: int) -> bytes:
        return self._checked(row, _fetch([self.files[self._check(row)]])[0])

    def read_batch(self, rows) -> list[bytes]:
        """The batch's objects, requested at once."""
        rows = [int(r) for r in rows]
        found = _fetch([self.files[self._check(r)] for r in rows])
        return [self._checked(r, data) for r, data in zip(rows, found, strict=True)]

    def _checked(self, row: int, data: bytes | BaseException) -> bytes:
        if isinstance(data, BaseException):
            raise data
        return check_content(data, self.digests[row] or None, self.what)

    def content_digests(self, rows) -> list[bytes]:
        """Digests of ``rows``, reading the objects not hashed yet (an unreadable one gets
        ``UNREADABLE``: it fails when extracted, and never counts as a move)."""
        rows = [int(r) for r in rows]
        todo = [r for r in dict.fromkeys(rows) if self.file_index[r] >= 0 and not self.digests[r]]
        for start in range(0, len(todo), FETCH_CHUNK):
            chunk = todo[start : start + FETCH_CHUNK]
            found = _fetch([self.files[self.file_index[r]] for r in chunk])
            for row, data in zip(chunk, found, strict=True):
                bad = isinstance(data, BaseException)
                self.digests[row] = UNREADABLE if bad else content_digest(data)
        return [self.digests[r] for r in rows]


def _fetch(urls: list[str]) -> list[bytes | InvalidArgumentError]:
    """The bytes of each object, requested concurrently per store; an error in one line
    where one cannot be read."""
    found: dict[int, bytes | InvalidArgumentError] = {}
    by_store: dict[str, list[int]] = {}
    for k, url in enumerate(urls):  # a manifest may name objects of several stores
        by_store.setdefault(url.split("://", 1)[0], []).append(k)
    for positions in by_store.values():
        fs, _ = filesystem(urls[positions[0]])
        paths = [fs._strip_protocol(urls[k]) for k in positions]
        # s3fs asks for an object's size before a whole read unless it reads in one request
        one_request = {"max_concurrency": 1} if hasattr(fs, "max_concurrency") else {}
        try:  # whole objects, concurrently where the store is asynchronous (no glob expansion)
            data = fs.cat_ranges(paths, None, None, on_error="return", **one_request)
        except Exception as error:
            data = [error] * len(paths)
        for k, value in zip(positions, data, strict=True):
            bad = isinstance(value, BaseException)
            found[k] = source_error(urls[k], value) if bad else value
    return [found[k] for k in range(len(urls))]


def list_folder(url: str) -> tuple[dict[str, dict], list[str]]:
    """``({relative name: info} of every object, [relative folders])`` below a prefix.

    Raises
    ------
    InvalidArgumentError
        When the bucket is missing, access is denied, or the prefix holds no object.
    """
    fs, path = filesystem(url)
    root = path.rstrip("/")
    try:
        fs.invalidate_cache()  # a long-lived process sees objects added since its last listing
        found = fs.find(root, withdirs=True, detail=True)
        if not found and not url.startswith(("http://", "https://")):
            fs.ls(root.split("/", 1)[0])  # an empty listing: say so if the bucket is missing
    except Exception as error:
        raise source_error(url, error) from None
    objects, folders = {}, []
    for name, info in found.items():
        name = name.rstrip("/")
        if not name.startswith(root + "/"):
            continue  # the prefix itself (a marker object, or a file of that name)
        relative = name[len(root) + 1 :]
        if info.get("type") == "directory":
            folders.append(relative)
        else:
            objects[relative] = info
    if not objects:
        raise InvalidArgumentError(
            f"DATA {url!r} lists no object; expected class sub-folders of images below the "
            "prefix (s3://bucket/photos/ant/1.jpg...): check the URL."
        )
    return objects, folders


def stat_objects(urls: list[str]) -> list[dict | None]:
    """Each object's info (size, ETag or modification time), or None where there is none.

    Object stores list each folder the URLs name (one request per thousand objects); other
    stores (``https://``) answer one request per object, several at once.

    Raises
    ------
    InvalidArgumentError
        When the bucket is missing or access is denied.
    """
    found: dict[str, dict | None] = {}
    by_store: dict[str, list[str]] = {}
    for url in dict.fromkeys(urls):  # a manifest may name objects of several stores
        by_store.setdefault(url.split("://", 1)[0], []).append(url)
    for protocol, some in by_store.items():
        found.update(zip(some, _stat_store(protocol, some), strict=True))
    return [found[url] for url in urls]


def _stat_store(protocol: str, urls: list[str]) -> list[dict | None]:
    """:func:`stat_objects` of objects of one store."""
    fs, _ = filesystem(urls[0])
    paths = [fs._strip_protocol(u) for u in urls]
    known: dict[str, dict | None] = {}
    if protocol not in ("http", "https"):
        for folder in sorted({posixpath.dirname(p) for p in paths}):
            try:
                fs.invalidate_cache(folder)
                listed = fs.ls(folder, detail=True)
            except FileNotFoundError:
                continue
            except Exception as error:
                raise source_error(f"{protocol}://{folder}/", error) from None
            known.update({info["name"].rstrip("/"): info for info in listed})
    missing = [p for p in paths if p not in known]
    with ThreadPoolExecutor(min(STAT_THREADS, max(1, len(missing)))) as pool:
        known.update(zip(missing, pool.map(lambda p: _info(fs, p), missing), strict=True))
    return [known[p] for p in paths]


def _info(fs, path: str) -> dict | None:
    try:
        return fs.info(path)
    except Exception:  # no such object: its row fails when it is read, with the reason
        return None


def resolve_url(manifest: str, path: str) -> str:
    """A manifest row's path as a URL: relative paths resolve against the manifest's folder."""
    if is_url(path):
        return path
    protocol, rest = manifest.split("://", 1)
    path = path.replace("\\", "/")
    base = rest.split("/", 1)[0] if path.startswith("/") else posixpath.dirname(rest)
    return f"{protocol}://{posixpath.normpath(base + '/' + path.lstrip('/'))}"


def object_files(urls: list[str], infos: list[dict | None] | None = None) -> ObjectFiles:
    """The samples that are these objects, with their stamps (stat'ed unless ``infos``)."""
    infos = stat_objects(urls) if infos is None else infos
    stamps = np.array([object_stamp(info) for info in infos], dtype=np.int64).reshape(-1, 4)
    return ObjectFiles(
        files=tuple(urls),
        file_index=np.arange(len(urls), dtype=np.int64),
        digests=np.array([b""] * len(urls) + [None], dtype=object)[:-1],
        stamps=stamps,
    )


def scan_folder(url: str) -> Scanned:
    """A folder of class sub-folders below a URL prefix: its samples (sorted by id, the path
    below the prefix, as for a local folder) and what it passed over.

    Raises
    ------
    InvalidArgumentError
        As :func:`list_folder` and :func:`featurecache.data.read_layout`.
    """
    root = url.rstrip("/")
    objects, folders = list_folder(url)
    layout = read_layout(root + "/", objects, folders)
    class_names = tuple(sorted({name for _, name, _ in layout.rows}))
    index = {name: k for k, name in enumerate(class_names)}
    ids = [sample_id for sample_id, _, _ in layout.rows]
    return Scanned(
        str(DataSource("folder", root)),
        ids=np.array(ids, dtype=object),
        labels=np.array([index[name] for _, name, _ in layout.rows], dtype=np.int64),
        splits=np.array([split for _, _, split in layout.rows], dtype=object),
        class_names=class_names,
        members=object_files([f"{root}/{i}" for i in ids], [objects[i] for i in ids]),
        skipped=layout.skipped,
    )


def read_object(url: str) -> bytes:
    """The bytes of one object (a manifest).

    Raises
    ------
    InvalidArgumentError
        When it cannot be read: the reason in one line.
    """
    data = _fetch([url])[0]
    if isinstance(data, BaseException):
        raise data
    return data
