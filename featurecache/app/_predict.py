"""Predict new images with a head fitted by ``featurecache fit``.

The head file records the backbone, weights digest, preprocessing, pooling and
layer it was trained on; prediction rebuilds exactly that and refuses weights
whose digest differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from featurecache.cache import STATUS_OK, DataSource, FeatureConfig, SampleTable, atomic_write
from featurecache.core._paths import check_not_input, check_output
from featurecache.core._validation import (
    ParameterError,
    check_bool,
    check_choice,
    check_int,
    check_workers,
)
from featurecache.data._datasets import IMAGE_EXTENSIONS, Dataset, is_image, list_images, read_table
from featurecache.engines._options import DEVICES
from featurecache.exceptions import InvalidArgumentError

__all__ = ["predict", "predict_imagenet", "write_predictions", "check_predictions_path", "COLUMNS"]

#: The first columns of every predictions CSV; a file whose header starts so is one predict
#: wrote, and may be replaced.
COLUMNS = ("id", "path", "status", "reason", "prediction")


def predict(
    images: str | os.PathLike,
    head: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str = "auto",
    workers: int | str = "auto",
):
    """Predict class names (and probabilities, where the head has them) for new images.

    Parameters
    ----------
    images : str or path
        A folder (searched recursively) or a CSV manifest with a ``path`` column.
    head : str or path
        A ``.joblib`` head file written by ``featurecache fit``.

    Returns
    -------
    pandas.DataFrame
        One row per image: ``id``, ``path``, ``status`` (``ok`` or ``failed``),
        ``reason``, ``prediction`` and ``proba_<class>`` columns when available.
    """
    from pipelines import load_head
    from pipelines.results._feature_sets import set_parts

    _check_run(batch_size, device, workers, "predict")
    record = load_head(head)
    dataset = _image_list(Path(images), record.class_names)
    parts = set_parts(record.provenance)
    if parts is not None:  # a feature set: every part rebuilt, rows ok in every part
        table, ok, X = _set_features(
            dataset, parts, f"the head {str(head)!r}", batch_size, device, workers
        )
    else:
        table, ok, X = _features(
            dataset, record.config, record.layer, f"the head {str(head)!r}", batch_size,
            device, workers,
        )  # fmt: skip
    table["prediction"] = ""
    if ok.any():
        _fill_predictions(table, ok, record, X)
    return table


def predict_imagenet(
    images: str | os.PathLike | None,
    cache: str | os.PathLike,
    *,
    model: str | None = None,
    top: int = 5,
    batch_size: int = 64,
    device: str = "auto",
    workers: int | str = "auto",
):
    """What the pretrained network sees: its own ImageNet classes, from the cache's classifier.

    Parameters
    ----------
    images : str, path or None
        New images (a folder or a CSV with a ``path`` column), run through the cached model's
        backbone; ``None`` predicts every sample already in the cache, without torch.
    cache : str or path
        A cache whose ``model`` stores its ``imagenet`` classifier (``featurecache extract``
        stores it for torchvision, timm and EfficientNet-Lite backbones).
    model : str, optional
        The model in the cache; by default the only one that stores an ImageNet classifier.
    top : int
        Classes listed per image.

    Returns
    -------
    pandas.DataFrame
        One row per image: :data:`COLUMNS` (``path`` empty for cached samples; ``prediction``
        the top ImageNet class), ``imagenet_index``, ``confidence`` (its softmax probability)
        and ``top`` (the ``top`` classes with their probabilities); cached samples also
        have ``split`` and ``true_class``.
    """
    from pipelines import open_cache
    from pipelines.heads._fixed import imagenet_predictions, stored_classifier

    top = check_int(top, "top", "predict_imagenet", low=1)
    _check_run(batch_size, device, workers, "predict_imagenet")
    opened = open_cache(cache)
    model = _imagenet_model(opened, model)
    classifier = stored_classifier(opened, model, "imagenet")  # or why there is none
    if images is None:
        table = imagenet_predictions(opened, model, top=top).assign(path="", status="ok", reason="")
        return table[[*COLUMNS, *(c for c in table.columns if c not in COLUMNS)]]
    config = FeatureConfig.from_dict(opened.entry(model, classifier.layer).provenance)
    dataset = _image_list(Path(images), opened.class_names)
    table, ok, X = _features(
        dataset, config, classifier.layer, f"model {model!r} of {str(cache)!r}", batch_size,
        device, workers,
    )  # fmt: skip
    for column in ("prediction", "imagenet_index", "confidence", "top"):
        table[column] = "" if column in ("prediction", "top") else np.nan
    if ok.any():
        from scipy.special import softmax

        proba = softmax(classifier.logits(X).astype(np.float64), axis=1)
        order = np.argsort(-proba, axis=1, kind="stable")[:, :top]
        names = classifier.class_names
        table.loc[ok, "prediction"] = [names[k] for k in order[:, 0]]
        table.loc[ok, "imagenet_index"] = order[:, 0]
        table.loc[ok, "confidence"] = proba[np.arange(len(order)), order[:, 0]]
        table.loc[ok, "top"] = [
            "; ".join(f"{names[k]} ({p[k]:.2f})" for k in best)
            for best, p in zip(order, proba, strict=True)
        ]
    return table


def _check_run(batch_size, device, workers, owner: str) -> None:
    check_int(batch_size, "batch_size", owner, low=1)
    check_choice(device, "device", owner, DEVICES)
    check_workers(workers, "workers", owner)


def _imagenet_model(cache, model: str | None) -> str:
    """The model named, or the only one that stores an ImageNet classifier (or the cache's
    only model, whose lack of one :func:`~pipelines.heads._fixed.stored_classifier` explains)."""
    from pipelines.heads._fixed import random_weights

    if model is not None:
        return model
    stored = [
        m
        for m in cache.models
        if "imagenet" in cache.classifiers(m) and not random_weights(cache, m)
    ]
    if not stored and len(cache.models) == 1:
        return cache.models[0]
    if len(stored) != 1:
        raise ParameterError(
            "model", "predict_imagenet",
            f"one of {', '.join(repr(m) for m in stored)}" if stored else
            "a model that stores an ImageNet classifier (extract a torchvision, timm or "
            "EfficientNet-Lite backbone)",
            model,
        )  # fmt: skip
    return stored[0]


def _features(dataset: Dataset, config: FeatureConfig, layer: str, what: str, batch_size: int,
              device: str, workers: int | str):  # fmt: skip
    """Run the backbone of ``config`` over new images: the table, the ok rows and their features.

    The backbone is rebuilt exactly (weights, image size, resize mode); weights whose digest
    differs from ``config``'s are refused.
    """
    table, ok, X = _layers_features(dataset, config, (layer,), what, batch_size, device, workers)
    return table, ok, X[layer]


def _layers_features(dataset: Dataset, config: FeatureConfig, layers: tuple[str, ...],
                     what: str, batch_size: int, device: str, workers: int | str):  # fmt: skip
    """:func:`_features` of several layers of one backbone, from one pass: the table, the ok
    rows, and ``{layer: features of the ok rows}``."""
    import pandas as pd

    from featurecache.engines._options import resolve_loader_workers
    from featurecache.engines._runner import Plan, ShardRunner, resolve_device

    backbone = _rebuild(config, what)
    infos = {info.name: info for info in backbone.layers if info.name in layers}
    device = resolve_device(device, owner="predict")
    runner = ShardRunner(backbone, infos, config.pooling, config, device)
    plan = Plan(len(dataset), len(dataset), ((0, tuple(layers)),))
    loaders = resolve_loader_workers(workers, dataset, device=device.type)
    result = next(runner.run(dataset, plan, batch_size, loaders))
    ok = result.status == STATUS_OK
    table = pd.DataFrame(
        {
            "id": dataset.ids,
            "path": dataset.paths,
            "status": np.where(ok, "ok", "failed"),
            "reason": result.reasons,
        }
    )
    return table, ok, {name: result.features[name][ok].astype(np.float32) for name in layers}


def _set_features(dataset: Dataset, parts: list[dict], what: str, batch_size: int,
                  device: str, workers: int | str):  # fmt: skip
    """:func:`_features` of each part of a feature set, concatenated in the parts' order.

    Parts of one feature configuration (one backbone) share one pass. A row is ok when it is
    ok in every part; a row failed in a part takes that part's reason.
    """
    groups: dict[str, tuple[FeatureConfig, list[str]]] = {}
    keys = []  # each part's group
    for part in parts:
        config = part["provenance"].get("config")
        config = FeatureConfig.from_dict(json.loads(config) if isinstance(config, str) else config)
        key = json.dumps(config.to_dict(), sort_keys=True, default=str)
        groups.setdefault(key, (config, []))[1].append(part["layer"])
        keys.append(key)
    table, ok_all, by_part = None, np.ones(len(dataset), dtype=bool), {}
    for key, (config, layers) in groups.items():
        group_table, ok, features = _layers_features(
            dataset, config, tuple(dict.fromkeys(layers)), what, batch_size, device, workers
        )
        for layer, X in features.items():
            full = np.zeros((len(dataset), X.shape[1]), dtype=np.float32)
            full[ok] = X
            by_part[(key, layer)] = full
        if table is None:
            table = group_table
        else:
            newly = ~ok & ok_all
            table.loc[newly, "status"] = "failed"
            table.loc[newly, "reason"] = group_table.loc[newly, "reason"]
        ok_all &= ok
    blocks = [by_part[(key, p["layer"])] for key, p in zip(keys, parts, strict=True)]
    return table, ok_all, np.hstack(blocks)[ok_all]


def _fill_predictions(table, ok: np.ndarray, record, X: np.ndarray) -> None:
    """Class names (and ``proba_<class>`` where the head has them) of the ``ok`` rows."""
    estimator = record.estimator
    table.loc[ok, "prediction"] = [record.class_names[int(k)] for k in estimator.predict(X)]
    if hasattr(estimator, "predict_proba"):
        proba = estimator.predict_proba(X)
        for j, k in enumerate(estimator.classes_):
            table.loc[ok, f"proba_{record.class_names[int(k)]}"] = proba[:, j]


def write_predictions(table, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the predictions CSV atomically.

    Parameters
    ----------
    table : pandas.DataFrame
        What :func:`predict` returned.
    out : str or path
        The CSV; see :func:`check_predictions_path`.
    force : bool
        Replace an existing file that is not a predictions CSV.

    Raises
    ------
    ParameterError
        ``out`` cannot be written, or is a file featurecache did not write (without ``force``).
    """
    target = check_predictions_path(out, force=force, owner="write_predictions")
    return atomic_write(target, lambda p: table.to_csv(p, index=False))


