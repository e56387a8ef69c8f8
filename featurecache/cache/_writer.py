"""The writer side of the cache: :class:`Store`, one writer's session on a cache.

See ``docs/cache-format.md``. A store writes the sample table and each model's
configuration, commits shard files to the model's log (and recovers the log after a
crash), and keeps the derived index up to date. The files themselves are written by
their own modules: a shard file by :mod:`~featurecache.cache._shard_file`, a segment by
:mod:`~featurecache.cache._compact`, the index by :mod:`~featurecache.cache._index`, and
the locks are taken by :mod:`~featurecache.cache._locks`. Every file is written under a temporary
name in its final folder and renamed into place once complete; committed files are never
written again, and a reader never sees a row that was not committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featurecache import __version__
from featurecache.cache import _format as fmt
from featurecache.cache._atomic import atomic_write, create_once, new_h5, owner_is_dead
from featurecache.cache._compact import compact_model, remove_litter
from featurecache.cache._config import FeatureConfig
from featurecache.cache._folder import read_config, read_declared_layers, read_shard_meta
from featurecache.cache._format import STATUS_FAILED, STATUS_OK, TMP_MARK
from featurecache.cache._index import ModelIndex, listed_files, write_index
from featurecache.cache._legacy import read_table
from featurecache.cache._locks import exclusive, hold_writer_lock, open_h5, owner_is_gone
from featurecache.cache._log import (
    ShardMeta,
    append_log,
    append_text,
    read_log,
    read_runs,
    repair_log,
    rewrite_log,
)
from featurecache.cache._samples import STATE_LIVE, SampleChanges, SampleTable, write_samples
from featurecache.cache._shard_file import ShardContent, ShardViews, write_shard_file
from featurecache.core._validation import ParameterError
from featurecache.exceptions import (
    CacheCorruptError,
    CacheReadOnlyError,
    ConfigMismatchError,
    DatasetChangedError,
)

__all__ = ["ShardViews", "Store", "check_config"]

logger = logging.getLogger(__name__)

#: The index is rebuilt at most this often during a run (and always at its end) ...
INDEX_MIN_SECONDS = 5.0
#: ... and never sooner than this many times its own last cost: under 1 % of the run, and
#: rarely inside any stretch of commits (an index of 10,000 shards takes about 2 s to write,
#: so it is refreshed every few minutes; featurecache's readers read the logs meanwhile).
INDEX_COST_RATIO = 100.0


@dataclass(frozen=True)
class Reconciled:
    """A dataset compared with the stored table: the table, the one to write, the changes."""

    table: SampleTable
    grown: SampleTable
    changes: SampleChanges
    options: dict = field(default_factory=dict)


class Store:
    """One cache on disk, for writing: the index ``CACHE.h5`` and its folder ``CACHE.h5.d/``.

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
        self.locking = fmt.locking_enabled(locking)
        self.data_dir = fmt.data_dir(self.path)
        self.samples_path = fmt.samples_file(self.path)
        self._index_written = time.monotonic()  # no rebuild in a run's first seconds
        self._index_seconds = 0.0

    def __getstate__(self) -> dict:
        return {"path": self.path, "locking": self.locking}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["locking"])

    # -- validation -----------------------------------------------------------------

    def check_path(self, owner: str = "extract") -> None:
        """Raise if the path cannot be a cache (a folder, another kind of file, no folder).

        ``owner`` names the function whose ``cache`` parameter this is, for the message.
        """
        if self.path.is_dir():
            raise ParameterError(
                "cache", owner, "a file path like features.h5, not a directory", str(self.path)
            )
        if self.path.exists():
            try:
                with self._open(self.path) as index:
                    found = index.attrs.get("format")
            except OSError:
                # A damaged index is derived data: the next run rebuilds it from the folder.
                found = fmt.FORMAT if self.has_samples() else None
            if found != fmt.FORMAT:
                raise ParameterError(
                    "cache", owner, "a new path or an existing featurecache cache",
                    str(self.path), "Choose a new path: featurecache never overwrites other files.",
                )  # fmt: skip
        if not self.path.parent.exists():
            raise ParameterError(
                "cache", owner, "a path in an existing folder", str(self.path),
                f"Create {str(self.path.parent)!r} first.",
            )  # fmt: skip

    # -- samples --------------------------------------------------------------------

    def has_samples(self) -> bool:
        return self.samples_path.exists()

    def create_samples(self, dataset, shard_size: int) -> None:
        """Write the sample table once (every sample hashed); if one exists, bring it up to
        the dataset instead (:meth:`sync_samples`)."""
        if self.has_samples():  # nothing to write: a resume must not need free space here
            self.sync_samples(dataset)
            return
        table = dataclasses.replace(SampleTable.from_dataset(dataset), shard_size=int(shard_size))
        if not create_once(self.samples_path, lambda tmp: self._write_table(tmp, table)):
            self.sync_samples(dataset)  # another writer got there first

    def read_root_attrs(self) -> dict:
        with self._open(self.samples_path) as f:
            return dict(f.attrs)

    def check_dataset(self, dataset) -> None:
        """Raise :class:`DatasetChangedError` if the dataset differs from the cached samples."""
        self.sync_samples(dataset, frozen=True, write=False)

    # -- growing datasets -------------------------------------------------------------

    def read_samples(self, identity: bool = True) -> SampleTable:
        """The sample table as stored: states, content digests, stats and shard starts
        (``identity=False`` leaves out the digest and stat columns)."""
        with self._open(self.samples_path) as f:
            return read_table(f, identity=identity)

    def shard_ranges(self) -> list[tuple[int, int]]:
        """``[start, stop)`` of every shard, in shard order."""
        return self.read_samples(identity=False).shard_ranges()

    def reconcile(self, dataset, **options) -> Reconciled:
        """Compare ``dataset`` with the stored table by content (nothing is written).

        ``options`` (``verify``, ``retry``, ``keep_splits``) are those of
        :meth:`SampleTable.reconcile`; they are kept for the write that follows.
        """
        table = self.read_samples()
        if "retry" in options:
            options["retry"] = tuple(options["retry"])
        return Reconciled(table, *table.reconcile(dataset, **options), options)

    def failed_rows(self, model: str) -> list[int]:
        """Live rows whose status is failed in a committed shard of ``model``."""
        state = self.read_samples(identity=False).state_codes
        failed = set()
        for meta in self._scan_shards(model):
            rows = meta.start + np.flatnonzero(np.asarray(meta.status) == STATUS_FAILED)
            failed.update(int(r) for r in rows if state[r] == STATE_LIVE)
        return sorted(failed)

    def sync_samples(
        self,
        dataset,
        frozen: bool = False,
        *,
        verify: bool = False,
        retry: Sequence[int] = (),
        keep_splits: bool = False,
        write: bool = True,
        planned: Reconciled | None = None,
    ) -> SampleChanges:
        """Bring the sample table up to ``dataset``; committed features are never touched.

        Samples are matched by content (:meth:`SampleTable.reconcile`): new and changed
        samples get new rows (new shards), a changed sample's old row is retired as stale,
        content found under another id moves its row, samples no longer in the dataset are
        marked removed, and labels and splits follow the data. With ``frozen``, any
        difference is refused instead. Only files whose stat changed are hashed, unless
        ``verify``.
        """
        if planned is None:
            planned = self.reconcile(dataset, verify=verify, retry=retry, keep_splits=keep_splits)
        table, grown, changes = planned.table, planned.grown, planned.changes
        if changes and frozen:
            raise DatasetChangedError(
                f"the dataset {dataset.source} has {changes.describe()} compared with the cache "
                f"{str(self.path)!r}, and the sample table is frozen; extract it into a new cache "
                "path, or drop frozen_samples (--frozen-samples) to update the cache."
            )
        if not write or not (changes or changes.refreshed):
            return changes
        try:
            self.check_writable()
        except CacheReadOnlyError:
            if changes:
                raise
            return changes  # only stats to refresh: a read-only cache hashes them again later
        with self._index_lock():
            current = self.read_samples()  # another writer may have updated it meanwhile
            if current.samples_digest != table.samples_digest:
                grown, changes = current.reconcile(dataset, **planned.options)
            atomic_write(self.samples_path, lambda tmp: self._write_table(tmp, grown))
        return changes

    def _write_table(self, tmp: Path, table: SampleTable) -> None:
        with new_h5(tmp) as f:
            write_samples(f, table)
            f.attrs.update(
                format=fmt.FORMAT,
                format_version=fmt.FORMAT_VERSION,
                shard_size=int(table.shard_size),
                n_samples=len(table),
                dataset=table.source,
                samples_digest=table.samples_digest,
                featurecache_version=__version__,
            )
            if table.starts is not None:
                f.create_dataset(fmt.LAYOUT_STARTS, data=np.asarray(table.starts, np.int64))

    # -- models ---------------------------------------------------------------------

    def model_dir(self, model: str) -> Path:
        return fmt.model_dir(self.path, model)

    def read_config(self, model: str) -> FeatureConfig | None:
        """The model's recorded configuration, or ``None`` if it is not registered."""
        if not fmt.config_file(self.path, model).exists():
            return None
        return read_config(self.path, model)

    def register_model(self, model: str, config: FeatureConfig) -> None:
        """Record the model's configuration once; raise if it differs from the recorded one."""
        recorded = self.read_config(model)
        if recorded is not None:  # a cache hit writes nothing
            check_config(model, recorded, config, self.path)
            return
        text = json.dumps(config.to_dict(), sort_keys=True, indent=1)
        if not create_once(fmt.config_file(self.path, model), lambda p: p.write_text(text)):
            check_config(model, self.read_config(model), config, self.path)

    def declare_layers(self, model: str, layers: Mapping[str, Mapping]) -> list[str]:
        """Record the layers a run is about to compute, so readers list them (every row
        pending) before their first shard commits; return the names new to the record.

        ``layers[name]`` holds ``n_features``, ``dtype`` and the layer's attributes (plain
        JSON values). Called by the writer holding the model's lock; writes nothing when
        every layer is already declared.
        """
        declared = read_declared_layers(self.path, model)
        new = [name for name in layers if name not in declared]
        if new:
            merged = {**declared, **{name: dict(layers[name]) for name in new}}
            self._write_declared(model, merged)
        return new

    def withdraw_layers(self, model: str, names: Sequence[str]) -> None:
        """Remove from the record those of ``names`` that have no committed shard: a run
        that failed before committing a layer leaves the cache listing what it listed."""
        committed = set().union(*self.done_layers(model).values())
        declared = read_declared_layers(self.path, model)
        kept = {k: v for k, v in declared.items() if k in committed or k not in names}
        if kept == declared:
            return
        if kept:
            self._write_declared(model, kept)
        else:
            fmt.layers_file(self.path, model).unlink(missing_ok=True)

    def _write_declared(self, model: str, declared: Mapping[str, Mapping]) -> None:
        text = json.dumps(declared, sort_keys=True, indent=1, default=_json_default)
        atomic_write(fmt.layers_file(self.path, model), lambda p: p.write_text(text))

    def check_version(self) -> None:
        """Raise :class:`CacheReadOnlyError` for a cache of an older format version: this
        featurecache reads it, and writes it only once ``featurecache upgrade`` rewrote it."""
        samples = self.samples_path if self.samples_path.is_file() else self.path
        if not samples.is_file():
            return
        try:
            with self._open(samples) as f:
                version = int(f.attrs.get("format_version", 1))
        except OSError:
            return  # a damaged index is derived data: the folder decides
        if version < fmt.FORMAT_VERSION:
            raise CacheReadOnlyError(
                f"the cache {str(self.path)!r} has format version {version}, which this "
                f"featurecache reads but does not write; run `featurecache upgrade "
                f"{self.path}` to rewrite it as version {fmt.FORMAT_VERSION}, then run this "
                "command again."
            )

    def check_writable(self, model: str | None = None) -> None:
        """Raise :class:`CacheReadOnlyError` if writing this cache (or model) would fail.

        Called before any compute, so a read-only cache costs a one-line error, not a
        forward pass that cannot be stored.
        """
        folders = [self.data_dir if self.data_dir.exists() else self.path.parent]
        if model is not None and self.model_dir(model).exists():
            folders.append(self.model_dir(model))
            folders += sorted(p for p in self.model_dir(model).glob("p-*") if p.is_dir())
        for folder in folders:
            if not os.access(folder, os.W_OK | os.X_OK):
                raise CacheReadOnlyError(
                    f"the cache {str(self.path)!r} needs new files in {str(folder)!r}, which "
                    "this user cannot write (a read-only disk or folder); extract into a cache "
                    "on a writable disk, or copy this one there first."
                )

    @contextlib.contextmanager
    def lock_model(self, model: str) -> Iterator[None]:
        """Hold the model's writer lock; raise :class:`CacheLockedError` if another writer has it."""
        path = self.model_dir(model) / ".writer.lock"
        # Without locks, one writer per model is the caller's contract.
        held = hold_writer_lock(path, self._locked_text(model)) if self.locking else None
        with held or contextlib.nullcontext():
            self.recover(model)
            yield

    def _locked_text(self, model: str) -> Callable[[str], str]:
        """Why ``model`` cannot be written, given the lock's ``owner`` (``pid N on HOST``)."""

        def text(owner: str) -> str:
            if owner_is_gone(owner):
                return (
                    f"model {model!r} of {str(self.path)!r} is locked by {owner}, which is no "
                    "longer running; a process it started may still hold the lock: wait a few "
                    "seconds for it to exit (or end it), then re-run."
                )
            return (
                f"another process ({owner or 'unknown'}) is writing model {model!r} into "
                f"{str(self.path)!r}; wait for it to finish, or write under another model name "
                "(name=, or --name)."
            )

        return text

    # -- shards ---------------------------------------------------------------------

    def shard_path(self, model: str, shard: int, layers: Sequence[str]) -> Path:
        return fmt.shard_file(self.path, model, shard, layers)

    def done_layers(self, model: str) -> dict[int, set[str]]:
        """Map each shard index to the layers committed for it.

        Each logged file is checked with one ``stat``: a file deleted by hand is not done
        (its rows are computed again), a file whose size changed is refused.
        """
        done: dict[int, set[str]] = {}
        for meta in filter(self._check_size, self._scan_shards(model)):
            for shard in meta.shards:
                done.setdefault(shard, set()).update(meta.layers)
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
        config: FeatureConfig,
        provenance: Mapping[str, str] | None = None,
        views: Mapping[str, ShardViews] | None = None,
    ) -> ShardMeta:
        """Write one shard file atomically and return what the commit log records of it.

        ``features[layer]`` has shape ``(n_rows, n_features)`` in the stored dtype;
        rows are ``start .. start + n_rows``. ``provenance`` (library versions) is
        recorded on the file. ``views[kind]`` holds the rows' extra views of that kind
        (``augment``, ``tta``) for the same layers. The shard counts once :meth:`publish`
        logs it.
        """
        content = ShardContent(
            model, shard, start, status, reasons, features, layer_attrs, config,
            dict(provenance or {}), dict(views or {}),
        )  # fmt: skip
        final = self.shard_path(model, shard, content.layers)
        return write_shard_file(final, self.path.parent, content)

    def publish(self, model: str, metas: Sequence[ShardMeta]) -> None:
        """Commit written shards: append them to the model's log (the writer lock's holder only)."""
        append_log(fmt.commit_log(self.path, model), metas)

    def record_run(self, model: str, rows: int, seconds: float, device: str) -> None:
        """Log one extraction's throughput (the report's cost table reads it)."""
        line = json.dumps({"rows": int(rows), "seconds": float(seconds), "device": device})
        append_text(fmt.run_log(self.path, model), line + "\n")

    def recover(self, model: str) -> None:
        """Make the log whole again after a crash (the writer lock's holder only).

        A last line cut short is removed, and shard files written but never logged are
        logged, so no finished work is lost and nothing is computed twice.
        """
        log = fmt.commit_log(self.path, model)
        if log.exists():
            repair_log(log)
        logged = read_log(log)
        remove_litter(self.path, model, logged)  # a compaction cut short
        present = [meta for meta in logged if self._check_size(meta)]
        if len(present) < len(logged):  # files deleted on purpose: recompute their rows
            rewrite_log(log, present)
        listed = {meta.file for meta in present}
        unlisted = [
            path
            for path in self._shard_files(model)
            if os.path.relpath(path, self.path.parent) not in listed
        ]
        append_log(log, [read_shard_meta(p, self.path.parent, self._open) for p in unlisted])

    def compact(self, model: str) -> int:
        """Pack the model's committed shard files into a few large segment files.

        Takes the model's writer lock (raises :class:`CacheLockedError` while another
        writer holds it), then rebuilds the index. Crash-safe: a kill at any moment leaves
        the old files or the segment, and reads return the same numbers throughout (see
        ``docs/cache-format.md``). Returns the number of segments written.

        Raises
        ------
        CacheReadOnlyError
            The cache cannot be written.
        """
        self.check_version()
        self.check_writable(model)
        with self.lock_model(model):
            written = self.compact_held(model)
        if written:
            self.rebuild_index()
        return written

    def compact_held(self, model: str) -> int:
        """:meth:`compact` for the holder of the model's writer lock (the end of a run)."""
        return compact_model(self.path, model, self._open)

    def _check_size(self, meta: ShardMeta) -> bool:
        """False for a logged shard file that is gone; raise if its size changed."""
        path = self.path.parent / meta.file
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if meta.size and size != meta.size:
            raise CacheCorruptError(
                f"shard file {str(path)!r} cannot be read (truncated file: {size} bytes, the "
                f"commit log records {meta.size}); delete it and re-run the same "
                "`featurecache extract` command to recompute it."
            )
        return True

    def _shard_files(self, model: str) -> list[Path]:
        folder = self.model_dir(model)
        return sorted(p for p in folder.glob(fmt.SHARD_GLOB) if TMP_MARK not in p.name)

    def _scan_shards(self, model: str) -> list[ShardMeta]:
        """The committed files of ``model``: what its log lists (a shard file never logged is
        not committed; the next writer's :meth:`recover` logs it)."""
        metas = read_log(fmt.commit_log(self.path, model))
        if metas:
            _check_shard_configs(model, metas, self.read_config(model), self.path.parent)
        return metas

    def status_counts(self, model: str, layers: Sequence[str]) -> tuple[int, int]:
        """Return ``(n_ok, n_failed)`` over the committed shards holding ``layers``."""
        by_shard: dict[tuple[int, ...], np.ndarray] = {}
        for meta in self._scan_shards(model):
            if set(layers) & set(meta.layers):
                by_shard.setdefault(meta.shards, meta.status)
        status = np.concatenate(list(by_shard.values())) if by_shard else np.zeros(0, np.int8)
        return int(np.sum(status == STATUS_OK)), int(np.sum(status == STATUS_FAILED))

    # -- the index ------------------------------------------------------------------

    def index_is_current(self) -> bool:
        """True when ``CACHE.h5`` lists every committed shard file on disk."""
        listed = listed_files(self.path, self._open)
        if listed is None:
            return False
        disk = dict(self._listing())
        return listed.keys() == disk.keys() and all(listed[m] == set(disk[m]) for m in disk)

    def models(self) -> list[str]:
        """The models of this cache, sorted."""
        return fmt.model_names(self.path)

    def rebuild_index_if_due(self) -> bool:
        """Rebuild the index when enough time has passed for its cost to stay small.

        Commits cost the same at shard 10 and at shard 10,000; the index, which lists every
        shard, is rebuilt at most every ``INDEX_MIN_SECONDS`` and never more often than
        keeps its cost under ``1 / INDEX_COST_RATIO`` of the run. Readers do not wait for
        it: they read the commit logs.
        """
        waited = time.monotonic() - self._index_written
        if waited < max(INDEX_MIN_SECONDS, INDEX_COST_RATIO * self._index_seconds):
            return False
        self.rebuild_index()
        return True

    def rebuild_index(self) -> None:
        """Rebuild ``CACHE.h5`` from the commit logs and rename it into place."""
        started = time.monotonic()
        self._rebuild_index()
        self._index_written = time.monotonic()
        self._index_seconds = self._index_written - started

    def _rebuild_index(self) -> None:
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
        models = [
            ModelIndex(
                model,
                self.read_config(model),
                self._scan_shards(model),
                read_runs(fmt.run_log(self.path, model)),
            )
            for model in self.models()
        ]
        write_index(self.path, self.samples_path, self.read_root_attrs(), models)
        return tuple((m.name, tuple(meta.file for meta in m.metas)) for m in models)

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        if self.locking:
            self.data_dir.mkdir(exist_ok=True)
        with exclusive(self.data_dir / ".index.lock") if self.locking else contextlib.nullcontext():
            yield

    # -- temporaries ----------------------------------------------------------------

    def remove_stale_temporaries(self) -> None:
        """Remove temporary files left by dead processes of this host."""
        folders = [self.path.parent, self.data_dir]
        if self.data_dir.exists():
            folders += [p for p in self.data_dir.glob("*") if p.is_dir()]
            folders += [p for p in self.data_dir.glob("*/p-*") if p.is_dir()]
            folders += [p for p in self.data_dir.glob("*/classifiers") if p.is_dir()]
        prefix = self.path.name
        for folder in folders:
            for tmp in folder.glob(f"*{TMP_MARK}*"):
                if folder == self.path.parent and not tmp.name.startswith(prefix):
                    continue
                if owner_is_dead(tmp.name):
                    with contextlib.suppress(OSError):  # a read-only cache keeps its litter
                        tmp.unlink(missing_ok=True)

    def _open(self, path: Path, mode: str = "r") -> h5py.File:
        return open_h5(path, mode, self.locking)


def check_config(
    model: str, recorded: FeatureConfig | None, requested: FeatureConfig, cache: Path
) -> None:
    """Raise :class:`ConfigMismatchError` naming every key field that differs."""
    differences = [] if recorded is None else recorded.differences(requested)
    if differences:
        raise ConfigMismatchError(
            f"model {model!r} in {str(cache)!r} was extracted with another configuration "
            f"({'; '.join(differences)}); pass another model name (name=, or --name) to store "
            "this one beside it, or use a new cache."
        )


def _check_shard_configs(
    model: str, metas: Sequence[ShardMeta], config: FeatureConfig | None, base: Path
) -> None:
    """A shard must carry the digest of the model's ``config.json``: never mix two configs."""
    if config is None:
        return
    expected = config.digest()
    for meta in metas:
        if meta.config_digest != expected:
            path = base / meta.file
            raise CacheCorruptError(
                f"shard file {str(path)!r} of model {model!r} was written with configuration "
                f"{meta.config_digest[:12]}…, but the model's config.json records "
                f"{expected[:12]}…; delete the shard file and re-run the same "
                "`featurecache extract` command to recompute it."
            )


def _json_default(value):
    """NumPy scalars and arrays (layer attributes) as plain JSON values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
