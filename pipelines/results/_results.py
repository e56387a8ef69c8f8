"""The results folder: its schema, every write to it, reading it back, and the one ranking.

:func:`~pipelines.fit` writes a results folder; :func:`~pipelines.report`, the
``featurecache`` command line, the demo and :func:`~pipelines.best_combination`
read it. This module is the only code that knows its layout::

    RESULTS/
      run.json                               the run: cache, samples digest, arguments,
                                             protocol, data summary
      results.csv                            one row per finished (model, layer, head, variant)
      combos/<model>/<layer>/<head>.json     the full record of one combination (written last)
      heads/<model>/<layer>/<head>.joblib    the fitted head and its provenance
      predictions/<model>/<layer>/<head>.csv test predictions, one row per sample
      curves.csv                             few-shot learning curves (fit --shots): one row
                                             per (model, layer, head, shots, draw)

A combination trained on augmented views or scored with test-time augmentation (a
*variant*, :class:`pipelines.rows._views.Variant`) has its files beside the plain one, named
``<head>+<variant>`` (``logreg+views``, ``logreg+views+tta-mean-proba``), so plain and
views results of the same head live in one folder and the report compares them.

Every file is written through :func:`featurecache.cache.atomic_write` (a temporary
name in the same folder, renamed into place). A combination is finished when its
record in ``combos/`` exists, its head file exists, and its ``key`` matches; a re-run
skips it. The key is the SHA-256 of the canonical JSON of ``key_fields`` (kept in the
record): the samples digest, the feature configuration, ``features_digest`` (the exact
feature rows read: :meth:`featurecache.cache.Cache.features_digest`, also a column of the
record), the head, its grid, the folds and the seed. A combination whose features changed
(extracted again from other pixels, rows added or completed) is therefore fitted again,
and ``fit`` says why in one line per reason. Records written before ``features_digest``
(``RECORD_VERSION`` 1) are fitted again once.

``results.csv`` has the columns :data:`RESULT_COLUMNS`:

- ``model``, ``layer``, ``head``: the combination; ``depth``: the layer's depth
  (0 = input, 1 = penultimate embedding; empty when unknown);
- ``views``: ``none``, or ``train`` (trained on every view of every training row);
  ``n_views``: views per training row (1 when plain); ``tta``: ``none``, ``mean-proba``
  or ``mean-feature`` (how test rows were scored); ``n_tta``: test-time views per test
  row (1 without TTA); records written before views read as plain;
- ``params``: the chosen hyper-parameters (JSON); ``selection``: ``val`` or ``k-fold CV``;
- ``cv_mean``, ``cv_std``: the chosen candidate's score on training data;
- ``test_accuracy``, ``test_balanced_accuracy``, ``test_macro_f1``: scored once on
  ``test`` (empty without a test split);
- ``fit_seconds``: CV folds and refit, summed; ``predict_seconds_per_1000``: the
  refitted head's prediction time per 1,000 test rows; ``n_train``, ``n_val``,
  ``n_test``; ``n_features``: the layer's width; ``n_not_converged``: fits that hit
  ``max_iter``;
- ``warnings``: doubts about the choice (a chosen value at the end of its grid), one
  sentence each, or empty;
- ``strategy``: how the head was chosen and refitted within the memory budget
  (``in memory``, ``exact, streamed Gram (N rows)``, ``selected on a stratified sample of
  S rows, refit on N (streamed L-BFGS)``…, see :mod:`pipelines.fitting._ooc`); ``n_select``,
  ``n_refit``: the rows the choice and the refit used (views counted as rows; empty in
  records written before them);
- ``head_file``, ``predictions_file``: paths relative to the folder.

``curves.csv`` has the columns :data:`CURVE_COLUMNS`; the best combination is still
chosen from ``results.csv`` (the full training data) only.

What a head file holds, and reading it back (:func:`load_head`, :class:`HeadRecord`),
belongs to :mod:`pipelines.results._head_file`; they are importable from here too. A predictions
file has the columns :data:`PREDICTION_COLUMNS`.

The best combination
--------------------
:func:`best` is the one ranking of combinations. The tie rule: the highest CV mean,
then the lowest CV std, then fewer features (``n_features``), then the names
``model``, ``layer`` and ``head`` in ascending order, then the cheaper variant: fewer
views per training row (``n_views``), fewer test-time views (``n_tta``), then ``tta`` by
name. (TTA changes test scoring only, so a TTA row ties with its sibling in CV and the
plain scoring ranks first.) A missing value ranks last. Test scores play no part.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from featurecache.cache import Cache, atomic_write
from featurecache.core._paths import check_output
from featurecache.core._validation import AdviceError, ParameterError
from featurecache.exceptions import InvalidArgumentError
from pipelines.heads._heads import list_heads
from pipelines.results._head_file import HEAD_KEYS, HeadRecord, head_contents, load_head
from pipelines.rows._rows import RowStatus, features_digest, row_status
from pipelines.rows._views import PLAIN, Variant

logger = logging.getLogger(__name__)

__all__ = [
    "HeadRecord",
    "ResultsFolder",
    "load_head",
    "best",
    "best_per",
    "rank",
    "frame",
    "jsonable",
    "RANKING",
    "RESULT_COLUMNS",
    "FLOAT_COLUMNS",
    "HEAD_KEYS",
    "PREDICTION_COLUMNS",
    "CURVE_COLUMNS",
    "RECORD_VERSION",
]

#: Bumped when a combination's record changes meaning: older records are refitted.
#: 2: keys name the exact feature rows read (``features_digest``), hashed as canonical JSON.
RECORD_VERSION = 2
#: The columns of ``results.csv``, in order, with the kind of value each holds; the float
#: columns are read back as floats (a JSON null, no test split or no depth, as NaN).
RESULT_TYPES = {
    "model": str, "layer": str, "depth": float, "head": str, "views": str, "n_views": int,
    "tta": str, "n_tta": int, "params": str, "selection": str, "cv_mean": float,
    "cv_std": float, "test_accuracy": float, "test_balanced_accuracy": float,
    "test_macro_f1": float, "fit_seconds": float, "n_train": int, "n_val": int, "n_test": int,
    "n_features": int, "n_not_converged": int, "warnings": str, "strategy": str,
    "n_select": int, "n_refit": int, "predict_seconds_per_1000": float, "head_file": str,
    "predictions_file": str,
}  # fmt: skip
RESULT_COLUMNS = tuple(RESULT_TYPES)
FLOAT_COLUMNS = tuple(name for name, kind in RESULT_TYPES.items() if kind is float)
#: ``confidence``: the predicted class's probability (or vote share); for heads without
#: probabilities, the softmax of their decision scores.
PREDICTION_COLUMNS = ("id", "y_true", "y_pred", "true_class", "pred_class", "confidence")
CURVE_COLUMNS = (
    "model",
    "layer",
    "head",
    "shots",
    "draw",
    "params",
    "selection",
    "cv_mean",
    "test_accuracy",
    "n_train",
    "fit_seconds",
)
#: The ranking of :func:`best`: column and whether it ascends.
RANKING = (
    ("cv_mean", False),
    ("cv_std", True),
    ("n_features", True),
    ("model", True),
    ("layer", True),
    ("head", True),
    ("n_views", True),
    ("n_tta", True),
    ("tta", True),
)
#: The variant columns and their value in records written before views (plain).
VARIANT_DEFAULTS = Variant().columns()
#: The strategy columns and their value in records written before the memory budget.
STRATEGY_DEFAULTS = {"strategy": "in memory", "n_select": math.nan, "n_refit": math.nan}


# -- ranking --------------------------------------------------------------------------


def rank(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` ordered best first by :data:`RANKING` (see the module docstring).

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of ``results.csv`` (or any subset): at least the columns ``cv_mean``,
        ``cv_std``, ``n_features``, ``model``, ``layer`` and ``head``.
    """
    columns = [column for column, _ in RANKING]
    table = table.assign(**{k: v for k, v in VARIANT_DEFAULTS.items() if k not in table})
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InvalidArgumentError(
            f"ranking needs the columns {', '.join(columns)}; the table lacks {', '.join(missing)}."
        )
    return table.sort_values(
        columns,
        ascending=[ascending for _, ascending in RANKING],
        na_position="last",
        kind="mergesort",
    )


