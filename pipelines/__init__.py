"""pipelines: stage 2 of featurecache, on cached features only (never imports torch).

Read a cache (:func:`open_cache`), choose a head's hyper-parameters honestly
(:func:`search`), fit every (model, layer, head) into a results folder
(:func:`fit`) and write a comparison report (:func:`report`).
"""

from __future__ import annotations

from pipelines._cache import Cache, Entry, open_cache
from pipelines._fit import fit, load_head
from pipelines._heads import Head, get_head, list_heads, load_grid, register_head
from pipelines._report import report
from pipelines._search import SearchResult, search

__all__ = [
    "Cache",
    "Entry",
    "Head",
    "SearchResult",
    "fit",
    "get_head",
    "list_heads",
    "load_grid",
    "load_head",
    "open_cache",
    "register_head",
    "report",
    "search",
]
