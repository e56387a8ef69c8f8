"""A backbone and its cache key: the key of a loaded backbone, and the backbone of a key.

:func:`feature_config` is what a run records of the backbone it loaded; :func:`rebuild_backbone`
is the one way back, used wherever features must be computed again from a recorded
configuration (an engine's worker, ``predict``): it builds the backbone the configuration
names and refuses one whose key differs in any field.
"""

from __future__ import annotations

from collections.abc import Mapping

from featurecache.cache import FeatureConfig
from featurecache.exceptions import ConfigMismatchError
from featurecache.models._preprocess import Preprocess
from featurecache.models._registry import LoadedBackbone, get_backbone, load_backbone

__all__ = ["feature_config", "rebuild_backbone", "resize_mode"]


def feature_config(
    backbone: LoadedBackbone,
    pooling: str,
    store_dtype: str,
    compute_dtype: str,
    decode: str = "exact",
    views: Mapping | None = None,
) -> FeatureConfig:
    """The cache key of a loaded backbone's features, with its provenance.

    Parameters
    ----------
    backbone : LoadedBackbone
    pooling : str
        The pooling applied to the layers.
    store_dtype, compute_dtype : str
        The stored dtype and the forward pass's dtype.
    decode : str
        The image decode mode.
    views : mapping, optional
        :attr:`FeatureConfig.views` (``{}`` or ``None``: no extra views).

    Returns
    -------
    FeatureConfig
    """
    return FeatureConfig(
        backbone=backbone.name,
        weights_sha256=backbone.weights_sha256,
        preprocessing=backbone.preprocess.to_dict(),
        pooling=pooling,
        dtype=store_dtype,
        compute_dtype=compute_dtype,
        decode=decode,
        views=dict(views or {}),
        architecture=dict(backbone.architecture),
        weights=backbone.weights,
        seed=backbone.seed,
        image_size=backbone.image_size,
        source=backbone.source,
        library=backbone.library,
        revision=backbone.revision,
    )


def resize_mode(config: FeatureConfig) -> str:
    """The resize mode a config's features were computed with (``crop`` when unrecorded)."""
    return Preprocess.from_dict(dict(config.preprocessing)).resize


def rebuild_backbone(
    config: FeatureConfig, *, mismatch: str, fix: str, weights: str | None = None
) -> LoadedBackbone:
    """Build the backbone ``config`` records, and check its key field by field.

    Parameters
    ----------
    config : FeatureConfig
        A recorded configuration (a cache's ``config.json``, a head's provenance).
    mismatch : str
        The start of the error, saying who built what (``the head 'h.joblib' was trained
        on resnet18 with another configuration than this featurecache builds``).
    fix : str
        The end of the error: how to fix it.
    weights : str, optional
        The ``weights`` argument to build with; default: the one naming ``config.weights``
        again (:meth:`~featurecache.models.Backbone.weights_argument`).

    Returns
    -------
    LoadedBackbone
        Its :func:`feature_config` equals ``config`` in every key field.

    Raises
    ------
    ConfigMismatchError
        One line: ``mismatch``, every differing field (``weights_sha256: cached …,
        requested …``), then ``fix``.
    """
    if weights is None:
        weights = get_backbone(config.backbone).weights_argument(str(config.weights))
    backbone = load_backbone(
        config.backbone,
        weights,
        seed=config.seed,
        image_size=config.image_size,
        resize=resize_mode(config),
    )
    rebuilt = feature_config(
        backbone, config.pooling, config.dtype, config.compute_dtype, config.decode, config.views
    )
    differences = config.differences(rebuilt)
    if differences:
        raise ConfigMismatchError(f"{mismatch} ({'; '.join(differences)}); {fix}")
    return backbone
