"""Fixed classifiers stored in the cache: the ``zeroshot`` head and the ImageNet view.

Nothing here is fitted on the dataset's samples. A stored classifier
(:class:`featurecache.cache.StoredClassifier`) is a fixed linear map from one cached layer:

- ``zeroshot`` (CLIP): the text embeddings of the dataset's class names. As a head of
  :func:`~pipelines.fit` it is scored like every other head (on the same CV folds or val
  split, then once on test) with ``selection = "fixed"``; the report shows it as a baseline.
- ``imagenet``: the backbone's own classifier over ImageNet's 1,000 classes, which reads
  ``embedding``. :func:`imagenet_predictions` gives its top classes for every cached sample
  (``featurecache predict --imagenet``), and :func:`imagenet_view` what it sees in each
  dataset class (the report's section "What the pretrained network sees").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer

from featurecache.cache import Cache, StoredClassifier
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest

__all__ = [
    "FIXED_HEADS",
    "fixed_pipeline",
    "imagenet_predictions",
    "imagenet_view",
    "stored_classifier",
]

#: Heads that fit nothing: head name -> the kind of stored classifier it applies.
FIXED_HEADS = {"zeroshot": "zeroshot"}


def stored_classifier(cache: Cache, model: str, kind: str) -> StoredClassifier:
    """The ``kind`` classifier stored for ``model``; a one-line error when there is none."""
    found = cache.classifiers(model)
    if kind not in found:
        has = ", ".join(found) or "none"
        hint = {
            "imagenet": "backbones whose ImageNet classifier is removed (torchvision, timm, "
            "EfficientNet-Lite) store it",
            "zeroshot": "models with a text tower (open_clip:ARCH/PRETRAINED; SigLIP and CLIP "
            "as hf:REPO_ID) store it",
        }[kind]
        raise InvalidArgumentError(
            f"model {model!r} of cache {str(cache.path)!r} stores no {kind} classifier (it "
            f"stores {has}); {hint} when `featurecache extract` runs."
        )
    return found[kind]


def fixed_pipeline(classifier: StoredClassifier) -> Pipeline:
    """The classifier as a fitted scikit-learn pipeline whose ``predict`` gives class indices.

    ``[("l2", Normalizer()),] ("clf", LogisticRegression)`` with ``coef_`` and ``intercept_``
    set, not fitted: its ``decision_function`` is the classifier's logits (a difference of
    two for two classes) and ``predict_proba`` their softmax.
    """
    n_classes, n_features = classifier.weight.shape
    weight = classifier.scale * classifier.weight.astype(np.float64)
    bias = classifier.bias.astype(np.float64)
    clf = LogisticRegression()
    if n_classes == 2:  # scikit-learn's binary form: one row, class 1 against class 0
        weight, bias = weight[1:] - weight[:1], bias[1:] - bias[:1]
    clf.coef_, clf.intercept_ = weight, bias
    clf.classes_ = np.arange(n_classes)
    clf.n_features_in_ = n_features
    clf.n_iter_ = np.zeros(1, dtype=np.int32)
    dummy = np.zeros((1, n_features))
    first = ("l2", Normalizer()) if classifier.normalize else ("identity", FunctionTransformer())
    return Pipeline([(first[0], first[1].fit(dummy)), ("clf", clf)])


def imagenet_predictions(cache: Cache, model: str, *, top: int = 5) -> pd.DataFrame:
    """The stored ImageNet classifier's top classes for every cached sample of ``model``.

    Parameters
    ----------
    cache : Cache
    model : str
        A model of the cache that stores an ``imagenet`` classifier and its layer.
    top : int
        How many classes to list per sample.

    Returns
    -------
    pandas.DataFrame
        One row per sample whose layer was extracted: ``id``, ``split``, ``true_class``,
        ``prediction`` (the top class), ``imagenet_index``, ``confidence`` (its softmax
        probability) and ``top`` (the ``top`` classes with their probabilities).
    """
    classifier = stored_classifier(cache, model, "imagenet")
    _require_layer(cache, model, classifier)
    X, ids, rows = _rows(cache, model, classifier.layer)
    proba = softmax(classifier.logits(X).astype(np.float64), axis=1)
    order = np.argsort(-proba, axis=1, kind="stable")[:, :top]
    names = classifier.class_names
    labels = cache.labels[rows]
    return pd.DataFrame(
        {
            "id": ids,
            "split": cache.splits[rows],
            "true_class": [cache.class_names[k] if k >= 0 else "" for k in labels],
            "prediction": [names[k] for k in order[:, 0]],
            "imagenet_index": order[:, 0],
            "confidence": proba[np.arange(len(order)), order[:, 0]],
            "top": [
                "; ".join(f"{names[k]} ({p[k]:.2f})" for k in best)
                for best, p in zip(order, proba, strict=True)
            ],
        }
    )


def imagenet_view(cache: Cache, model: str, *, top: int = 3) -> pd.DataFrame:
    """For each dataset class, the ImageNet classes its samples are most often predicted as.

    Returns
    -------
    pandas.DataFrame
        One row per dataset class with labeled samples: ``class``, ``n`` and ``seen_as``
        (the ``top`` most frequent top-1 ImageNet classes with their share of the class).
    """
    table = imagenet_predictions(cache, model, top=1)
    table = table[table["true_class"] != ""]
    rows = []
    for name in cache.class_names:
        predicted = table.loc[table["true_class"] == name, "prediction"]
        if predicted.empty:
            continue
        shares = predicted.value_counts(normalize=True, sort=True).head(top)
        seen = "; ".join(f"{label} ({share:.0%})" for label, share in shares.items())
        rows.append({"class": name, "n": len(predicted), "seen_as": seen})
    return pd.DataFrame(rows, columns=["class", "n", "seen_as"])


def _require_layer(cache: Cache, model: str, classifier: StoredClassifier) -> None:
    layers = cache.layers(model)
    if classifier.layer not in layers:
        raise UnknownNameError(
            f"the {classifier.kind} classifier of {model!r} reads layer {classifier.layer!r}, "
            f"which cache {str(cache.path)!r} does not hold (it has {', '.join(layers)})."
            f"{suggest(classifier.layer, layers)} Extract it with `featurecache extract ... "
            f"--layers {classifier.layer}`."
        )


def _rows(cache: Cache, model: str, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ok rows of a layer (removed samples left out), their ids and row numbers."""
    entry = cache.entry(model, layer)
    if entry.n_ok == 0:
        raise InvalidArgumentError(
            f"{model}/{layer} of cache {str(cache.path)!r} holds no extracted rows yet; "
            "finish `featurecache extract` first."
        )
    X, rows = cache.load_rows(
        model, layer, ~cache.removed
    )  # samples gone from the dataset stay out
    return X, cache.ids[rows], rows
