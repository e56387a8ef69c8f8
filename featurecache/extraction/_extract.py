"""Extraction: run a frozen backbone over a dataset and commit features shard by shard."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from featurecache.cache import (
    Store,
    StoredClassifier,
    check_config,
    open_cache,
    read_classifiers,
    write_classifier,
)
from featurecache.core._paths import check_name, check_writable
from featurecache.core._spec import DEFAULT_MODEL, MAX_IMAGE_SIZE, POOL_METHODS, FeatureSpec
from featurecache.core._validation import ParameterError
from featurecache.data._datasets import Dataset, follow_split, load_dataset
from featurecache.engines._engine import Engine, Session
from featurecache.engines._job import Job
from featurecache.engines._local import LocalEngine
from featurecache.engines._options import RunOptions
from featurecache.engines._runner import Plan, resolve_decode
from featurecache.exceptions import CacheReadOnlyError, ConfigMismatchError
from featurecache.models._layers import LayerInfo, check_layers, default_pool
from featurecache.models._rebuild import feature_config
from featurecache.models._registry import LoadedBackbone, load_backbone

logger = logging.getLogger(__name__)

__all__ = [
    "extract", "extract_spec", "prepare", "check_cache", "cache_name",
    "ExtractResult", "FeatureSpec", "DEFAULT_MODEL", "MAX_IMAGE_SIZE",
]  # fmt: skip

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+:-]+")


@dataclass(frozen=True)
class ExtractResult:
    """What one call of :func:`extract` did.

    ``computed`` lists the layers this call computed; it is empty on a cache hit.
    """

    cache: Path
    model: str
    layers: tuple[str, ...]
    computed: tuple[str, ...]
    n_samples: int
    n_ok: int
    n_failed: int
    rows_computed: int
    shards_written: int
    seconds: float
    device: str = ""
    compute_dtype: str = ""
    #: ``Cache.counts`` of the requested layers together (a row is ok when every layer is,
    #: failed when any failed): ok, failed, pending, removed and stale rows per split and
    #: ``"all"``.
    counts: dict = field(default_factory=dict, compare=False)
    #: How the dataset differed from the cache's samples, in words (``"no change"``).
    changes: str = "no change"

    @property
    def hit(self) -> bool:
        return self.shards_written == 0

    @property
    def images_per_second(self) -> float:
        return self.rows_computed / self.seconds if self.seconds > 0 else 0.0


def extract(
    data: str | os.PathLike | Dataset,
    cache: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    weights: str | None = None,
    layers: Sequence[str] | None = None,
    pool: str | None = None,
    image_size: int | None = None,
    resize: str | None = None,
    dtype: str = "auto",
    store_dtype: str = "float32",
    decode: str = "auto",
    name: str | None = None,
    split: str | None = None,
    seed: int = 0,
    resplit: bool = False,
    frozen_samples: bool = False,
    verify: bool = False,
    retry_failed: bool = False,
    prompts: Sequence[str] | None = None,
    views: int = 0,
    augment: str | None = None,
    tta: str | None = None,
    options: RunOptions | None = None,
    engine: Engine | None = None,
) -> ExtractResult:
    """Extract features of ``layers`` of a frozen ``model`` over ``data`` into ``cache``.

    The keyword arguments up to ``seed``, and ``views``, ``augment`` and ``tta``, define the
    features (they make the cache key,
    :class:`featurecache.FeatureConfig`); ``options`` and ``engine`` only say how and
    where they are computed. Every keyword but ``options`` and ``engine`` makes one
    :class:`featurecache.FeatureSpec`, validated once, here (:func:`extract_spec` takes one).

    Parameters
    ----------
    data : str, path or Dataset
        See :func:`featurecache.load_dataset`.
    cache : str or path
        The cache index file (``.h5``); created if missing, resumed if present. Its folder
        must exist.
    model : str
        A name from :func:`featurecache.list_backbones`.
    weights : str, optional
        ``DEFAULT``, a torchvision weights name, ``none`` (seeded random init) or a
        local state-dict file. Defaults to the backbone's default.
    layers : sequence of str, optional
        Names from :func:`featurecache.list_layers`; all are captured in one forward
        pass. Defaults to the backbone's default layers. A plain string is refused:
        write ``["layer1"]`` for one layer.
    pool : str, optional
        ``avg`` (default), ``max``, ``avgmax`` or ``flatten`` for conv maps; ``cls``
        (default) or ``mean`` for token outputs.
    image_size : int, optional
        Crop size S (1 to ``MAX_IMAGE_SIZE``, 4096); the backbone's default when omitted.
    resize : {"crop", "squash", "pad"}, optional
        How an image becomes an S x S input: ``crop`` resizes the short side and
        centre-crops, ``squash`` resizes to S x S, ``pad`` letterboxes to S x S with the mean
        colour. The model's own preprocessing when omitted (``crop`` for torchvision and
        EfficientNet-Lite). Part of the cache key.
    dtype : {"auto", "float32", "bfloat16", "float16"}
        Autocast dtype of the forward pass. ``auto`` keeps the cached model's, else
        bfloat16 where the engine's device supports it and float32 elsewhere.
    store_dtype : {"float32", "float16"}
        Dtype of the stored features.
    decode : {"auto", "exact", "fast", "gpu"}
        How image files become pixels. ``exact`` decodes at full size; ``fast`` decodes a
        JPEG at least twice the resize target at 1/2, 1/4 or 1/8 scale in the DCT domain
        first (faster; pixels change slightly); ``gpu`` decodes JPEG batches with nvJPEG on
        a CUDA device, other images as ``exact``. ``auto`` keeps the cached model's, else
        ``DEFAULT_DECODE``. Arrays in memory are never decoded.
    name : str, optional
        Name of the model in the cache; the backbone name by default.
    split : str, optional
        ``random:FRACTION`` or ``none`` for datasets without their own split. A cache keeps
        the split its samples were given: a later run without ``split`` keeps it (new
        samples under a random split are assigned from their id and the stored seed), and
        one asking for another split is refused unless ``resplit``. A :class:`Dataset`
        without splits gets it; one that has exactly this split keeps it; one with other
        splits refuses it unless ``resplit``, as data read from files does.
    seed : int
        Seed of the random split and of ``weights="none"`` (0 to 2**32 - 1).
    resplit : bool
        Replace the splits of data that has its own (split folders, a split column) with
        ``split``; without it such data refuses ``split``.
    frozen_samples : bool
        Refuse a dataset that differs from the cache's samples. By default a grown or
        changed dataset updates the cache, matching samples by content digest: new samples,
        and samples whose content changed, get new rows and only they are computed (a
        changed sample's old row is retired as stale); content found under another name
        keeps its row; removed samples are marked removed; labels follow the data; a stored
        split is kept (see ``split``). Committed features are never rewritten.
    verify : bool
        Hash every file to compare it with the cache; by default only files whose size,
        modification time, change time or inode differ from the cache's record are hashed.
    retry_failed : bool
        Compute the rows that failed for this model again, as new rows (their old rows
        are retired as stale). A failed file whose content changed is retried anyway.
    prompts : sequence of str, optional
        Models with a text tower (OpenCLIP): the templates of the zero-shot classifier
        stored beside the features, each holding ``{}`` where a class name goes; the
        default is :data:`featurecache.models.DEFAULT_PROMPTS`. Not part of the key: the
        features do not depend on it. Backbones whose classifier is removed store it too
        (see :meth:`featurecache.cache.Cache.classifiers`).
    views : int
        Training views per train and val row (any row not in the test split), view 0 the
        plain view: 2 to ``MAX_VIEWS`` (64) with ``augment``, 0 (default) for none. Test
        rows get view 0 only. Part of the key, with ``augment`` and ``seed``.
    augment : str, optional
        The augmentation of views ``1 .. views - 1``: torchvision v2 transforms, e.g.
        ``"flip,rrc:0.35-1,jitter:0.2"`` (grammar in ``docs/views.md``). Each view's random
        state comes from (sample id, view index, ``seed``), so views are the same for any
        batch size, worker count, engine and after a resume.
    tta : str, optional
        Test-time views for every row of every split, e.g. ``"crops:0.875,flip"`` (the
        plain view, five crops and the mirror of each: 12 views). Part of the key.
    options : RunOptions, optional
        Batch size, data-loading workers, device, shard size, locking, progress:
        settings that never change the stored numbers. ``RunOptions()`` by default.
    engine : Engine, optional
        Where the shards run: :class:`featurecache.LocalEngine` (default, this process)
        or :class:`featurecache.RayEngine`. Every engine writes the same cache.

    Returns
    -------
    ExtractResult

    Raises
    ------
    InvalidArgumentError, UnknownNameError, ConfigMismatchError, DatasetChangedError
        Before any work, when the arguments, dataset or cache do not fit.
    BatchError
        When a batch raises or yields NaN/Inf; shards committed before it are kept.
    CacheLockedError
        When another process writes the same model into the same cache.
    """
    spec = FeatureSpec(
        model=model, weights=weights, layers=layers, pool=pool, image_size=image_size,
        resize=resize, dtype=dtype, store_dtype=store_dtype, decode=decode, name=name,
        split=split, seed=seed, resplit=resplit, frozen_samples=frozen_samples, verify=verify,
        retry_failed=retry_failed, prompts=prompts, views=views, augment=augment, tta=tta,
    )  # fmt: skip
    return extract_spec(data, cache, spec.validate(), options=options, engine=engine)


def extract_spec(
    data: str | os.PathLike | Dataset,
    cache: str | os.PathLike,
    spec: FeatureSpec,
    *,
    options: RunOptions | None = None,
    engine: Engine | None = None,
    on_dataset: Callable[[Dataset], None] | None = None,
) -> ExtractResult:
    """:func:`extract` with the request as one :class:`FeatureSpec`.

    A spec :meth:`~FeatureSpec.validate` returned is taken as it is; any other is validated
    here. Then, in this order and before any compute: the engine opens its session (and
    refuses a device it cannot run), the cache's path is checked, and the data is read.

    Parameters
    ----------
    data, cache, options, engine
        As for :func:`extract`.
    spec : FeatureSpec
        What to compute.
    on_dataset : callable, optional
        Called with the dataset once it is read, before any compute (the command line
        prints what it understood of the data).

    Returns
    -------
    ExtractResult
    """
    started = time.perf_counter()
    if not isinstance(spec, FeatureSpec):
        raise ParameterError("spec", "extract_spec", "a FeatureSpec", spec)
    spec = spec.validate()
    options, engine = _check_execution(options, engine)
    with engine.session(options) as session:
        store = check_cache(cache, options.locking)
        dataset = load_dataset(data, split=spec.split, seed=spec.seed, resplit=spec.resplit)
        if on_dataset is not None:
            on_dataset(dataset)
        job = prepare(dataset, store, spec, options=options, session=session)
        plan, written = job.plan(), 0  # from the log alone: a cache hit takes no lock
        if plan.work:
            job.store.check_writable(job.model)  # before any compute
            with job.store.lock_model(job.model):  # which also logs shards a crash left out
                plan = job.plan()
                if plan.work:
                    _run(session, job, plan)
                    written = len(plan.work)
        if not written:
            job.refresh()
    return _result(job, plan, written, time.perf_counter() - started, session.describe())


def _run(session: Session, job: Job, plan: Plan) -> None:
    """Run the plan, then compact its shards; whatever happens, the index ends up listing
    every committed file.

    The requested layers are recorded first (readers list them from the first second); a
    run that fails forgets those it committed nothing of, so the cache lists what it did.
    """
    began = time.perf_counter()
    declared = job.declare()
    try:
        session.run(job, plan)
        job.compact()
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped the run matters more
            job.withdraw(declared)
        with contextlib.suppress(Exception):
            job.finish()
        raise
    # Logged before the index is rebuilt, so the index carries the run's throughput at once.
    job.store.record_run(job.model, plan.n_rows, time.perf_counter() - began, session.describe())
    job.finish()


def prepare(
    dataset: Dataset, store: Store, spec: FeatureSpec, *, options: RunOptions, session: Session
) -> Job:
    """Create the sample table, register the model and store its fixed classifiers, for a
    validated ``spec``: what the request means for this model and this cache.

    The checks that need the model (its layers, pooling, the stored config) run here; the
    compute dtype is resolved by ``session`` (where the shards will run). Nothing is written
    unless every check passes.
    """
    model_name = spec.name or cache_name(spec.model)
    planned = None
    if store.has_samples():  # compared by content now, written once every check has passed
        dataset, keep_splits = follow_split(
            dataset, store.read_samples(False), spec.split, spec.resplit
        )
        retry = store.failed_rows(model_name) if spec.retry_failed else ()
        planned = store.reconcile(dataset, verify=spec.verify, retry=retry, keep_splits=keep_splits)
        if planned.changes and spec.frozen_samples:
            store.sync_samples(dataset, frozen=True, planned=planned)  # raises, naming them
    changes = None if planned is None else planned.changes
    backbone = load_backbone(
        spec.model, spec.weights, seed=spec.seed, image_size=spec.image_size, resize=spec.resize
    )
    infos = {info.name: info for info in backbone.layers}
    requested = tuple(dict.fromkeys(spec.layers or backbone.default_layers))
    check_layers(list(infos.values()), requested, model=spec.model)
    pooling = _resolve_pool(spec.pool, [infos[layer] for layer in requested])
    previous = store.read_config(model_name) if store.has_samples() else None
    decode_mode = resolve_decode(
        spec.decode, session.device, previous, files=dataset.arrays is None,
        backend=backbone.preprocess.backend,
    )  # fmt: skip
    if spec.view_sets is not None and decode_mode == "gpu":
        raise ParameterError(
            "decode", "extract", "'exact' or 'fast' with views", spec.decode,
            "Views are made from pixels decoded on the CPU; pass decode='exact'.",
            cli_hint="Views are made from pixels decoded on the CPU; pass --decode exact.",
        )  # fmt: skip
    config = feature_config(
        backbone, pooling, spec.store_dtype, session.resolve_dtype(spec.dtype, previous),
        decode_mode, {} if spec.view_sets is None else spec.view_sets.to_dict(),
    )  # fmt: skip
    if previous is not None:
        check_config(model_name, previous, config, store.path)
    class_names = _class_names(dataset, planned)
    zeroshot = _zeroshot(store, model_name, backbone, class_names, spec.prompts)
    if previous is None or changes:
        store.check_writable()  # a new cache, a new model or new samples: before any work
    if planned is None:
        store.create_samples(dataset, options.shard_size)
    else:
        changes = store.sync_samples(dataset, planned=planned)
        if changes:
            logger.info("%s: %s since the cache was made", dataset.source, changes.describe())
    store.register_model(model_name, config)
    _store_classifiers(store, model_name, [backbone.imagenet, zeroshot])
    dataset = _aligned(dataset, store)
    # Another process rebuilds the backbone from this: a weights file by its absolute path.
    portable_weights = config.weights if config.weights.startswith("file:") else spec.weights
    return Job(
        store, dataset, model_name, requested, infos, pooling, config, portable_weights, backbone,
        changes="no change" if not changes else changes.describe(),
    )  # fmt: skip


def cache_name(model: str) -> str:
    """The default name of a backbone's features in a cache: one folder, one HDF5 group.

    Hub ids and local folders (``open_clip:ViT-B-32/openai``, ``hf:facebook/dinov2-small``)
    hold ``/``; each run of characters a folder name cannot hold becomes ``--``, as in the
    Hugging Face hub cache.
    """
    return _UNSAFE.sub("--", str(model)).strip("-") or "model"


def _class_names(dataset: Dataset, planned) -> tuple[str, ...]:
    """The sample table's class names once brought up to ``dataset`` (new classes appended)."""
    return tuple(dataset.class_names if planned is None else planned.grown.class_names)


def _zeroshot(
    store: Store, model: str, backbone: LoadedBackbone, class_names: Sequence[str], prompts
) -> StoredClassifier | None:
    """The zero-shot classifier to store, or None (no text tower, or already stored).

    A class list the stored classifiers lack (the dataset grew by a class) gets its own
    classifier from the text tower, named in the log; other prompts are refused here,
    before anything is written.
    """
    if backbone.zeroshot is None:
        return None
    class_names = tuple(class_names)
    same = read_classifiers(store.path, model, class_names).get("zeroshot")
    if same is not None and same.prompts == prompts:
        return None
    stored = read_classifiers(store.path, model).get("zeroshot")
    if stored is not None and stored.prompts != prompts:
        shown = "; ".join(stored.prompts)
        raise ConfigMismatchError(
            f"model {model!r} in {str(store.path)!r} stores a zero-shot classifier of other "
            f"prompts ({shown[:120]}); pass another model name (name=, or --name) to store "
            "this one beside it."
        )
    if stored is not None:
        logger.info(
            "%s: the classes changed (%s): building the zero-shot classifier of %d classes",
            model, _class_change(stored.class_names, class_names), len(class_names),
        )  # fmt: skip
    else:
        logger.info("%s: building the zero-shot classifier of %d classes", model, len(class_names))
    return backbone.zeroshot(class_names, prompts)


def _class_change(before: Sequence[str], after: Sequence[str]) -> str:
    """``added 'zebra'; removed 'ant'`` (or ``reordered``), names shortened past 120 chars."""
    added = [name for name in after if name not in before]
    removed = [name for name in before if name not in after]
    parts = [f"{what} {', '.join(map(repr, names))}" for what, names in
             (("added", added), ("removed", removed)) if names]  # fmt: skip
    text = "; ".join(parts) or "reordered"
    return text if len(text) <= 120 else text[:117] + "..."


def _store_classifiers(
    store: Store, model: str, classifiers: Sequence[StoredClassifier | None]
) -> None:
    """Write the fixed classifiers once; a read-only cache keeps what it has."""
    classifiers = [c for c in classifiers if c is not None]
    if not classifiers:
        return
    try:
        store.check_writable(model)
    except CacheReadOnlyError:
        logger.info("%s: read-only cache, its classifiers are not stored", model)
        return
    for classifier in classifiers:
        write_classifier(store.path, model, classifier)


def _aligned(dataset: Dataset, store: Store) -> Dataset:
    """The dataset in the cache's row order (the same order unless the dataset changed), with
    the content digest each file must still have when it is decoded."""
    table = store.read_samples()
    same = len(table) == len(dataset) and not table.removed_mask.any()
    if same and table.ids.tolist() == dataset.ids.tolist():
        return dataset.with_samples(digests=table.digests)
    return dataset.aligned_to(table)


def _result(job: Job, plan: Plan, written: int, seconds: float, device: str) -> ExtractResult:
    counts = open_cache(job.store.path).counts(job.model, job.layers)
    return ExtractResult(
        cache=job.store.path,
        model=job.model,
        layers=job.layers,
        computed=tuple(sorted({layer for _, missing in plan.work for layer in missing})),
        n_samples=len(job.dataset),
        n_ok=counts["all"]["ok"],
        n_failed=counts["all"]["failed"],
        rows_computed=plan.n_rows,
        shards_written=written,
        seconds=seconds,
        device=device,
        compute_dtype=job.config.compute_dtype,
        counts=counts,
        changes=job.changes,
    )


def _resolve_pool(pool: str | None, infos: Sequence[LayerInfo]) -> str:
    kinds = {info.kind for info in infos}
    # SigLIP-style token outputs: no class token to take
    no_class_token = any(info.kind == "tokens" and info.prefix_tokens == 0 for info in infos)
    if pool is None:
        if kinds not in ({"tokens"}, {"tokens", "vector"}):
            return default_pool("map")
        return "mean" if no_class_token else default_pool("tokens")
    accepted = {kind: POOL_METHODS[kind] for kind in ("map", "tokens")}  # vectors take no --pool
    if not any(pool in accepted.get(kind, ()) for kind in kinds):
        options = sorted({m for kind in kinds for m in accepted.get(kind, ())}) or ["none needed"]
        raise ParameterError(
            "pool", "extract",
            f"one of {', '.join(options)} for the requested layers ({', '.join(sorted(kinds))} outputs)",
            pool,
        )  # fmt: skip
    if no_class_token and "cls" in pool.split("+"):
        raise ParameterError(
            "pool", "extract", "'mean' for the token outputs of a model without a class token",
            pool,
        )  # fmt: skip
    return pool


def _check_execution(
    options: RunOptions | None, engine: Engine | None
) -> tuple[RunOptions, Engine]:
    """The defaults for ``None``; anything but a RunOptions and an Engine is refused."""
    options = RunOptions() if options is None else options
    engine = LocalEngine() if engine is None else engine
    if not isinstance(options, RunOptions):
        raise ParameterError("options", "extract", "None or a RunOptions", options)
    if not isinstance(engine, Engine):
        raise ParameterError(
            "engine", "extract", "None or an Engine (LocalEngine(), RayEngine(...))", engine
        )
    return options, engine


def check_cache(cache: str | os.PathLike, locking: bool | None = None) -> Store:
    """The cache's :class:`Store`, after checking its path: a name the file system takes
    (checked first: a name too long makes every later look-up raise), a file that is a
    featurecache cache or nothing yet, and for a new cache a folder that can be written.

    Raises
    ------
    ParameterError
        About ``cache``, the parameter of :func:`extract`.
    """
    check_name(cache, "cache", "extract")
    store = Store(cache, locking=locking)
    store.check_path()
    store.check_version()  # an older cache is read, never written, until upgraded
    if not store.path.exists():  # an existing cache is the store's to judge (a hit writes nothing)
        check_writable(store.path, "cache", "extract", probe=True)
    return store
