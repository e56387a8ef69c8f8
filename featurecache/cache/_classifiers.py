"""Classifiers stored beside a model's features: the backbone's own and zero-shot ones.

A stored classifier is a fixed linear map from one cached layer to class scores::

    logits = scale * (X / ||X||  if normalize else X) @ weight.T + bias

``imagenet``: the classifier the backbone was trained with (ImageNet's 1,000 classes), removed
for extraction; it reads ``embedding``. ``zeroshot``: the text embeddings of the dataset's
class names under prompt templates (CLIP); it reads ``embedding.proj``. Both are written once
per model (``CACHE.h5.d/<model>/classifiers/<kind>.h5``) and read without torch; a dataset
grown by a class adds a version of the zero-shot classifier (``zeroshot.<version>.h5``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featurecache.cache import _format as fmt
from featurecache.cache._atomic import create_once
from featurecache.cache._folder import decode
from featurecache.exceptions import CacheCorruptError, ConfigMismatchError, InvalidArgumentError

__all__ = ["StoredClassifier", "class_list_version", "read_classifiers", "write_classifier"]

_FIELDS = ("weight", "bias", "class_names")


@dataclass(frozen=True, eq=False)
class StoredClassifier:
    """A fixed linear classifier over one cached layer.

    Attributes
    ----------
    kind : {'imagenet', 'zeroshot'}
    layer : str
        The cached layer it reads (``embedding``, ``embedding.proj``).
    weight : numpy.ndarray
        ``(n_classes, n_features)`` float32.
    bias : numpy.ndarray
        ``(n_classes,)`` float32.
    class_names : tuple of str
        ``n_classes`` names: ImageNet's, or the dataset's.
    normalize : bool
        Whether rows are L2-normalised before the product (CLIP compares unit vectors).
    scale : float
        Multiplies the product (CLIP's learned ``logit_scale.exp()``); 1 otherwise.
    prompts : tuple of str
        Zero-shot only: the templates (``"a photo of a {}."``) whose mean text embedding
        is each class's weight row.
    source : str
        Where it came from, in words (``torchvision fc of IMAGENET1K_V1``).
    """

    kind: str
    layer: str
    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    class_names: tuple[str, ...] = field(repr=False)
    normalize: bool = False
    scale: float = 1.0
    prompts: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in fmt.CLASSIFIER_KINDS:
            raise InvalidArgumentError(
                f"The 'kind' parameter of StoredClassifier must be one of "
                f"{', '.join(fmt.CLASSIFIER_KINDS)}. Got {self.kind!r} instead."
            )
        weight = np.ascontiguousarray(self.weight, dtype=np.float32)
        bias = np.ascontiguousarray(self.bias, dtype=np.float32).reshape(-1)
        names = tuple(str(name) for name in self.class_names)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(names) != weight.shape[0]:
            raise InvalidArgumentError(
                "A StoredClassifier needs weight (n_classes, n_features), bias (n_classes,) and "
                f"n_classes names. Got weight {weight.shape}, bias {bias.shape} and "
                f"{len(names)} names instead."
            )
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "normalize", bool(self.normalize))
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "prompts", tuple(str(p) for p in self.prompts))

    @property
    def n_features(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Class scores of rows ``X`` of shape ``(n_samples, n_features)``."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise InvalidArgumentError(
                f"The {self.kind} classifier reads {self.n_features} features of layer "
                f"{self.layer!r}. Got an array of shape {X.shape} instead."
            )
        if self.normalize:
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            X = X / np.maximum(norms, np.finfo(np.float32).tiny)
        return self.scale * (X @ self.weight.T) + self.bias

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The index of the highest score of each row."""
        return np.argmax(self.logits(X), axis=1)

    def digest(self) -> str:
        """SHA-256 of everything it computes with: two classifiers are one when it agrees."""
        digest = hashlib.sha256()
        digest.update(fmt.canonical_json(self._attrs()).encode())
        digest.update(fmt.canonical_json(list(self.class_names)).encode())
        digest.update(self.weight.tobytes())
        digest.update(self.bias.tobytes())
        return digest.hexdigest()

    def _attrs(self) -> dict:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "normalize": self.normalize,
            "scale": self.scale,
            "prompts": list(self.prompts),
            "source": self.source,
        }


