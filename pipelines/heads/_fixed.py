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
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featurecache.cache import Cache, StoredClassifier, read_classifiers
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest

__all__ = [
    "FIXED_HEADS",
    "FixedLinearClassifier",
    "fixed_pipeline",
    "imagenet_predictions",
    "imagenet_view",
    "random_weights",
    "random_weights_reason",
    "stored_classifier",
]

#: Heads that fit nothing: head name -> the kind of stored classifier it applies.
FIXED_HEADS = {"zeroshot": "zeroshot"}


def random_weights(cache: Cache, model: str) -> bool:
    """Whether ``model`` was extracted with random weights (``weights="none"``)."""
    layers = cache.layers(model)
    return bool(layers) and cache.entry(model, layers[0]).provenance.get("weights") == "none"


def random_weights_reason(cache: Cache, model: str) -> str:
    """Why a model of random weights has no ImageNet classes, in one line."""
    return (
        f"model {model!r} of cache {str(cache.path)!r} was extracted with random weights "
        "(weights 'none'): its classifier never saw ImageNet, so it has no ImageNet classes "
        "to show. Extract with trained weights (DEFAULT or a weights file) to see them."
    )


def stored_classifier(cache: Cache, model: str, kind: str) -> StoredClassifier:
    """The ``kind`` classifier stored for ``model``; a one-line error when there is none.

    A model of random weights has no ``imagenet`` classifier, even one an older version
    stored: its classes would be ImageNet's names on random outputs.
    """
    if kind == "imagenet" and random_weights(cache, model):
        raise InvalidArgumentError(random_weights_reason(cache, model))
    found = cache.classifiers(model)
    older = read_classifiers(cache.path, model).get(kind) if kind == "zeroshot" else None
    if kind not in found and older is not None:
        raise InvalidArgumentError(
            f"model {model!r} of cache {str(cache.path)!r} stores a zero-shot classifier of "
            f"the classes {', '.join(older.class_names)}, not of the cache's "
            f"{', '.join(cache.class_names)}; run `featurecache extract` with this model again "
            "to store the classifier of the grown class list."
        )
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


class FixedLinearClassifier(ClassifierMixin, BaseEstimator):
    """A linear classifier whose weights were made elsewhere: :meth:`fit` learns nothing.

    Its logits are ``scale * X @ weight.T + bias``; ``predict_proba`` is their softmax and
    ``predict`` their argmax, over the classes ``0 .. n_classes - 1``.

    Parameters
    ----------
    weight : ndarray of shape (n_classes, n_features), default=None
        ``None`` is a placeholder: zero logits over the width of ``X`` and the classes of
        ``y`` (the constant classifier of ``classes_[0]``), so that the estimator can be
        built from its defaults, as scikit-learn's ``clone`` and estimator checks do.
    bias : ndarray of shape (n_classes,), default=None
        ``None`` is zeros.
    scale : float, default=1.0
        Multiplies ``X @ weight.T`` (CLIP's logit scale; 1 for a plain linear layer).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        ``0 .. n_classes - 1`` (those of ``y`` for the placeholder).
    coef_ : ndarray of shape (n_classes, n_features)
        ``scale * weight``.
    intercept_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    """

    def __init__(self, *, weight=None, bias=None, scale=1.0):
        self.weight = weight
        self.bias = bias
        self.scale = scale

    def fit(self, X, y=None):
        """Check ``X``'s width against ``weight`` and set ``classes_``; nothing is learned.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Only its width is used: it must be ``weight``'s.
        y : array-like of shape (n_samples,), optional
            Class labels, when given, among ``0 .. n_classes - 1``.

        Raises
        ------
        ValueError
            ``X`` of another width, ``y`` that is not class labels ("Unknown label type"),
            or labels outside the stored classes.
        """
        if y is None:
            X = validate_data(self, X, reset=True)
        else:
            X, y = validate_data(self, X, y, reset=True)
            check_classification_targets(y)
        if self.weight is None:  # the placeholder: zero logits over X's width and y's classes
            self.classes_ = np.unique(y) if y is not None else np.arange(2)
            weight = np.zeros((len(self.classes_), X.shape[1]))
        else:
            weight = np.asarray(self.weight, dtype=np.float64)
            if weight.ndim != 2 or X.shape[1] != weight.shape[1]:
                raise ValueError(
                    f"X has {X.shape[1]} features, but the fixed weights have shape "
                    f"{weight.shape}; score the layer the classifier reads."
                )
            self.classes_ = np.arange(weight.shape[0])
            if y is not None and not np.isin(np.unique(y), self.classes_).all():
                raise ValueError(f"y holds classes outside 0..{weight.shape[0] - 1}.")
        bias = np.zeros(len(weight)) if self.bias is None or self.weight is None else self.bias
        self.coef_ = float(self.scale) * weight
        self.intercept_ = np.asarray(bias, dtype=np.float64).reshape(-1)
        return self

    def decision_function(self, X) -> np.ndarray:
        """The logits, ``(n_samples, n_classes)``; with two classes, scikit-learn's binary
        margin ``logit[1] - logit[0]``, ``(n_samples,)``."""
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        """The softmax of the logits, ``(n_samples, n_classes)``."""
        return softmax(self._logits(X), axis=1)

    def predict(self, X) -> np.ndarray:
        """The class of the highest logit, ``(n_samples,)``."""
        logits = self._logits(X)  # first: NotFittedError before classes_ is read
        return self.classes_[np.argmax(logits, axis=1)]

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return X @ self.coef_.T + self.intercept_


def fixed_pipeline(classifier: StoredClassifier, n_features: int) -> Pipeline:
    """The stored classifier as a fitted scikit-learn pipeline whose ``predict`` gives class
    indices: ``[("l2", Normalizer()),] ("clf", FixedLinearClassifier)``.

    Fitting learns nothing (``n_features`` is the width of the layer it reads, checked).
    """
    clf = FixedLinearClassifier(
        weight=classifier.weight, bias=classifier.bias, scale=classifier.scale
    )
    first = ("l2", Normalizer()) if classifier.normalize else ("identity", FunctionTransformer())
    return Pipeline([first, ("clf", clf)]).fit(np.zeros((1, n_features)))


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
