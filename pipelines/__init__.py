"""pipelines: stage 2 of featurecache, on cached features only (never imports torch).

Read a cache (:func:`open_cache`), choose a head's hyper-parameters honestly
(:func:`search`), fit every (model, layer, head) into a results folder
(:func:`fit`), pick the best of them (:func:`best`, :func:`best_combination`) and
write a comparison report (:func:`report`). :func:`load_head` reads a fitted head
back with the feature configuration it needs.

Names load on first use, so ``import pipelines`` (and the ``featurecache``
command line, which registers ``fit`` and ``report``) does not import
scikit-learn or matplotlib until they are needed.
"""

from __future__ import annotations

from featurecache._lazy import attach

_LAZY = {
    "Cache": "featurecache.cache",
    "Entry": "featurecache.cache",
    "open_cache": "featurecache.cache",
    "Head": "pipelines._heads",
    "get_head": "pipelines._heads",
    "list_heads": "pipelines._heads",
    "load_grid": "pipelines._heads",
    "register_head": "pipelines._heads",
    "list_protocols": "pipelines._protocols",
    "SearchResult": "pipelines._search",
    "search": "pipelines._search",
    "fit": "pipelines._fit",
    "HeadRecord": "pipelines._results",
    "best": "pipelines._results",
    "load_head": "pipelines._results",
    "report": "pipelines._report",
    "best_combination": "pipelines._report",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = attach(__name__, _LAZY)