def write_classifier(index: str | os.PathLike, model: str, classifier: StoredClassifier) -> bool:
    """Store ``classifier`` beside ``model``'s features, once.

    A zero-shot classifier of another class list (the dataset grew by a class) is a new
    version beside the others (:func:`featurecache.cache._format.classifier_file`): the
    class list is versioned with the sample table, and every version is write-once.

    Returns
    -------
    bool
        True when this call wrote the file, False when the same classifier was there.

    Raises
    ------
    ConfigMismatchError
        Another classifier of this kind is stored for the model (other prompts, or the same
        class names with other weights); nothing is written.
    """
    digest = classifier.digest()
    stored = _versions(Path(index), model, classifier.kind)
    for other in stored:
        same_list = other.class_names == classifier.class_names
        if other.digest() == digest:
            return False
        if classifier.kind != "zeroshot" or same_list or other.prompts != classifier.prompts:
            raise ConfigMismatchError(
                f"model {model!r} in {str(index)!r} already stores another {classifier.kind} "
                f"classifier ({_difference(other, classifier)}); a stored classifier is written "
                "once. Pass another model name (name=, or --name) to store this one beside it."
            )
    version = class_list_version(classifier.class_names) if stored else ""
    path = fmt.classifier_file(Path(index), model, classifier.kind, version)
    if create_once(path, lambda tmp: _write(tmp, classifier, digest)):
        return True
    if _read(path).digest() != digest:  # another writer stored another one meanwhile
        raise ConfigMismatchError(
            f"model {model!r} in {str(index)!r} already stores another {classifier.kind} "
            f"classifier ({_difference(_read(path), classifier)}); a stored classifier is "
            "written once. Pass another model name (name=, or --name) to store this one beside it."
        )
    return False


def class_list_version(class_names: Sequence[str]) -> str:
    """The version of a class list in a classifier's file name: 16 hex of its SHA-256."""
    return hashlib.sha256(fmt.canonical_json(list(class_names)).encode()).hexdigest()[:16]


def read_classifiers(
    index: str | os.PathLike, model: str, class_names: Sequence[str] | None = None
) -> dict[str, StoredClassifier]:
    """The classifiers stored for ``model``, by kind (empty when none).

    Parameters
    ----------
    class_names : sequence of str, optional
        The sample table's class names: the zero-shot classifier is the version of exactly
        these (none when the table's classes changed since it was stored). ``None`` gives
        the version of the longest class list (class lists only grow).
    """
    found = {}
    for kind in fmt.CLASSIFIER_KINDS:
        versions = _versions(Path(index), model, kind)
        if class_names is not None and kind == "zeroshot":
            versions = [c for c in versions if c.class_names == tuple(class_names)]
        if versions:
            found[kind] = max(versions, key=lambda c: len(c.class_names))
    return found


def _versions(index: Path, model: str, kind: str) -> list[StoredClassifier]:
    return [_read(path) for path in fmt.classifier_files(index, model, kind)]


def _write(tmp: Path, classifier: StoredClassifier, digest: str) -> None:
    with h5py.File(tmp, "w") as f:
        f.create_dataset(fmt.classifier_path("weight"), data=classifier.weight)
        f.create_dataset(fmt.classifier_path("bias"), data=classifier.bias)
        f.create_dataset(
            fmt.classifier_path("class_names"),
            data=np.array(classifier.class_names, dtype=object),
            dtype=h5py.string_dtype(),
        )
        attrs = classifier._attrs()
        f.attrs.update({k: v for k, v in attrs.items() if k != "prompts"})
        f.attrs["prompts"] = json.dumps(attrs["prompts"])
        f.attrs["sha256"] = digest
        f.attrs["format_version"] = fmt.FORMAT_VERSION


def _read(path: Path) -> StoredClassifier:
    try:
        with h5py.File(path, "r", locking=False) as f:
            attrs = {k: decode(v) for k, v in f.attrs.items()}
            classifier = StoredClassifier(
                kind=attrs["kind"],
                layer=attrs["layer"],
                weight=f[fmt.classifier_path("weight")][:],
                bias=f[fmt.classifier_path("bias")][:],
                class_names=tuple(f[fmt.classifier_path("class_names")].asstr()[:]),
                normalize=bool(attrs["normalize"]),
                scale=float(attrs["scale"]),
                prompts=tuple(json.loads(attrs["prompts"])),
                source=attrs.get("source", ""),
            )
    except (OSError, KeyError, ValueError) as error:
        raise CacheCorruptError(
            f"cannot read the stored classifier {str(path)!r} ({error}); delete the file and "
            "re-run `featurecache extract` to store it again."
        ) from error
    if classifier.digest() != attrs.get("sha256"):
        raise CacheCorruptError(
            f"the stored classifier {str(path)!r} does not match its SHA-256; delete the file "
            "and re-run `featurecache extract` to store it again."
        )
    return classifier


def _difference(stored: StoredClassifier, new: StoredClassifier) -> str:
    for name, a, b in (
        ("prompts", stored.prompts, new.prompts),
        ("class names", stored.class_names, new.class_names),
        ("layer", stored.layer, new.layer),
    ):
        if a != b:
            return f"{name}: stored {_short(a)}, requested {_short(b)}"
    return "other weights"


def _short(value: Sequence | str) -> str:
    text = value if isinstance(value, str) else ", ".join(map(str, value))
    return text if len(text) <= 80 else text[:77] + "..."
