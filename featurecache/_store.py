"""The writer side of the cache: samples, model configurations, shards and the index.

See ``docs/cache-format.md``. Every file is written under a temporary name in its
final folder and renamed into place once complete; committed files are never
written again. The index is derived from the files on disk, so it can always be
rebuilt, and a reader never sees a row that was not committed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featurecache import __version__
from featurecache.exceptions import (
    CacheCorruptError,
    CacheLockedError,
    ConfigMismatchError,
    DatasetChangedError,
    InvalidArgumentError,
    OutOfSpaceError,
)

__all__ = ["Store", "ShardMeta", "FORMAT_VERSION", "locking_enabled", "config_digest"]

logger = logging.getLogger(__name__)

FORMAT = "featurecache"
FORMAT_VERSION = 1
TMP_MARK = ".tmp-"
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
# Keys of the model configuration that change the stored numbers.
CONFIG_KEYS = ("backbone", "weights_sha256", "preprocessing", "pooling", "dtype", "compute_dtype")
_STR = h5py.string_dtype()
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
_NO_LOCKS_HINT = (
    "on such file systems (NFS without locks, some FUSE mounts) pass --no-locking or set "
    "FEATURECACHE_NO_LOCKING=1, and run one writer per model."
)


def locking_enabled(locking: bool | None = None) -> bool:
    """Resolve the locking switch: the argument, else ``FEATURECACHE_NO_LOCKING``."""
    if locking is not None:
        return locking
    return os.environ.get("FEATURECACHE_NO_LOCKING", "") != "1"  # the reader reads it the same way


def config_digest(config: Mapping) -> str:
    return hashlib.sha256(_canonical(config).encode()).hexdigest()


def _canonical(config: Mapping) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ShardMeta:
    """What the index needs to know about one committed shard file."""

    file: str  # relative to the index's folder
    shard: int
    start: int
    stop: int
    layers: tuple[str, ...]
    n_features: Mapping[str, int]
    digests: Mapping[str, str]
    layer_attrs: Mapping[str, Mapping]
    status: np.ndarray
    reasons: tuple[tuple[int, str], ...]  # (row, reason) of failed rows


class Store:
    """One cache on disk: the index ``CACHE.h5`` and its folder ``CACHE.h5.d/``.

    Parameters
    ----------
    path : str or Path
        Path of the index file.
    locking : bool, optional
        Use ``fcntl`` locks and HDF5 file locking. ``None`` reads
        ``FEATURECACHE_NO_LOCKING``. Without locks, index rebuilds verify
        themselves against the folder instead.
    """

    def __init__(self, path: str | os.PathLike, locking: bool | None = None) -> None:
        self.path = Path(path).expanduser().absolute()
        self.locking = locking_enabled(locking)
        self.data_dir = self.path.with_name(self.path.name + ".d")
        self.samples_path = self.data_dir / "samples.h5"
        self._meta_memo: dict[str, ShardMeta] = {}

    def __getstate__(self) -> dict:
        return {"path": self.path, "locking": self.locking}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["locking"])

    # -- validation -----------------------------------------------------------------

    def check_path(self) -> None:
        """Raise if the path cannot be a cache (a folder, another kind of file)."""
        if self.path.is_dir():
            raise InvalidArgumentError(
                f"--cache must be a file path like features.h5; {str(self.path)!r} is a directory."
            )
        if self.path.exists():
            try:
                with self._open(self.path) as index:
                    fmt = index.attrs.get("format")
            except OSError:
                # A damaged index is derived data: the next run rebuilds it from the folder.
                fmt = FORMAT if self.has_samples() else None
            if fmt != FORMAT:
                raise InvalidArgumentError(
                    f"--cache {str(self.path)!r} exists but is not a featurecache cache; "
                    "choose a new path (featurecache never overwrites other files)."
                )
        if not self.path.parent.exists():
            raise InvalidArgumentError(
                f"--cache {str(self.path)!r}: the folder {str(self.path.parent)!r} does not exist."
            )

    # -- samples --------------------------------------------------------------------

    def has_samples(self) -> bool:
        return self.samples_path.exists()

    def create_samples(self, dataset, shard_size: int) -> None:
        """Write the sample table once; if one exists, check the dataset matches it."""
        if self.has_samples():  # nothing to write: a resume must not need free space here
            self.check_dataset(dataset)
            return
        self.data_dir.mkdir(exist_ok=True)
        tmp = self._tmp_path(self.samples_path)
        try:
            with _new_h5(tmp) as f:
                group = f.create_group("samples")
                group.create_dataset("ids", data=np.asarray(dataset.ids, dtype=object), dtype=_STR)
                group.create_dataset("labels", data=np.asarray(dataset.labels, dtype=np.int64))
                group.create_dataset(
                    "splits", data=np.asarray(dataset.splits, dtype=object), dtype=_STR
                )
                group.attrs["class_names"] = np.array(dataset.class_names, dtype=object)
                group.attrs["root"] = dataset.source
                f.attrs.update(self._root_attrs(dataset, shard_size))
            _fsync(tmp)
            os.link(tmp, self.samples_path)  # fails if another writer got there first
        except FileExistsError:
            self.check_dataset(dataset)
        except OSError as error:
            _raise_if_out_of_space(error, self.samples_path)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.data_dir)

    @staticmethod
    def _root_attrs(dataset, shard_size: int) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "shard_size": int(shard_size),
            "n_samples": len(dataset),
            "dataset": dataset.source,
            "samples_digest": dataset.samples_digest,
            "featurecache_version": __version__,
        }

    def read_root_attrs(self) -> dict:
        with self._open(self.samples_path) as f:
            return dict(f.attrs)

    def check_dataset(self, dataset) -> None:
        """Raise :class:`DatasetChangedError` if the dataset differs from the cached samples."""
        with self._open(self.samples_path) as f:
            if f.attrs["samples_digest"] == dataset.samples_digest:
                return
            ids = f["samples/ids"].asstr()[:]
            labels = f["samples/labels"][:]
            splits = f["samples/splits"].asstr()[:]
        old, new = set(ids.tolist()), set(np.asarray(dataset.ids).tolist())
        added, missing = len(new - old), len(old - new)
        if added or missing:
            detail = f"{added} new and {missing} missing samples"
        else:
            order = {sample_id: i for i, sample_id in enumerate(dataset.ids)}
            rows = np.array([order[i] for i in ids])
            changed = int(
                np.sum(labels != dataset.labels[rows]) + np.sum(splits != dataset.splits[rows])
            )
            detail = f"the same samples but {changed} changed labels or splits"
        raise DatasetChangedError(
            f"the dataset {dataset.source} has {detail} compared with the cache {str(self.path)!r}; "
            "extract it into a new --cache path (a cache holds one fixed list of samples)."
        )

    # -- models ---------------------------------------------------------------------

    def model_dir(self, model: str) -> Path:
        return self.data_dir / model

    def read_config(self, model: str) -> dict | None:
        path = self.model_dir(model) / "config.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def register_model(self, model: str, config: Mapping) -> None:
        """Record the model's configuration once; raise if it differs from the recorded one."""
        folder = self.model_dir(model)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / "config.json"
        tmp = self._tmp_path(final)
        try:
            tmp.write_text(json.dumps(dict(config), sort_keys=True, indent=1))
            _fsync(tmp)
            os.link(tmp, final)
        except FileExistsError:
            check_config(model, json.loads(final.read_text()), config, self.path)
        except OSError as error:
            _raise_if_out_of_space(error, final)
            raise
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock_model(self, model: str) -> Iterator[None]:
        """Hold the model's writer lock; raise :class:`CacheLockedError` if another writer has it."""
        if not self.locking:
            yield
            return
        path = self.model_dir(model) / ".writer.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            try:
                _flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, path)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                raise CacheLockedError(
                    f"another process ({owner}) is writing model {model!r} into {str(self.path)!r}; "
                    "wait for it to finish, or write under another --name."
                ) from None
            try:
                handle.truncate(0)
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
                handle.flush()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- shards ---------------------------------------------------------------------

    def shard_path(self, model: str, shard: int, layers: Sequence[str]) -> Path:
        pass_id = hashlib.sha1("\n".join(sorted(layers)).encode()).hexdigest()[:10]
        return self.model_dir(model) / f"p-{pass_id}" / f"shard-{shard:06d}.h5"

    def done_layers(self, model: str) -> dict[int, set[str]]:
        """Map each shard index to the layers committed for it."""
        done: dict[int, set[str]] = {}
        for meta in self._scan_shards(model):
            done.setdefault(meta.shard, set()).update(meta.layers)
        return done

    def write_shard(
        self,
        model: str,
        shard: int,
        start: int,
        status: np.ndarray,
        reasons: Sequence[str],
        features: Mapping[str, np.ndarray],
        layer_attrs: Mapping[str, Mapping],
        config: Mapping,
    ) -> Path:
        """Write one shard file atomically and return its path.

        ``features[layer]`` has shape ``(n_rows, n_features)`` in the stored dtype;
        rows are ``start .. start + n_rows``.
        """
        layers = tuple(sorted(features))
        final = self.shard_path(model, shard, layers)
        final.parent.mkdir(parents=True, exist_ok=True)
        n_rows = len(status)
        tmp = self._tmp_path(final)
        try:
            with _new_h5(tmp) as f:
                f.attrs.update(
                    start=start,
                    stop=start + n_rows,
                    shard=shard,
                    model=model,
                    layers=json.dumps(layers),
                    config_digest=config_digest(config),
                    featurecache_version=__version__,
                    **_library_versions(),
                )
                f.create_dataset("rows", data=np.arange(start, start + n_rows, dtype=np.int64))
                f.create_dataset("status", data=np.asarray(status, dtype=np.int8))
                f.create_dataset("reason", data=np.asarray(reasons, dtype=object), dtype=_STR)
                for layer in layers:
                    data = np.ascontiguousarray(features[layer])
                    rows_per_chunk = max(
                        1, min(n_rows, (1 << 20) // max(1, data.shape[1] * data.itemsize))
                    )
                    dataset = f.create_dataset(
                        f"features/{layer}",
                        data=data,
                        chunks=(rows_per_chunk, data.shape[1]),
                        fletcher32=True,
                    )
                    dataset.attrs.update(dict(layer_attrs[layer]))
                    dataset.attrs["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
            _fsync(tmp)
            os.replace(tmp, final)
        except OSError as error:
            _raise_if_out_of_space(error, final)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(final.parent)
        return final

    def _scan_shards(self, model: str) -> list[ShardMeta]:
        folder = self.model_dir(model)
        files = sorted(p for p in folder.glob("p-*/shard-*.h5") if TMP_MARK not in p.name)
        return [self._shard_meta(p) for p in files]

    def _shard_meta(self, path: Path) -> ShardMeta:
        key = str(path)
        if key not in self._meta_memo:  # shard files are immutable once renamed in
            self._meta_memo[key] = read_shard_meta(path, self.path.parent, self._open)
        return self._meta_memo[key]

    def status_counts(self, model: str, layers: Sequence[str]) -> tuple[int, int]:
        """Return ``(n_ok, n_failed)`` over the committed shards holding ``layers``."""
        by_shard: dict[int, np.ndarray] = {}
        for meta in self._scan_shards(model):
            if set(layers) & set(meta.layers):
                by_shard.setdefault(meta.shard, meta.status)
        status = np.concatenate(list(by_shard.values())) if by_shard else np.zeros(0, np.int8)
        return int(np.sum(status == STATUS_OK)), int(np.sum(status == STATUS_FAILED))

    # -- the index ------------------------------------------------------------------

    def index_is_current(self) -> bool:
        """True when ``CACHE.h5`` lists every committed shard file on disk."""
        if not self.path.exists():
            return False
        try:
            with self._open(self.path) as f:
                models = sorted(f["features"].keys()) if "features" in f else []
                listed = {m: set(f[f"shards/{m}/file"].asstr()[:]) for m in models}
        except (OSError, KeyError):
            return False
        disk = dict(self._listing())
        return listed.keys() == disk.keys() and all(listed[m] == set(disk[m]) for m in disk)

    def models(self) -> list[str]:
        if not self.data_dir.exists():
            return []
        return sorted(p.parent.name for p in self.data_dir.glob("*/config.json"))

    def rebuild_index(self) -> None:
        """Rebuild ``CACHE.h5`` from the files on disk and rename it into place."""
        with self._index_lock():
            self.remove_stale_temporaries()
            for _ in range(100):
                listed = self._write_index()
                if self.locking or listed == self._listing():
                    return
            logger.warning("index of %s kept changing while it was rebuilt", self.path)

    def _listing(self) -> tuple:
        models = self.models()
        return tuple((m, tuple(meta.file for meta in self._scan_shards(m))) for m in models)

    def _write_index(self) -> tuple:
        root_attrs = self.read_root_attrs()
        n_samples = int(root_attrs["n_samples"])
        listing = []
        tmp = self._tmp_path(self.path)
        try:
            with _new_h5(tmp) as f:
                f.attrs.update(root_attrs)
                f["samples"] = h5py.ExternalLink(
                    os.path.relpath(self.samples_path, self.path.parent), "/samples"
                )
                for model in self.models():
                    metas = self._scan_shards(model)
                    listing.append((model, tuple(meta.file for meta in metas)))
                    _write_model_index(f, model, self.read_config(model), metas, n_samples)
            _fsync(tmp)
            os.replace(tmp, self.path)
        except OSError as error:
            _raise_if_out_of_space(error, self.path)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)
        return tuple(listing)

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        if not self.locking:
            yield
            return
        self.data_dir.mkdir(exist_ok=True)
        with open(self.data_dir / ".index.lock", "a+") as handle:
            _flock(handle, fcntl.LOCK_EX, self.data_dir / ".index.lock")
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- temporaries ----------------------------------------------------------------

    def _tmp_path(self, final: Path) -> Path:
        tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return final.with_name(f"{final.name}{TMP_MARK}{tag}")

    def remove_stale_temporaries(self) -> None:
        """Remove temporary files left by dead processes of this host."""
        folders = [self.path.parent, self.data_dir]
        if self.data_dir.exists():
            folders += [p for p in self.data_dir.glob("*") if p.is_dir()]
            folders += [p for p in self.data_dir.glob("*/p-*") if p.is_dir()]
        prefix = self.path.name
        for folder in folders:
            for tmp in folder.glob(f"*{TMP_MARK}*"):
                if folder == self.path.parent and not tmp.name.startswith(prefix):
                    continue
                if _owner_is_dead(tmp.name.split(TMP_MARK, 1)[1]):
                    tmp.unlink(missing_ok=True)

    def _open(self, path: Path, mode: str = "r") -> h5py.File:
        try:
            return h5py.File(path, mode, locking=self.locking)
        except OSError as error:
            if "unable to lock file" not in str(error):
                raise
            raise CacheLockedError(
                f"cannot lock {str(path)!r} ({error}); another program holds it open for "
                f"writing, or the file system refuses locks: {_NO_LOCKS_HINT}"
            ) from error


def check_config(model: str, recorded: Mapping, requested: Mapping, cache: Path) -> None:
    """Raise :class:`ConfigMismatchError` naming every key that differs."""
    differences = [
        f"{key}: cached {_short(recorded.get(key))}, requested {_short(requested.get(key))}"
        for key in CONFIG_KEYS
        if recorded.get(key) != requested.get(key)
    ]
    if differences:
        raise ConfigMismatchError(
            f"model {model!r} in {str(cache)!r} was extracted with another configuration "
            f"({'; '.join(differences)}); pass --name NEW_NAME to store this one beside it, "
            "or use a new --cache."
        )


def _short(value) -> str:
    text = _canonical(value) if isinstance(value, Mapping) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_shard_meta(path: Path, base: Path, opener) -> ShardMeta:
    try:
        return _read_shard_meta(path, base, opener)
    except (OSError, KeyError, ValueError) as error:
        raise CacheCorruptError(
            f"shard file {str(path)!r} cannot be read ({error}); delete it and re-run the same "
            "`featurecache extract` command to recompute it."
        ) from error


def _read_shard_meta(path: Path, base: Path, opener) -> ShardMeta:
    with opener(path) as f:
        layers = tuple(json.loads(f.attrs["layers"]))
        status = f["status"][:]
        failed = np.flatnonzero(status == STATUS_FAILED)
        reasons = f["reason"].asstr()[failed] if len(failed) else []
        start = int(f.attrs["start"])
        versions = {
            k: str(f.attrs[k])
            for k in ("torch_version", "torchvision_version", "featurecache_version")
        }
        layer_attrs, n_features, digests = {}, {}, {}
        for layer in layers:
            dataset = f[f"features/{layer}"]
            attrs = {k: v for k, v in dataset.attrs.items() if k != "sha256"}
            layer_attrs[layer] = {**attrs, **versions, "dtype_stored": str(dataset.dtype)}
            n_features[layer] = int(dataset.shape[1])
            digests[layer] = str(dataset.attrs["sha256"])
        return ShardMeta(
            file=os.path.relpath(path, base),
            shard=int(f.attrs["shard"]),
            start=start,
            stop=int(f.attrs["stop"]),
            layers=layers,
            n_features=n_features,
            digests=digests,
            layer_attrs=layer_attrs,
            status=status,
            reasons=tuple((start + int(i), str(r)) for i, r in zip(failed, reasons, strict=True)),
        )


def _write_model_index(
    f: h5py.File, model: str, config: Mapping, metas: list[ShardMeta], n_samples: int
) -> None:
    group = f.create_group(f"features/{model}")
    group.attrs.update(_config_attrs(config))
    by_layer: dict[str, dict[int, ShardMeta]] = {}
    for meta in metas:  # sorted by file name: the first file with a layer wins
        for layer in meta.layers:
            by_layer.setdefault(layer, {}).setdefault(meta.shard, meta)
    table = []
    order = sorted(by_layer, key=lambda layer: _depth_key(layer, by_layer[layer]))
    for layer in order:
        shards = by_layer[layer]
        first = next(iter(shards.values()))
        n_features = first.n_features[layer]
        dtype = np.dtype(config["dtype"])
        features = h5py.VirtualLayout((n_samples, n_features), dtype)
        status = h5py.VirtualLayout((n_samples,), np.int8)
        for shard in sorted(shards):
            meta = shards[shard]
            rows = meta.stop - meta.start
            features[meta.start : meta.stop] = h5py.VirtualSource(
                meta.file, f"features/{layer}", shape=(rows, n_features), dtype=dtype
            )
            status[meta.start : meta.stop] = h5py.VirtualSource(
                meta.file, "status", shape=(rows,), dtype=np.int8
            )
            table.append((meta.file, layer, meta.start, meta.stop, meta.digests[layer]))
        dataset = group.create_virtual_dataset(layer, features, fillvalue=np.nan)
        attrs = dict(first.layer_attrs[layer])
        attrs.pop("dtype_stored", None)
        dataset.attrs.update({**_config_attrs(config), **attrs, "layer": layer})
        f.create_virtual_dataset(f"status/{model}/{layer}", status, fillvalue=STATUS_PENDING)
    failures = sorted({row: reason for meta in metas for row, reason in meta.reasons}.items())
    f.create_dataset(
        f"failures/{model}/row", data=np.array([r for r, _ in failures], dtype=np.int64)
    )
    f.create_dataset(
        f"failures/{model}/reason",
        data=np.array([r for _, r in failures], dtype=object),
        dtype=_STR,
    )
    columns = list(zip(*table, strict=True)) if table else [[], [], [], [], []]
    shards_group = f.create_group(f"shards/{model}")
    for name, values in zip(("file", "layer"), columns[:2], strict=True):
        shards_group.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR)
    for name, values in zip(("start", "stop"), columns[2:4], strict=True):
        shards_group.create_dataset(name, data=np.array(values, dtype=np.int64))
    shards_group.create_dataset("sha256", data=np.array(columns[4], dtype=object), dtype=_STR)


