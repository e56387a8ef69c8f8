"""The rows a fit can use: refuse pending rows, empty layers and classes left without rows.

Every check runs while the fit is planned (:mod:`pipelines.fitting._plan`), before anything is
written, and says which rows are missing, per split and class, and how to get them.
"""

from __future__ import annotations

import numpy as np

from featurecache.cache import Cache
from featurecache.core._validation import AdviceError
from featurecache.exceptions import InvalidArgumentError
from pipelines.rows._rows import RowStatus, row_status

__all__ = ["check_classes", "check_extracted", "check_rows"]


def check_classes(cache: Cache) -> None:
    """Refuse a cache whose train split holds fewer than 2 classes, or misses a class of
    val or test.

    Raises
    ------
    InvalidArgumentError
        No labeled train row, one class only, or a class labeled only outside train.
    """
    labeled = (cache.labels >= 0) & ~cache.removed
    where = f"cache {str(cache.path)!r}"
    train = labeled & (cache.splits == "train")
    if not train.any():
        present = sorted(set(cache.splits[labeled].tolist()))
        shown = ", ".join(repr(s) for s in present) or "none"
        raise InvalidArgumentError(
            f"fit needs labeled rows in split 'train'; {where} has labeled rows in splits "
            f"{shown}; extract with a dataset that defines a train split."
        )
    train_classes = set(np.unique(cache.labels[train]).tolist())
    if len(train_classes) < 2:
        name = cache.class_names[next(iter(train_classes))]
        raise InvalidArgumentError(
            f"the train split of {where} holds one class ({name!r}); a classifier needs at least 2."
        )
    for split in ("val", "test"):
        rows = labeled & (cache.splits == split)
        only = sorted(set(np.unique(cache.labels[rows]).tolist()) - train_classes)
        if only:
            names = ", ".join(repr(cache.class_names[k]) for k in only)
            raise InvalidArgumentError(
                f"classes {names} have labels only in the {split} split of {where}, none in "
                "train; a head cannot learn them. Move some of those samples to train."
            )


def check_extracted(cache: Cache, combos: list[tuple[str, str]]) -> None:
    """Refuse a (model, layer) of ``combos`` without a single extracted row.

    Raises
    ------
    InvalidArgumentError
        Naming every such combination.
    """
    n_ok = {(e.model, e.layer): e.n_ok for e in cache.entries}
    empty = [f"{m}/{layer}" for m, layer in combos if n_ok.get((m, layer), 0) == 0]
    if empty:
        raise InvalidArgumentError(
            f"{', '.join(empty)} of cache {str(cache.path)!r} hold no extracted rows yet; "
            "finish `featurecache extract` or leave them out of models/layers."
        )


def check_rows(
    cache: Cache, combos: list[tuple[str, str]], selection: str, cv: int, allow_partial: bool
) -> dict[tuple[str, str], RowStatus]:
    """The status of each row of each combination, after refusing pending rows (unless
    ``allow_partial``) and usable rows too few for the selection.

    Parameters
    ----------
    cache : Cache
    combos : list of (str, str)
        The (model, layer) pairs to fit.
    selection : {"val", "cv"}
        How hyper-parameters are chosen.
    cv : int
        CV folds (with ``selection="cv"``).
    allow_partial : bool
        Accept pending rows (they are left out).

    Returns
    -------
    dict
        ``{(model, layer): RowStatus}``.

    Raises
    ------
    AdviceError
        Pending rows without ``allow_partial``, or a class with fewer rows than folds.
    InvalidArgumentError
        A class left without usable training rows, or an empty val split.
    """
    entries = {(e.model, e.layer): e for e in cache.entries}
    rows = {combo: row_status(cache, entries[combo]) for combo in combos}
    partial = {combo: status for combo, status in rows.items() if status.counts()["pending"]}
    if partial and not allow_partial:
        raise AdviceError(
            AdviceError.literal(_pending_text(cache, partial))
            + " Finish the extraction (re-run the same `featurecache extract` command), or pass "
            "{fix} to fit on the rows done (the report states the counts).",
            fix=("allow_partial", True),
        )
    for status in rows.values():
        _check_usable(cache, status, selection, cv)
    return rows