def check_predictions_path(
    out: str | os.PathLike,
    *,
    force: bool = False,
    probe: bool = False,
    owner: str = "predict",
    inputs: dict[str, str | os.PathLike] | None = None,
) -> Path:
    """Check a predictions CSV path before any work and return it.

    Refused: a name with an image extension (``--out`` aimed at an input image; even with
    ``force``), a folder, a folder that cannot be written, and an existing file whose first
    line is not a predictions header (:data:`COLUMNS`) unless ``force``. ``probe`` also
    creates and removes a temporary file in the target's folder: prediction runs for minutes
    before it writes. ``inputs`` (``{what: path}``: the head file, an IMAGES CSV) are refused
    as ``out`` even with ``force``.
    """
    force = check_bool(force, "force", owner)
    if isinstance(out, (str, os.PathLike)) and is_image(Path(os.fspath(out))):
        raise ParameterError(
            "out", owner, "a CSV file path", os.fspath(out),
            "It names an image; predictions are CSV text, write them to a .csv file.",
        )  # fmt: skip
    target = check_output(
        out, "out", owner, kind="file", ours=_is_predictions, force=force, probe=probe,
        expected="a new file path or a predictions CSV",
    )  # fmt: skip
    check_not_input(target, inputs or {}, "out", owner)
    return target


