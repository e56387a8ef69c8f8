"""Predict new images with a head fitted by ``featurecache fit``.

The head file records the backbone, weights digest, preprocessing, pooling and
layer it was trained on; prediction rebuilds exactly that and refuses weights
whose digest differs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featurecache._data import IMAGE_EXTENSIONS, Dataset, is_image, list_images, read_table
from featurecache._paths import check_output
from featurecache._validation import (
    ParameterError,
    check_bool,
    check_choice,
    check_int,
    check_workers,
)
from featurecache.cache import STATUS_OK, FeatureConfig, atomic_write
from featurecache.engines._options import DEVICES
from featurecache.exceptions import InvalidArgumentError

__all__ = ["predict", "write_predictions", "check_predictions_path", "COLUMNS"]

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
    import pandas as pd

    from featurecache.engines._runner import (
        Plan,
        ShardRunner,
        resolve_device,
        resolve_loader_workers,
    )
    from featurecache.models._registry import load_backbone
    from pipelines import load_head

    check_int(batch_size, "batch_size", "predict", low=1)
    check_choice(device, "device", "predict", DEVICES)
    check_workers(workers, "workers", "predict")
    record = load_head(head)
    config = record.config
    dataset = _image_list(Path(images), record.class_names)
    backbone = load_backbone(
        config.backbone, _weights_for(config), seed=config.seed, image_size=config.image_size
    )
    if backbone.weights_sha256 != config.weights_sha256:
        raise InvalidArgumentError(
            f"the head {str(head)!r} was trained on {config.backbone} weights with SHA-256 "
            f"{config.weights_sha256[:16]}…, but {config.weights} resolves to "
            f"{backbone.weights_sha256[:16]}…; provide the original weights file."
        )
    layer = record.layer
    infos = {info.name: info for info in backbone.layers if info.name == layer}
    runner = ShardRunner(
        backbone, infos, config.pooling, config, resolve_device(device, owner="predict")
    )
    plan = Plan(len(dataset), len(dataset), ((0, (layer,)),))
    result = next(runner.run(dataset, plan, batch_size, resolve_loader_workers(workers, dataset)))
    ok = result.status == STATUS_OK
    table = pd.DataFrame(
        {
            "id": dataset.ids,
            "path": dataset.paths,
            "status": np.where(ok, "ok", "failed"),
            "reason": result.reasons,
            "prediction": "",
        }
    )
    if ok.any():
        _fill_predictions(table, ok, record, result.features[layer][ok].astype(np.float32))
    return table


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
    out: str | os.PathLike, *, force: bool = False, probe: bool = False, owner: str = "predict"
) -> Path:
    """Check a predictions CSV path before any work and return it.

    Refused: a name with an image extension (``--out`` aimed at an input image; even with
    ``force``), a folder, a folder that cannot be written, and an existing file whose first
    line is not a predictions header (:data:`COLUMNS`) unless ``force``. ``probe`` also
    creates and removes a temporary file in the target's folder: prediction runs for minutes
    before it writes.
    """
    force = check_bool(force, "force", owner)
    if isinstance(out, (str, os.PathLike)) and is_image(Path(os.fspath(out))):
        raise ParameterError(
            "out", owner, "a CSV file path", os.fspath(out),
            "It names an image; predictions are CSV text, write them to a .csv file.",
        )  # fmt: skip
    return check_output(
        out, "out", owner, kind="file", ours=_is_predictions, force=force, probe=probe,
        expected="a new file path or a predictions CSV",
    )  # fmt: skip


def _is_predictions(path: Path) -> bool:
    """True when ``path`` is a CSV whose header starts with :data:`COLUMNS`."""
    try:
        with open(path, "rb") as stream:
            first = stream.readline(4096)
    except OSError:
        return False
    return first.rstrip(b"\r\n").split(b",")[: len(COLUMNS)] == [c.encode() for c in COLUMNS]


def _weights_for(config: FeatureConfig) -> str:
    weights = str(config.weights)
    if weights.startswith("file:"):
        return weights[len("file:") :]
    if weights.startswith("efficientnet-lite"):
        return "DEFAULT"
    return weights


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
    return Dataset(
        source=f"predict:{images}",
        ids=np.array(ids, dtype=object),
        labels=np.full(n, -1, dtype=np.int64),
        splits=np.full(n, "", dtype=object),
        class_names=class_names,
        paths=np.array([str(p) for p in paths], dtype=object),
    )