def _depth_key(layer: str, shards: Mapping[int, ShardMeta]) -> tuple:
    attrs = next(iter(shards.values())).layer_attrs[layer]
    return (float(attrs.get("depth", 1.0)), layer)


def _config_attrs(config: Mapping) -> dict:
    attrs = {
        key: (_canonical(value) if isinstance(value, (Mapping, list, tuple)) else value)
        for key, value in config.items()
        if value is not None
    }
    attrs["config"] = _canonical(config)
    attrs["config_digest"] = config_digest(config)
    return attrs


def _library_versions() -> dict:
    import torch
    import torchvision

    return {
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
    }


def _flock(handle, flags: int, path: Path) -> None:
    try:
        fcntl.flock(handle, flags)
    except BlockingIOError:
        raise
    except OSError as error:
        if error.errno not in _NO_LOCKS:
            raise
        raise CacheLockedError(
            f"the file system of {str(path)!r} refuses file locks ({error.strerror}): "
            + _NO_LOCKS_HINT
        ) from error


def _owner_is_dead(tag: str) -> bool:
    parts = tag.rsplit("-", 2)  # host-pid-random
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


@contextlib.contextmanager
def _new_h5(path: Path) -> Iterator[h5py.File]:
    """Build a new HDF5 file in memory, then write it to ``path`` with one plain write.

    HDF5 defers its writes to ``close``, where a full disk surfaces as a ``RuntimeError``
    and leaves the library in a state that can crash the interpreter at exit; a plain
    write raises a clean ``OSError`` (ENOSPC, EFBIG) that becomes :class:`OutOfSpaceError`.
    """
    with h5py.File(path, "w", driver="core", backing_store=False) as f:
        yield f
        f.flush()
        image = f.id.get_file_image()
    with open(path, "xb") as out:
        out.write(image)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(path)


def _raise_if_out_of_space(error: OSError, target: Path) -> None:
    """Turn disk-full errors (also as reported through HDF5) into :class:`OutOfSpaceError`."""
    text = str(error)
    markers = ("No space left", "File too large", "Disk quota", "errno = 28", "errno = 27")
    if error.errno in _NO_SPACE or any(marker in text for marker in markers):
        raise OutOfSpaceError(
            f"out of disk space while writing {str(target)!r}; nothing of it was committed and the "
            "cache is as it was. Free space (or raise the file size limit) and re-run the same "
            "command to resume, or put --cache on a larger disk."
        ) from error
