"""Predict new images with a head fitted by ``featurecache fit``.

The head file records the backbone, weights digest, preprocessing, pooling and
layer it was trained on; prediction rebuilds exactly that and refuses weights
whose digest differs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featurecache._data import IMAGE_EXTENSIONS, Dataset
from featurecache.exceptions import InvalidArgumentError

__all__ = ["predict", "write_predictions"]


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

    from featurecache.cache import FeatureConfig
    from featurecache.engines._runner import (
        Plan,
        ShardRunner,
        resolve_device,
        resolve_loader_workers,
    )
    from featurecache.models._registry import load_backbone
    from pipelines import load_head

    record = load_head(head)
    config = _head_config(record, head)
    dataset = _image_list(Path(images), tuple(record["class_names"]))
    backbone = load_backbone(
        config["backbone"],
        _weights_for(config),
        seed=int(config.get("seed", 0)),
        image_size=int(config["image_size"]),
    )
    if backbone.weights_sha256 != config["weights_sha256"]:
        raise InvalidArgumentError(
            f"the head {str(head)!r} was trained on {config['backbone']} weights with SHA-256 "
            f"{config['weights_sha256'][:16]}…, but {config['weights']} resolves to "
            f"{backbone.weights_sha256[:16]}…; provide the original weights file."
        )
    layer = record["layer"]
    infos = {info.name: info for info in backbone.layers if info.name == layer}
    torch_device = resolve_device(device, owner="predict")
    runner = ShardRunner(
        backbone, infos, config["pooling"], FeatureConfig.from_dict(config), torch_device
    )
    plan = Plan(len(dataset), len(dataset), ((0, (layer,)),))
    result = next(runner.run(dataset, plan, batch_size, resolve_loader_workers(workers, dataset)))
    ok = result.status == 1
    table = pd.DataFrame(
        {
            "id": dataset.ids,
            "path": dataset.paths,
            "status": np.where(ok, "ok", "failed"),
            "reason": result.reasons,
            "prediction": "",
        }
    )
    estimator = record["estimator"]
    if ok.any():
        X = result.features[layer][ok].astype(np.float32)
        predicted = estimator.predict(X)
        table.loc[ok, "prediction"] = [record["class_names"][int(k)] for k in predicted]
        if hasattr(estimator, "predict_proba"):
            proba = estimator.predict_proba(X)
            classes = [record["class_names"][int(k)] for k in estimator.classes_]
            for j, name in enumerate(classes):
                table.loc[ok, f"proba_{name}"] = proba[:, j]
    return table


def write_predictions(table, path: str | os.PathLike) -> None:
    """Write the predictions CSV atomically."""
    target = Path(path)
    if target.is_dir():
        raise InvalidArgumentError(
            f"--out must be a CSV file path; {str(target)!r} is a directory."
        )
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        table.to_csv(tmp, index=False)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _head_config(record: dict, head) -> dict:
    import json

    provenance = record.get("provenance") or {}
    config = provenance.get("config")
    if isinstance(config, str):
        config = json.loads(config)
    if not isinstance(config, dict) or "backbone" not in config:
        raise InvalidArgumentError(
            f"the head {str(head)!r} records no backbone configuration; it must come from "
            "`featurecache fit` on a cache written by `featurecache extract`."
        )
    return config


def _weights_for(config: dict) -> str:
    weights = str(config["weights"])
    if weights.startswith("file:"):
        return weights[len("file:") :]
    if weights.startswith("efficientnet-lite"):
        return "DEFAULT"
    return weights


def _image_list(images: Path, class_names: tuple[str, ...]) -> Dataset:
    if images.is_dir():
        paths = sorted(
            p for p in images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()
        )
        ids = [p.relative_to(images).as_posix() for p in paths]
    elif images.suffix.lower() == ".csv" and images.is_file():
        import pandas as pd

        table = pd.read_csv(images, dtype=str, keep_default_na=False)
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
