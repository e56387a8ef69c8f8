"""The report's sections read from the cache itself, not from the results folder.

The map of the best layer (its test features, streamed), the most confidently wrong test
images (their thumbnails) and what the pretrained network sees (its stored ImageNet
classifier). Each takes the cache the results were fitted on, opened once by the report, and
each is left out, or says why, when that cache cannot be read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from featurecache.cache import Cache
from pipelines.heads._fixed import imagenet_view, random_weights, random_weights_reason
from pipelines.reporting._figures import (
    confidently_wrong,
    gallery_figure,
    map_figure,
    per_class_accuracy,
    project_2d,
)
from pipelines.reporting._render import Figure, Table
from pipelines.reporting._thumbnails import sample_thumbnail
from pipelines.results._feature_sets import is_set, load_recorded_set

__all__ = ["MAP_POINTS", "map_sample", "best_details", "imagenet_blocks"]

#: The most test rows the map of the best layer shows (a seeded sample beyond).
MAP_POINTS = 5_000


def best_details(
    run: dict, chosen: pd.Series, predictions: pd.DataFrame, cache: Cache | None
) -> list:
    """Per-class accuracy, a 2-D map of the best layer, the most confidently wrong images."""
    class_names = run["data"]["class_names"]
    y_true = predictions["y_true"].to_numpy(int)
    y_pred = predictions["y_pred"].to_numpy(int)
    rows = tuple((name, str(n), f"{acc:.3f}") for name, n, acc in
                 per_class_accuracy(y_true, y_pred, class_names))  # fmt: skip
    blocks: list = [("h3", "Per-class accuracy (test, worst first)"),
                    Table(("class", "test rows", "accuracy"), rows)]  # fmt: skip
    if cache is None:
        return blocks + [("p", f"The cache `{run.get('cache')}` is not readable here, so the "
                               "map and the gallery are left out.")]  # fmt: skip
    seed = int(run["arguments"].get("seed", 0))
    shown = map_sample(len(predictions), seed)
    ids = predictions["id"].astype(str).to_numpy()[shown]
    X = (
        _map_set_features(cache, chosen, ids)
        if is_set(chosen)
        else _map_features(cache, chosen, ids)
    )
    if X is None:
        return blocks
    y_true, wrong = y_true[shown], (y_true != y_pred)[shown]
    sampled = (
        f" ({len(shown):,} of the {len(predictions):,} test rows, a seeded sample)"
        if len(shown) < len(predictions) else ""
    )  # fmt: skip
    blocks.append(("h3", "Map of the best layer"))
    for method, coords in project_2d(X, seed=seed):
        blocks.append(Figure(
            f"map_{method.lower()}",
            f"{method} of the test features of {chosen['model']} / {chosen['layer']}{sampled} "
            f"(fitted on those rows, a picture only), coloured by true class; crosses mark the "
            f"{int(wrong.sum())} test images shown that the head got wrong.",
            map_figure(coords, y_true, wrong, class_names, method),
        ))  # fmt: skip
    return blocks + _gallery(cache, predictions, class_names)


def map_sample(n_rows: int, seed: int, most: int = MAP_POINTS) -> np.ndarray:
    """Ascending positions of the rows the map shows: all, or a seeded sample of ``most``."""
    if n_rows <= most:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=most, replace=False))


def _map_features(cache: Cache, chosen: pd.Series, ids: np.ndarray) -> np.ndarray | None:
    """The features of the test rows ``ids``, in that order, streamed (only their windows are
    read); ``None`` when one is not in the cache's test split any more."""
    test = np.flatnonzero(cache.splits == "test")
    where = pd.Series(test, index=pd.Index(cache.ids[test].astype(str)))
    rows = where.reindex(ids).to_numpy()
    if np.isnan(rows.astype(float)).any():
        return None
    rows = rows.astype(np.int64)
    batches = list(cache.iter_batches(chosen["model"], chosen["layer"], rows))
    found = np.concatenate([b.rows for b in batches]) if batches else np.zeros(0, np.int64)
    if len(found) != len(np.unique(rows)):
        return None
    X = np.concatenate([b.X for b in batches])
    return X[np.searchsorted(found, rows)]


def _map_set_features(cache: Cache, chosen: pd.Series, ids: np.ndarray) -> np.ndarray | None:
    """A feature set's test rows ``ids``, in that order (its parts concatenated); ``None`` when
    one is not in the cache's test split any more."""
    X, found = load_recorded_set(cache, chosen["feature_set"], "test")
    where = pd.Series(np.arange(len(found)), index=pd.Index(found.astype(str)))
    order = where.reindex(ids).to_numpy()
    if np.isnan(order.astype(float)).any():
        return None
    return X[order.astype(np.int64)]


def _gallery(cache: Cache, predictions: pd.DataFrame, class_names) -> list:
    if "confidence" not in predictions:
        return []
    top = confidently_wrong(predictions.assign(
        confidence=pd.to_numeric(predictions["confidence"], errors="coerce")))  # fmt: skip
    blocks: list = [("h3", "Most confidently wrong test images")]
    if top.empty:
        return blocks + [("p", "The best head got every test image right.")]
    rows = tuple((str(r["id"]), r["true_class"], r["pred_class"], f"{r['confidence']:.3f}")
                 for _, r in top.iterrows())  # fmt: skip
    images, captions = [], []
    for _, r in top.iterrows():
        picture = sample_thumbnail(cache.source, str(r["id"]))
        if picture is not None:
            images.append(picture)
            captions.append(f"true {r['true_class']}\npred {r['pred_class']}")
    if images:
        blocks.append(Figure(
            "gallery",
            "Test images the best head got wrong with the highest confidence (probability or "
            "vote share of the predicted class), most confident first.",
            gallery_figure(images, captions),
        ))  # fmt: skip
    else:
        blocks.append(("p", f"No thumbnails: the images of `{cache.source or 'this cache'}` "
                            "are not readable from here."))  # fmt: skip
    table = Table(("id", "true class", "predicted class", "confidence"), rows)
    return blocks + [table]


def imagenet_blocks(cache: Cache | None, table: pd.DataFrame) -> list:
    """For each model that stores its ImageNet classifier: the ImageNet classes it sees most
    often in each dataset class (top-1 of every labeled sample, from the cached embedding)."""
    if cache is None:
        return []
    blocks = []
    for model in dict.fromkeys(table["model"]):
        if model not in cache.models:
            continue
        if random_weights(cache, model):  # never ImageNet's names on random outputs
            blocks.append(("p", random_weights_reason(cache, model)))
            continue
        classifier = cache.classifiers(model).get("imagenet")
        if classifier is None or classifier.layer not in cache.layers(model):
            continue
        view = imagenet_view(cache, model)
        if view.empty:
            continue
        rows = tuple((str(r["class"]), str(r["n"]), str(r["seen_as"])) for _, r in view.iterrows())
        blocks += [("p", f"{model}: its own classifier ({classifier.source}), on the cached "
                         f"{classifier.layer}; the top-1 class of every labeled sample, and the "
                         "share of the class it takes."),
                   Table(("class", "samples", "ImageNet classes seen"), rows)]  # fmt: skip
    if not blocks:
        return []
    return [("h2", "What the pretrained network sees"), *blocks]
