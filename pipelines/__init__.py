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

from featurecache.core._lazy import attach

_LAZY = {
    "Cache": "featurecache.cache",
    "Entry": "featurecache.cache",
    "open_cache": "featurecache.cache",
    "Head": "pipelines.heads._heads",
    "get_head": "pipelines.heads._heads",
    "list_heads": "pipelines.heads._heads",
    "load_grid": "pipelines.heads._heads",
    "register_head": "pipelines.heads._heads",
    "list_protocols": "pipelines.heads._protocols",
    "SearchResult": "pipelines.heads._search",
    "search": "pipelines.heads._search",
    "fit": "pipelines.fitting._fit",
    "HeadRecord": "pipelines.results._results",
    "best": "pipelines.results._results",
    "load_head": "pipelines.results._results",
    "report": "pipelines.reporting._report",
    "best_combination": "pipelines.reporting._report",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = attach(__name__, _LAZY)
