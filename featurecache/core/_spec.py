"""The extraction request: what :func:`featurecache.extract` is asked to compute (torch-free).

A :class:`FeatureSpec` holds every argument of ``extract`` that describes the request (the
model and its features, the samples and their split, the views, the prompts), and this module
owns their vocabularies: pooling methods, resize modes, dtypes, decode modes, split forms.
The torch side (``models``, ``engines``) and the command line import them from here.

A request is validated once, at the public boundary, the way scikit-learn's
``validate_params`` checks a public call: :meth:`FeatureSpec.validate` returns a checked,
normalised copy, and calls further in (``prepare``, the engines) take it as it is.
:class:`~featurecache.cache.FeatureConfig` (the cache key, resolved against the model) and
:class:`~featurecache.engines.RunOptions` (how it runs) stay separate objects.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from featurecache.core._validation import (
    ParameterError,
    check_bool,
    check_choice,
    check_int,
    check_names,
)
from featurecache.core._views import MAX_VIEWS, parse_augment, parse_tta
from featurecache.exceptions import suggest

if TYPE_CHECKING:
    from featurecache.cache import ViewSets

__all__ = [
    "FeatureSpec",
    "POOL_METHODS",
    "POOL_CHOICES",
    "RESIZE_MODES",
    "COMPUTE_DTYPE_NAMES",
    "DTYPE_CHOICES",
    "STORE_DTYPES",
    "DECODE_MODES",
    "DECODE_CHOICES",
    "DEFAULT_DECODE",
    "DEFAULT_MODEL",
    "DEFAULT_PROMPTS",
    "MAX_IMAGE_SIZE",
    "MAX_VIEWS",
    "check_image_size",
    "check_prompts",
    "parse_random_split",
]

DEFAULT_MODEL = "efficientnet_lite0"
#: The largest ``image_size``: beyond it the dummy forward pass alone needs gigabytes.
MAX_IMAGE_SIZE = 4096
#: Pooling methods per layer kind; the first one is the default.
POOL_METHODS: dict[str, tuple[str, ...]] = {
    "map": ("avg", "max", "avgmax", "flatten"),
    "tokens": ("cls", "mean", "cls+mean"),
    "vector": ("none",),
}
#: What ``pool`` accepts: a method of conv maps or of token outputs (vectors take none).
POOL_CHOICES = (*POOL_METHODS["map"], *POOL_METHODS["tokens"])
#: How an image becomes a square: ``crop`` resizes the short side and centre-crops;
#: ``squash`` resizes both sides, then centre-crops; ``pad`` resizes the long side and
#: letterboxes with the mean colour.
RESIZE_MODES = ("crop", "squash", "pad")
#: Autocast dtypes of the forward pass, named without importing torch.
COMPUTE_DTYPE_NAMES = ("float32", "bfloat16", "float16")
#: What ``dtype`` accepts: ``auto`` (the cached model's, else the device's best) or a name.
DTYPE_CHOICES = ("auto", *COMPUTE_DTYPE_NAMES)
#: Dtypes of the stored features.
STORE_DTYPES = ("float32", "float16")
#: How image files become pixels (:mod:`featurecache.models._decode`); part of the cache key.
DECODE_MODES = ("exact", "fast", "gpu")
#: What ``decode`` accepts: ``auto`` (the cached model's, else :data:`DEFAULT_DECODE`) or a mode.
DECODE_CHOICES = ("auto", *DECODE_MODES)
#: The decode mode of a new model when ``decode="auto"``.
DEFAULT_DECODE = "exact"
#: OpenCLIP's ``SIMPLE_IMAGENET_TEMPLATES``: the seven prompts CLIP's authors found to do
#: about as well as their full set of eighty on ImageNet.
DEFAULT_PROMPTS = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_SPLIT_FORMS = "'random:FRACTION' with 0 < FRACTION < 1, or 'none'"
_MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class FeatureSpec:
    """One extraction request: the arguments of :func:`featurecache.extract` that say what to
    compute, apart from the data, the cache and how it runs.

    The fields are the parameters of :func:`featurecache.extract` of the same names, and
    mean the same. Creating a spec only stores them; :meth:`validate` checks them.

    Attributes
    ----------
    view_sets : ViewSets or None
        The extra views asked for, with canonical specs, once validated (``None``: none).
    """

    model: str = DEFAULT_MODEL
    weights: str | None = None
    layers: Sequence[str] | None = None
    pool: str | None = None
    image_size: int | None = None
    resize: str | None = None
    dtype: str = "auto"
    store_dtype: str = "float32"
    decode: str = "auto"
    name: str | None = None
    split: str | None = None
    seed: int = 0
    resplit: bool = False
    frozen_samples: bool = False
    verify: bool = False
    retry_failed: bool = False
    prompts: Sequence[str] | None = None
    views: int = 0
    augment: str | None = None
    tta: str | None = None
    view_sets: ViewSets | None = field(default=None, init=False, compare=False)
    _validated: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def validated(self) -> bool:
        """Whether this spec is the checked copy :meth:`validate` returns."""
        return self._validated

    def validate(self, owner: str = "extract") -> FeatureSpec:
        """This request checked and normalised; a validated spec is returned as it is.

        ``layers`` and ``prompts`` become tuples (``prompts`` ``DEFAULT_PROMPTS`` when
        omitted), ``augment`` and ``tta`` their canonical spellings, and :attr:`view_sets`
        the views asked for. What depends on the model (its layers, which pooling its
        outputs take) is checked later, against the model.

        Parameters
        ----------
        owner : str
            The function named in errors.

        Returns
        -------
        FeatureSpec

        Raises
        ------
        ParameterError
            About the first parameter outside what it accepts, in the one template.
        """
        if self._validated:
            return self
        checked = self._check(owner)
        object.__setattr__(checked, "_validated", True)
        return checked

    def _check(self, owner: str) -> FeatureSpec:
        """The checks of :meth:`validate`, run once per request."""
        if not (isinstance(self.model, str) and self.model):
            raise ParameterError(
                "model", owner, "a backbone name (str)", self.model,
                "List them with list_backbones().",
                cli_hint="List them with `featurecache backbones`.",
            )  # fmt: skip
        check_choice(self.dtype, "dtype", owner, DTYPE_CHOICES)
        if self.resize is not None:
            check_choice(self.resize, "resize", owner, RESIZE_MODES)
        check_choice(self.store_dtype, "store_dtype", owner, STORE_DTYPES)
        check_choice(self.decode, "decode", owner, DECODE_CHOICES)
        layers = check_names(self.layers, "layers", owner)
        _check_pool(self.pool, owner)
        check_image_size(self.image_size, owner)
        check_int(self.seed, "seed", owner, low=0, high=_MAX_SEED)
        for flag in ("resplit", "frozen_samples", "verify", "retry_failed"):
            check_bool(getattr(self, flag), flag, owner)
        if self.name is not None and not (isinstance(self.name, str) and _NAME.match(self.name)):
            raise ParameterError(
                "name", owner, "letters, digits and _.+- (it names a folder)", self.name
            )
        if self.split is not None and self.split != "none":
            parse_random_split(self.split, owner)
        prompts = check_prompts(self.prompts, owner)
        sets = _view_sets(self.views, self.augment, self.tta, self.seed, owner)
        checked = dataclasses.replace(
            self,
            layers=None if layers is None else tuple(layers),
            prompts=prompts,
            augment=None if sets is None or not sets.k else sets.augment,
            tta=None if sets is None or not sets.tta_k else sets.tta,
        )
        object.__setattr__(checked, "view_sets", sets)
        return checked


def check_image_size(value: Any, owner: str, *, optional: bool = True) -> int | None:
    """An int from 1 to :data:`MAX_IMAGE_SIZE` (the input side ``S``), or ``None`` if
    ``optional``.

    The one rule for ``image_size``, called by every public function that takes it.
    """
    if (value is None and optional) or (
        isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_IMAGE_SIZE
    ):
        return value
    expected = f"an int in the range [1, {MAX_IMAGE_SIZE}]"
    raise ParameterError(
        "image_size", owner, "None or " + expected if optional else expected, value
    )


def check_prompts(prompts: Sequence[str] | None, owner: str) -> tuple[str, ...]:
    """``DEFAULT_PROMPTS`` for ``None``; else a non-empty list of str holding ``{}`` once each."""
    if prompts is None:
        return DEFAULT_PROMPTS
    ok = (
        isinstance(prompts, Sequence)
        and not isinstance(prompts, (str, bytes))
        and len(prompts) > 0
        and all(isinstance(p, str) and p.count("{}") == 1 for p in prompts)
    )
    if not ok:
        hint = "Write ['a photo of a {}.'] for one." if isinstance(prompts, str) else ""
        raise ParameterError(
            "prompts", owner, "a non-empty list of templates, each holding {} once", prompts, hint
        )
    return tuple(prompts)


def parse_random_split(split: Any, owner: str = "load_dataset") -> float:
    """The fraction of ``random:FRACTION`` (0 < FRACTION < 1).

    Raises
    ------
    ParameterError
        About ``split``, with ``Write 'random:0.2'.`` for a bare fraction.
    """
    kind, _, value = split.partition(":") if isinstance(split, str) else ("", "", "")
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if kind != "random" or not 0.0 < fraction < 1.0:
        hint = f"Write 'random:{split}'." if 0 < _as_float(split) < 1 else ""
        raise ParameterError("split", owner, _SPLIT_FORMS, split, hint)
    return fraction


def _as_float(value: Any) -> float:
    """``value`` as a float (``0.2``, ``"0.2"``), or NaN."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_pool(pool: Any, owner: str) -> None:
    """``None`` or a pooling method of conv maps or token outputs; which one the requested
    layers take is checked against the model."""
    if pool is None or (isinstance(pool, str) and pool in POOL_CHOICES):
        return
    hint = suggest(pool, POOL_CHOICES).strip() if isinstance(pool, str) else ""
    raise ParameterError(
        "pool", owner,
        f"one of {', '.join(POOL_METHODS['map'])} for conv maps, or "
        f"{', '.join(POOL_METHODS['tokens'])} for token outputs",
        pool, hint,
    )  # fmt: skip