def _is_predictions(path: Path) -> bool:
    """True when ``path`` is a CSV whose header starts with :data:`COLUMNS`."""
    try:
        with open(path, "rb") as stream:
            first = stream.readline(4096)
    except OSError:
        return False
    return first.rstrip(b"\r\n").split(b",")[: len(COLUMNS)] == [c.encode() for c in COLUMNS]


def _rebuild(config: FeatureConfig, what: str):
    """The backbone ``config`` records, checked field by field (weights digest, architecture,
    preprocessing...) against what this featurecache builds."""
    from featurecache.models._rebuild import rebuild_backbone

    return rebuild_backbone(
        config,
        mismatch=f"{what} was trained on {config.backbone} with another configuration than "
        "this featurecache builds",
        fix="provide the original weights file and featurecache version, or extract the "
        "features again into a new cache and fit the head on them.",
    )


def _image_list(images: Path, class_names: tuple[str, ...]) -> Dataset:
    if images.is_dir():
        paths = list_images(images)  # the same rule as extract: no hidden files or folders
        ids = [p.relative_to(images).as_posix() for p in paths]
    elif images.suffix.lower() == ".csv" and images.is_file():
        table = read_table(images, "IMAGES CSV")
        if "path" not in table.columns:
            raise InvalidArgumentError(
                f"IMAGES CSV {str(images)!r} must have a path column; found {','.join(table.columns)}."
            )
        ids = list(table["path"])
        paths = [(images.parent / p).absolute() for p in ids]
    else:
        raise InvalidArgumentError(
            f"IMAGES must be a folder of images or a CSV with a path column; got {str(images)!r}."
        )
    if not paths:
        raise InvalidArgumentError(
            f"IMAGES {str(images)!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    n = len(paths)
    table = SampleTable(
        ids=np.array(ids, dtype=object),
        labels=np.full(n, -1, dtype=np.int64),
        splits=np.full(n, "", dtype=object),
        class_names=class_names,
        source=str(DataSource("predict", str(images))),
    )
    return Dataset(table, paths=np.array([str(p) for p in paths], dtype=object))
