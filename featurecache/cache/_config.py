"""The cache key of a model's features: :class:`FeatureConfig`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from featurecache.cache._format import FEATURES_FORMAT_VERSION, canonical_json

__all__ = ["FeatureConfig", "ViewSets", "VIEW_KINDS"]

#: The two kinds of extra views a model may hold: ``augment`` (training views of the train
#: and val rows) and ``tta`` (test-time views of every row).
VIEW_KINDS = ("augment", "tta")


def _version() -> str:
    from featurecache import __version__

    return __version__


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that changes the stored numbers of one model in a cache.

    Two extractions may share a model name in a cache exactly when their configs are
    equal; :meth:`digest` is the key. Fields marked *provenance* are recorded beside the
    key (in ``config.json`` and the index attributes) but never compared: a weights
    name and its seed are covered by ``weights_sha256``, the input size by
    ``preprocessing``.

    Attributes
    ----------
    backbone : str
        Registry name of the backbone (``resnet18``, ``efficientnet_lite0``).
    weights_sha256 : str
        SHA-256 of the backbone's state dict.
    preprocessing : mapping
        The preprocessing as :meth:`featurecache.Preprocess.to_dict` records it.
    pooling : str
        Pooling of map and token outputs (``avg``, ``cls``…).
    dtype : str
        Stored dtype (``float32`` or ``float16``).
    compute_dtype : str
        Autocast dtype of the forward pass.
    decode : str
        How image files become pixels: ``exact`` (full-size decode), ``fast`` (JPEG
        DCT-domain downscaling before the resize) or ``gpu`` (nvJPEG on the device, the
        exact CPU decode as a per-image fall-back). Left out of :meth:`key` when ``exact``,
        so caches written before decode modes existed keep their digest.
    views : mapping
        Extra views stored beside the plain features (``docs/cache-format.md``, "Views"):
        ``{"k": K, "augment": SPEC, "tta_k": T, "tta": SPEC, "seed": SEED}`` with the
        canonical augmentation specs, or ``{}`` for none. Left out of :meth:`key` when
        empty, so every cache written before views existed keeps its digest. Read it as a
        :class:`ViewSets` with :meth:`view_sets`.
    architecture : mapping
        Build settings of the model that change its numbers and are not in its weights
        (``{"quick_gelu": True}``: an OpenCLIP tag trained with QuickGELU on an
        architecture defined with GELU), ``{}`` for none. Left out of :meth:`key` when
        empty, so every cache written before it existed keeps its digest.
    format_version : int
        Version of the cache format the features were written in.
    weights, seed, image_size, featurecache_version
        Provenance.
    source, library, revision
        Provenance: the backbone's source (``torchvision``, ``timm``, ``open_clip``, ``hf``…),
        the library defining the model with its version (``timm 1.0.31``), and the hub
        revision of downloaded weights.
    """

    backbone: str
    weights_sha256: str
    preprocessing: Mapping[str, Any]
    pooling: str
    dtype: str
    compute_dtype: str
    decode: str = "exact"
    views: Mapping[str, Any] = field(default_factory=dict)
    architecture: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FEATURES_FORMAT_VERSION
    weights: str = field(default="", compare=False)
    seed: int = field(default=0, compare=False)
    image_size: int = field(default=0, compare=False)
    featurecache_version: str = field(default_factory=_version, compare=False)
    source: str = field(default="", compare=False)
    library: str = field(default="", compare=False)
    revision: str = field(default="", compare=False)

    #: The fields that make the key, in the order differences are reported.
    KEY = (
        "backbone",
        "weights_sha256",
        "preprocessing",
        "pooling",
        "dtype",
        "compute_dtype",
        "decode",
        "views",
        "architecture",
        "format_version",
    )
    #: Key fields added after the first caches were written, left out of :meth:`key` at
    #: their default so that every existing cache keeps its digest.
    KEY_DEFAULTS = {"decode": "exact", "views": {}, "architecture": {}}

    def __hash__(self) -> int:
        return hash(self.digest())

    def key(self) -> dict[str, Any]:
        """The compared fields, as plain JSON values (optional ones only off their default)."""
        return {
            name: _plain(getattr(self, name))
            for name in self.KEY
            if name not in self.KEY_DEFAULTS or getattr(self, name) != self.KEY_DEFAULTS[name]
        }

    def digest(self) -> str:
        """SHA-256 of :meth:`key`: equal exactly when two configs store the same numbers."""
        return hashlib.sha256(canonical_json(self.key()).encode()).hexdigest()

    def attrs(self) -> dict[str, Any]:
        """The HDF5 attributes of a model: each field (mappings as JSON), the JSON, the digest."""
        values = self.to_dict()
        found = {
            key: (canonical_json(value) if isinstance(value, (Mapping, list, tuple)) else value)
            for key, value in values.items()
            if value is not None
        }
        found["config"] = canonical_json(values)
        found["config_digest"] = self.digest()
        return found

    def to_dict(self) -> dict[str, Any]:
        """Every field, key and provenance, as ``config.json`` records it."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FeatureConfig:
        """Rebuild a config from :meth:`to_dict` (or an index attribute); unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = dict(values)
        for name in ("preprocessing", "views", "architecture"):
            if isinstance(values.get(name), str):
                values[name] = json.loads(values[name])
        optional = {"format_version", *cls.KEY_DEFAULTS}
        missing = [name for name in cls.KEY if name not in values and name not in optional]
        if missing:
            raise KeyError(f"the configuration lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def differences(self, other: FeatureConfig) -> list[str]:
        """``"key: self's, other's"`` for every key field that differs."""
        mine, theirs = self.key(), other.key()
        out = []
        for name in self.KEY:
            if mine.get(name) == theirs.get(name):
                continue
            a, b = self._value(name), other._value(name)
            if isinstance(a, Mapping) and isinstance(b, Mapping):
                # one line per differing entry: "preprocessing.resize: cached crop, requested pad"
                for key in sorted(set(a) | set(b)):
                    x, y = a.get(key, _UNSET), b.get(key, _UNSET)
                    if x != y:
                        out.append(f"{name}.{key}: cached {_short(x)}, requested {_short(y)}")
            else:
                out.append(f"{name}: cached {_short(a)}, requested {_short(b)}")
        return out

    def view_sets(self) -> ViewSets | None:
        """The extra views these features come with, or ``None`` when there are none."""
        return ViewSets.from_mapping(self.views)

    def _value(self, name: str) -> Any:
        return _plain(getattr(self, name))


@dataclass(frozen=True)
class ViewSets:
    """The extra views of a model's features (``FeatureConfig.views``).

    Attributes
    ----------
    k : int
        Training views per train and val row, the plain view 0 included (0: none).
    augment : str
        The canonical augmentation spec of views ``1 .. k - 1`` (``""`` when ``k == 0``).
    tta_k : int
        Test-time views per row of every split, the plain view 0 included (0: none).
    tta : str
        The canonical test-time spec of views ``1 .. tta_k - 1`` (``""`` when none).
    seed : int
        Seed of the augmentations' random state (with the sample id and the view index).
    """

    k: int = 0
    augment: str = ""
    tta_k: int = 0
    tta: str = ""
    seed: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ViewSets | None:
        """``FeatureConfig.views`` as a :class:`ViewSets`; ``None`` for ``{}``."""
        if not values:
            return None
        return cls(
            k=int(values.get("k", 0)),
            augment=str(values.get("augment", "")),
            tta_k=int(values.get("tta_k", 0)),
            tta=str(values.get("tta", "")),
            seed=int(values.get("seed", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The mapping ``FeatureConfig.views`` holds."""
        return dataclasses.asdict(self)

    def count(self, kind: str) -> int:
        """Views of ``kind`` (``augment`` or ``tta``) per row that has them."""
        return self.k if kind == "augment" else self.tta_k


_UNSET = "(unset)"


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _short(value: Any) -> str:
    text = canonical_json(value) if isinstance(value, Mapping) else str(value)
    if text == "":
        return "''"
    return text if len(text) <= 80 else text[:77] + "..."