def _view_sets(views: Any, augment: Any, tta: Any, seed: int, owner: str) -> ViewSets | None:
    """The extra views asked for, with canonical specs; ``None`` when there are none.

    Raises
    ------
    ParameterError
        About ``views``, ``augment`` or ``tta``: a bad count or spec, or one without the other.
    """
    check_int(views, "views", owner, low=0, high=MAX_VIEWS)
    if views == 1:
        raise ParameterError(
            "views", owner, f"0 or an int from 2 to {MAX_VIEWS}", views,
            "View 0 is the plain view: views=1 adds nothing; pass views=2 or more with augment.",
        )  # fmt: skip
    if views and augment is None:
        raise ParameterError(
            "augment", owner, "a spec when views is given", augment,
            "Pass e.g. augment='flip,rrc:0.35-1' (see docs/views.md).",
            cli_hint="Pass e.g. --augment flip,rrc:0.35-1 (see docs/views.md).",
        )  # fmt: skip
    if augment is not None and not views:
        raise ParameterError(
            "views", owner, f"an int from 2 to {MAX_VIEWS} when augment is given", views,
            "Pass views=K, the number of views per training row (view 0 included).",
            cli_hint="Pass --views K, the number of views per training row (view 0 included).",
        )  # fmt: skip
    spec = parse_augment(augment, owner).canonical if views else ""
    test_time = parse_tta(tta, owner) if tta is not None else None
    if not views and test_time is None:
        return None
    # deferred: the command line builds its parsers from this module without h5py
    from featurecache.cache import ViewSets

    return ViewSets(
        k=views, augment=spec, seed=seed,
        tta_k=0 if test_time is None else test_time.n_views,
        tta="" if test_time is None else test_time.canonical,
    )  # fmt: skip