def _pending_text(cache: Cache, partial: dict[tuple[str, str], RowStatus]) -> str:
    """``cache 'c.h5' has pending rows (...): resnet18 (layers a, b): 44 of 300 (train 30,
    test 14)``, the layers of a model grouped when their counts agree."""
    groups: dict[tuple[str, str], list[str]] = {}
    for (model, layer), status in partial.items():
        by_split = status.by_split(cache.splits)
        counts = ", ".join(
            f"{split or '(no split)'} {n['pending']}"
            for split, n in by_split.items()
            if n["pending"]
        )
        text = f"{status.counts()['pending']} of {cache.n_samples} rows ({counts})"
        groups.setdefault((model, text), []).append(layer)
    parts = [
        f"{model} (layer{'s' if len(layers) > 1 else ''} {', '.join(layers)}): {text}"
        for (model, text), layers in groups.items()
    ]
    return (
        f"cache {str(cache.path)!r} has pending rows, not extracted yet (an extraction still "
        f"running or stopped): {'; '.join(parts)}."
    )


def _check_usable(cache: Cache, status: RowStatus, selection: str, cv: int) -> None:
    """Refuse a combination whose usable (ok, labeled) rows leave a class without training
    rows, the val split empty, or a class with fewer rows than CV folds."""
    labeled = (cache.labels >= 0) & ~cache.removed
    usable = labeled & status.ok
    where = f"{status.model}/{status.layer} of cache {str(cache.path)!r}"
    train_all = labeled & (cache.splits == "train")
    train = usable & train_all
    lost = sorted(set(cache.labels[train_all].tolist()) - set(cache.labels[train].tolist()))
    if lost:
        raise InvalidArgumentError(_lost_text(cache, status, lost, where))
    if selection == "val":
        val = labeled & (cache.splits == "val")
        if not (usable & val).any():
            raise InvalidArgumentError(
                f"the val split of {where} has no usable rows ({_why(status, val)}); "
                f"{_fix(status, val)}"
            )
        return
    counts = np.bincount(cache.labels[train], minlength=len(cache.class_names))
    present = np.flatnonzero(counts)
    k = int(present[np.argmin(counts[present])])
    n = int(counts[k])
    if n >= cv:
        return
    name = cache.class_names[k]
    rows_text = f"{n} usable train row{'s' if n != 1 else ''}"
    missing = train_all & (cache.labels == k) & ~status.ok
    also = f" ({_why(status, missing)})" if missing.any() else ""
    if n >= 2:
        detail = f" needs at least {cv} train rows per class; class {name!r} has {rows_text} in "
        raise AdviceError(
            "{asked}" + AdviceError.literal(f"{detail}{where}{also}. Use ") + "{fix} (or fewer "
            "folds), " + AdviceError.literal(f"add training images of {name!r}, or leave the "
                                             "class out."),
            asked=("cv", cv), fix=("cv", n),
        )  # fmt: skip
    raise InvalidArgumentError(
        f"class {name!r} has {rows_text} in {where}{also}, and cross-validation needs at least "
        f"2 per class (fewer than 2 folds is impossible): add training images of {name!r}, "
        "leave the class out, or give the data a val split (a val/ folder or a split column) "
        "to choose hyper-parameters on."
    )


def _lost_text(cache: Cache, status: RowStatus, lost: list[int], where: str) -> str:
    names = ", ".join(repr(cache.class_names[k]) for k in lost)
    rows = (cache.labels >= 0) & ~cache.removed & (cache.splits == "train")
    rows &= np.isin(cache.labels, lost)
    plural = "es" if len(lost) > 1 else ""
    return (
        f"class{plural} {names} {'have' if plural else 'has'} no usable train rows in {where}: "
        f"{'their' if plural else 'its'} {int(rows.sum())} train rows are {_why(status, rows)}; "
        f"a head cannot learn {'them' if plural else 'it'}. {_fix(status, rows)}"
    )


def _why(status: RowStatus, rows: np.ndarray) -> str:
    """``3 pending, 1 failed`` for the non-ok rows among ``rows``."""
    counts = RowStatus(status.model, status.layer, status.status[rows]).counts()
    parts = [f"{counts[kind]} {kind}" for kind in ("pending", "failed") if counts[kind]]
    return ", ".join(parts) or "0 usable"


def _fix(status: RowStatus, rows: np.ndarray) -> str:
    counts = RowStatus(status.model, status.layer, status.status[rows]).counts()
    if counts["pending"]:
        return "Finish the extraction (re-run the same `featurecache extract` command) first."
    return (
        "Replace the unreadable images (`featurecache ls CACHE` lists them with their reason) "
        "and extract into a new cache, or leave the class out."
    )