def best(table: pd.DataFrame) -> pd.Series:
    """The best combination of ``table``: highest CV mean, then lowest CV std, then
    fewer features, then model, layer and head names ascending, then the cheaper variant
    (fewer views, fewer test-time views). Test plays no part.

    Raises
    ------
    InvalidArgumentError
        ``table`` has no rows, or lacks a ranking column.
    """
    if len(table) == 0:
        raise InvalidArgumentError("there is no combination to choose from: the table is empty.")
    return rank(table).iloc[0]


def best_per(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The :func:`best` row of each group of ``by`` (e.g. the best head of each model and
    layer), in the order of ``table``."""
    winners = rank(table).groupby(list(by), sort=False).head(1).index
    return table.loc[table.index.isin(winners)]


# -- reading --------------------------------------------------------------------------


def frame(records: Sequence[Mapping]) -> pd.DataFrame:
    """Combination records as a table in display order (model, depth, layer, head order).

    Float columns are numbers (``NaN`` where a record has ``null``). Two helper columns
    hold the display order: ``head_order`` (a head's place in
    :func:`~pipelines.list_heads`) and ``depth_sort`` (``depth``, unknown last).
    """
    order = _head_order()
    table = pd.DataFrame(sorted(records, key=lambda r: _display_key(r, order)))
    if table.empty:
        table = pd.DataFrame(columns=[*RESULT_COLUMNS])
    for column in ("warnings", "predict_seconds_per_1000"):  # records written before them
        if column not in table:
            table[column] = "" if column == "warnings" else math.nan
    for column, value in STRATEGY_DEFAULTS.items():  # records written before the budget
        table[column] = table[column].fillna(value) if column in table else value
    for column, value in VARIANT_DEFAULTS.items():  # records written before views: plain
        table[column] = table[column].fillna(value) if column in table else value
    for column in ("n_views", "n_tta"):
        table[column] = table[column].astype(int)
    for column in FLOAT_COLUMNS:  # JSON null (no test split, no depth) -> NaN
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    table["head_order"] = table["head"].map(lambda h: order.get(h, len(order)))
    table["depth_sort"] = table["depth"].fillna(math.inf)
    return table.reset_index(drop=True)


def _head_order() -> dict[str, int]:
    return {name: i for i, name in enumerate(list_heads())}


def _display_key(record: Mapping, order: Mapping[str, int]) -> tuple:
    depth = record.get("depth")
    return (
        record["model"],
        depth if depth is not None else math.inf,
        record["layer"],
        order.get(record["head"], len(order)),
        record["head"],
        record.get("n_views", 1),
        record.get("n_tta", 1),
        record.get("tta", PLAIN),
    )


# -- the folder -----------------------------------------------------------------------


class ResultsFolder:
    """One results folder: the only writer and reader of its files.

    Parameters
    ----------
    root : str or path
        The folder; nothing is created until something is written.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # -- run.json

    def is_ours(self) -> bool:
        """True when ``root`` is an empty folder or holds ``run.json``: a folder fit may use."""
        return self.root.is_dir() and (self._run_path.is_file() or not any(self.root.iterdir()))

    def check_path(self, *, force: bool = False) -> None:
        """Refuse, before any work, a root fit cannot write, or did not write (unless ``force``).

        Raises
        ------
        ParameterError
            About ``out`` (``fit``'s parameter): a name too long, a folder that cannot be
            written, a file, or a non-empty folder without ``run.json``.
        """
        check_output(
            self.root, "out", "fit", kind="folder", ours=lambda _: self.is_ours(), force=force,
            expected="a new or empty folder, or a results folder",
        )  # fmt: skip

    def check(self, cache: Cache, *, force: bool = False) -> bool:
        """Refuse a results folder made from other samples than ``cache``'s, unless ``force``.

        A results folder made from this same cache before its samples changed (a dataset
        that grew or changed) is accepted: its results are removed so every combination is
        fitted again on the new samples, and a warning says why.

        Returns
        -------
        bool
            True when the folder's results must be removed first (other samples: the same
            cache after its dataset changed, or ``force``).

        Raises
        ------
        InvalidArgumentError
            ``run.json`` is unreadable, or records another samples digest than ``cache``'s.
        """
        if not self._run_path.is_file():
            return False
        run = self.read_run("fit")
        recorded = run.get("samples_digest")
        if recorded == cache.samples_digest:
            return False
        if force:
            return True
        if run.get("cache") == str(Path(cache.path).resolve()):
            logger.warning(
                "the samples of cache %r changed since %r was fitted (the dataset grew or "
                "changed): every combination is fitted again.", str(cache.path), str(self.root),
            )  # fmt: skip
            return True
        raise AdviceError(
            AdviceError.literal(
                f"results folder {str(self.root)!r} was made from other samples (samples "
                f"digest {str(recorded)[:12]}…, cache {str(cache.path)!r} has "
                f"{cache.samples_digest[:12]}…); write into a new results folder, or pass "
            )
            + "{fix} to replace its results.",
            fix=("force", True),
        )

    @contextlib.contextmanager
    def writing(self, run: Mapping, *, replace: bool = False) -> Iterator[None]:
        """Write ``run.json`` (after removing the old results when ``replace``), then run the
        block. If the block fails before any combination is finished, the folder is left as
        it was found: a folder this call created is removed, and so is every file it wrote.
        """
        created = not self.root.exists()
        if self.root.exists() and not self.root.is_dir():
            self.root.unlink()  # a file in the way, replaced under force (checked by check_path)
            created = True
        if replace:
            self.clear()
        before = {name for name in _OWNED if (self.root / name).exists()}
        previous_run = self._run_path.read_bytes() if self._run_path.is_file() else None
        try:
            self.write_run(run)
            yield
        except BaseException:
            if not self.records():
                self._undo(created, before, previous_run)
            raise

    def clear(self) -> None:
        """Remove every file and folder fit writes here (and nothing else)."""
        for name in _OWNED:
            _remove(self.root / name)

    def _undo(self, created: bool, before: set[str], previous_run: bytes | None) -> None:
        with contextlib.suppress(OSError):  # the error that stopped the fit matters more
            if created:
                shutil.rmtree(self.root)
                return
            for name in _OWNED:
                if name not in before:
                    _remove(self.root / name)
            if previous_run is not None:
                atomic_write(self._run_path, lambda p: p.write_bytes(previous_run))

    @property
    def _run_path(self) -> Path:
        return self.root / "run.json"

    def write_run(self, record: Mapping) -> None:
        """Write ``run.json``."""
        text = json.dumps(jsonable(record), indent=1)
        atomic_write(self._run_path, lambda p: p.write_text(text))

    def read_run(self, owner: str = "report") -> dict:
        """``run.json``; ``owner`` is the function whose ``results`` parameter names the folder.

        Raises
        ------
        ParameterError
            The folder has no ``run.json`` (it is not a results folder).
        InvalidArgumentError
            ``run.json`` is unreadable.
        """
        if not self._run_path.is_file():
            raise ParameterError(
                "results", owner, "a results folder written by fit", str(self.root),
                "It has no run.json; run `featurecache fit CACHE --out RESULTS` first.",
            )  # fmt: skip
        try:
            return json.loads(self._run_path.read_text())
        except ValueError as error:
            raise InvalidArgumentError(
                f"{str(self._run_path)!r} is unreadable ({error}); choose a new results folder."
            ) from error

    # -- combinations

    def path(self, kind: str, model: str, layer: str, head: str, variant: str = "") -> Path:
        """``root/<kind>/<model>/<layer>/<head><suffix>`` for ``combos``, ``heads`` or
        ``predictions``; ``<head>+<variant>`` for a variant (:attr:`Variant.name`)."""
        suffix = {"combos": ".json", "heads": ".joblib", "predictions": ".csv"}[kind]
        stem = _safe(head) + (f"+{variant}" if variant else "")
        return self.root / kind / _safe(model) / _safe(layer) / f"{stem}{suffix}"

    def record(self, model: str, layer: str, head: str, variant: str = "") -> dict | None:
        """The combination's record, or ``None`` when it has none (or an unreadable one)."""
        path = self.path("combos", model, layer, head, variant)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None

    def is_done(self, model: str, layer: str, head: str, key: str, variant: str = "") -> bool:
        """True when the combination's record has ``key`` and its head file exists."""
        data = self.record(model, layer, head, variant)
        if data is None:
            return False
        return data.get("key") == key and (self.root / data.get("head_file", "")).is_file()

    def write_head(
        self, *, estimator: Any, model: str, layer: str, head: str, params: Mapping[str, Any],
        class_names: Sequence[str], samples_digest: str, provenance: Mapping[str, Any],
        variant: str = "",
    ) -> str:  # fmt: skip
        """Write a head file (:func:`pipelines.results._head_file.head_contents`) and return its path
        relative to the folder. ``provenance`` holds the cached layer's attributes, its
        ``config`` among them."""
        stored = head_contents(
            estimator=estimator, model=model, layer=layer, head=head, params=params,
            class_names=class_names, samples_digest=samples_digest, provenance=provenance,
        )  # fmt: skip
        path = self.path("heads", model, layer, head, variant)
        atomic_write(path, lambda p: joblib.dump(stored, p))
        return str(path.relative_to(self.root))

    def write_predictions(
        self,
        model: str,
        layer: str,
        head: str,
        *,
        ids: np.ndarray,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        class_names: Sequence[str],
        confidence: np.ndarray | None = None,
        variant: str = "",
    ) -> str:
        """Write the test predictions of a combination and return the path relative to the
        folder, or ``""`` when there are none (no test split)."""
        if len(y_true) == 0:
            return ""
        names = np.asarray(class_names, dtype=object)
        if confidence is None:
            confidence = np.full(len(y_true), np.nan)
        columns = (ids, y_true, y_pred, names[y_true], names[y_pred], confidence)
        table = pd.DataFrame(dict(zip(PREDICTION_COLUMNS, columns, strict=True)))
        path = self.path("predictions", model, layer, head, variant)
        atomic_write(path, lambda p: table.to_csv(p, index=False))
        return str(path.relative_to(self.root))

    def write_combo(self, record: Mapping[str, Any]) -> None:
        """Write a combination's record (``key`` and every :data:`RESULT_COLUMNS`, plus
        anything else worth keeping); written last, it marks the combination finished."""
        _require(record, ("key", *RESULT_COLUMNS), "combination record")
        text = json.dumps(jsonable(record), indent=1)
        variant = Variant(**{k: record[k] for k in VARIANT_DEFAULTS}).name
        path = self.path("combos", record["model"], record["layer"], record["head"], variant)
        atomic_write(path, lambda p: p.write_text(text))

    def records(self) -> list[dict]:
        """Every readable combination record (unreadable ones are skipped)."""
        folder = self.root / "combos"
        found = []
        for path in sorted(folder.glob("*/*/*.json")) if folder.is_dir() else []:
            with contextlib.suppress(ValueError):
                found.append(json.loads(path.read_text()))
        return found

    def finished(self) -> list[dict]:
        """:meth:`records`, refusing a folder with none.

        Raises
        ------
        InvalidArgumentError
            No combination is finished yet.
        """
        records = self.records()
        if not records:
            raise InvalidArgumentError(
                f"results folder {str(self.root)!r} holds no finished combination yet; run "
                "`featurecache fit` (it resumes where it stopped)."
            )
        return records

    # -- against the cache

    def mismatches(self, cache: Cache) -> list[str]:
        """What no longer matches between these results and ``cache`` as it is now, one
        phrase each (empty when they match): the sample table, the rows of each
        combination ``run.json`` counts, and the exact features each record was fitted on
        (its ``features_digest``; records written before it are compared on the rest)."""
        run = self.read_run("report")
        found = []
        recorded = str(run.get("samples_digest", ""))
        if recorded != cache.samples_digest:
            found.append(
                f"the sample table changed (samples digest {recorded[:12]}… when fitted, "
                f"{cache.samples_digest[:12]}… now)"
            )
        statuses: dict[tuple[str, str], RowStatus | None] = {}

        def status(model: str, layer: str) -> RowStatus | None:
            if (model, layer) not in statuses:
                present = model in cache.models and layer in cache.layers(model)
                statuses[model, layer] = (
                    row_status(cache, cache.entry(model, layer)) if present else None
                )
            return statuses[model, layer]

        for combo in (run.get("rows") or {}).get("combinations", ()):
            now = status(combo["model"], combo["layer"])
            if now is None:
                continue  # said once below, with the records
            changed = [
                f"{kind} {combo[kind]} → {n}" for kind, n in now.counts().items()
                if combo.get(kind, n) != n
            ]  # fmt: skip
            if changed:
                found.append(
                    f"the rows of {combo['model']}/{combo['layer']} changed ({', '.join(changed)})"
                )
        for model, layer, digest, variant in _fitted_features(self.records()):
            now = status(model, layer)
            if now is None:
                found.append(f"{model}/{layer} is no longer in the cache")
            elif digest is not None and features_digest(cache, now, variant) != digest:
                found.append(f"the features of {model}/{layer} changed since they were fitted")
        return list(dict.fromkeys(found))

    # -- curves.csv

    def curves(self) -> pd.DataFrame:
        """Every learning-curve row of the finished combinations (:data:`CURVE_COLUMNS`)."""
        rows = [
            {"model": r["model"], "layer": r["layer"], "head": r["head"], **point}
            for r in self.records()
            for point in r.get("curve") or ()
        ]
        table = pd.DataFrame(rows, columns=list(CURVE_COLUMNS))
        for column in ("cv_mean", "test_accuracy", "fit_seconds"):
            table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
        return table

    def write_curves(self) -> pd.DataFrame:
        """Rewrite ``curves.csv`` (only when some combination has a curve)."""
        table = self.curves()
        if not table.empty:
            table = table.assign(
                params=table["params"].map(lambda p: json.dumps(p, sort_keys=True))
            )
            atomic_write(self.root / "curves.csv", lambda p: table.to_csv(p, index=False))
        return table

    # -- results.csv

    def write_table(self) -> pd.DataFrame:
        """Rewrite ``results.csv`` from the records and return its rows."""
        table = frame(self.records())[list(RESULT_COLUMNS)]
        table = table.assign(params=table["params"].map(lambda p: json.dumps(p, sort_keys=True)))
        atomic_write(self.root / "results.csv", lambda p: table.to_csv(p, index=False))
        return table


def _fitted_features(records: Sequence[Mapping]) -> list[tuple[str, str, str | None, Variant]]:
    """``(model, layer, features_digest, variant)`` of each record (digest ``None`` for
    records written before it), one per (model, layer, digest, variant)."""
    found = {}
    for record in records:
        variant = Variant(**{k: record.get(k, v) for k, v in VARIANT_DEFAULTS.items()})
        key = (record["model"], record["layer"], record.get("features_digest"), variant)
        found.setdefault(key, None)
    return list(found)


#: Every name fit writes at the top of a results folder.
_OWNED = ("run.json", "results.csv", "curves.csv", "combos", "heads", "predictions")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _require(record: Mapping, keys: Sequence[str], what: str) -> None:
    missing = [key for key in keys if key not in record]
    if missing:
        raise KeyError(f"the {what} lacks {', '.join(missing)}")


def _safe(name: str) -> str:
    """A path component for a model, layer or head name."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        return "_" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return name


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python values and non-finite floats as
    ``None``, ready for :func:`json.dumps`."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
