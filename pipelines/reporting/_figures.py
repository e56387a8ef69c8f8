"""The report's pictures and the words that judge a difference, as plain functions of their data.

Each figure function takes arrays or a table and returns PNG bytes drawn on
matplotlib's Agg canvas (no pyplot, no global backend change), so the report
only decides what to show.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "TIE",
    "gap_verdict",
    "layer_names_differ",
    "heatmap_figure",
    "layer_depth_figure",
    "heads_figure",
    "confusion_figure",
    "depth_figure",
    "learning_curve_figure",
    "project_2d",
    "map_figure",
    "confidently_wrong",
    "thumbnail",
    "gallery_figure",
    "per_class_accuracy",
]

TIE = 0.0005  # a gap that rounds to 0.000 at three decimals is a tie


def gap_verdict(gap: float, spread: float) -> tuple[str, str]:
    """``(outcome, judgement)`` of a CV gap between two combinations.

    ``outcome`` is ``"tie"`` when the gap rounds to 0.000, ``"win"`` otherwise.
    ``judgement`` compares the gap with the CV spread: at least 2x is ``"likely
    real"``, 1-2x ``"suggestive"``, below 1x ``"not a reliable difference"``; a tie
    is always ``"no difference"``.
    """
    if abs(gap) < TIE:
        return "tie", "no difference"
    if spread <= 0:
        return "win", "likely real"
    ratio = abs(gap) / spread
    if ratio >= 2:
        return "win", "likely real"
    if ratio >= 1:
        return "win", "suggestive"
    return "win", "not a reliable difference"


def layer_names_differ(table: pd.DataFrame) -> bool:
    """True when the models of ``table`` (columns ``model``, ``layer``) have different layer sets."""
    sets = {frozenset(group["layer"]) for _, group in table.groupby("model")}
    return len(sets) > 1


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig, *, stamp: bool = True) -> bytes:
    """The figure as PNG bytes; without ``stamp``, no matplotlib version in its metadata (the
    comparison figures have always been written so)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata=None if stamp else {"Software": None})
    return buffer.getvalue()


def heatmap_figure(cells: pd.DataFrame, score: str, label: str) -> bytes:
    """A model x layer grid of ``score``, each cell labelled with its value and head.

    ``cells`` has one row per (model, layer) with ``model``, ``layer``, ``depth_sort``,
    ``head`` and ``score``; layers run by depth, then name. ``label`` names the colour bar.
    """
    models = sorted(cells["model"].unique())
    depth = cells.groupby("layer")["depth_sort"].mean()
    layers = sorted(depth.index, key=lambda name: (depth[name], name))
    grid = np.full((len(models), len(layers)), np.nan)
    labels = {}
    for _, r in cells.iterrows():
        i, j = models.index(r["model"]), layers.index(r["layer"])
        grid[i, j] = r[score]
        labels[i, j] = f"{r[score]:.3f}\n{r['head']}"
    fig = _figure(max(4.0, 1.1 * len(layers) + 2), max(2.2, 0.7 * len(models) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    for (i, j), text in labels.items():
        bright = grid[i, j] > np.nanmin(grid) + 0.6 * (np.nanmax(grid) - np.nanmin(grid) + 1e-12)
        ax.text(
            j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white"
        )
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    fig.colorbar(image, ax=ax, label=label)
    return _png(fig, stamp=False)


def layer_depth_figure(cells: pd.DataFrame, with_test: bool) -> bytes:
    """One line per backbone: CV accuracy (error bars: CV std) against layer depth, each
    point named by its layer; crosses for the test accuracy ``with_test``.

    ``cells`` has one row per (model, layer) with ``model``, ``layer``, ``depth``,
    ``cv_mean``, ``cv_std`` and ``test_accuracy``; a model with a layer of unknown depth
    has its layers placed 0, 1, 2... in table order.
    """
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    for k, (model, group) in enumerate(cells.groupby("model", sort=True)):
        x = group["depth"].astype(float).to_numpy()
        if np.isnan(x).any():
            x = np.arange(len(group), dtype=float)
        color = f"C{k % 10}"
        ax.errorbar(x, group["cv_mean"], yerr=group["cv_std"].fillna(0.0), marker="o", capsize=3,
                    color=color, label=f"{model} (CV ± std)")  # fmt: skip
        if with_test:
            ax.plot(x, group["test_accuracy"], linestyle="none", marker="x", color=color,
                    label=f"{model} (test)")  # fmt: skip
        for xi, yi, name in zip(x, group["cv_mean"], group["layer"], strict=True):
            ax.annotate(
                name, (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7
            )
    ax.set_xlabel("layer depth (0 = input, 1 = penultimate embedding)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig, stamp=False)


def heads_figure(table: pd.DataFrame, with_test: bool) -> bytes:
    """Bars of CV accuracy (error bars: CV std) of every head at every (model, layer), black
    ticks for the test accuracy ``with_test``.

    ``table`` has one row per (model, layer, head) with ``head_order``, ``depth_sort``,
    ``cv_mean``, ``cv_std`` and ``test_accuracy``.
    """
    heads = [h for _, h in sorted(set(zip(table["head_order"], table["head"], strict=True)))]
    groups = sorted(
        table[["model", "depth_sort", "layer"]].drop_duplicates().itertuples(index=False)
    )
    fig = _figure(max(6.0, 0.5 * len(groups) * len(heads) + 2), 4)
    ax = fig.add_subplot()
    width = 0.8 / len(heads)
    for k, head in enumerate(heads):
        rows = table[table["head"] == head].set_index(["model", "layer"])
        values = [rows["cv_mean"].get((m, layer), np.nan) for m, _, layer in groups]
        errors = [rows["cv_std"].get((m, layer), 0.0) for m, _, layer in groups]
        x = np.arange(len(groups)) + (k - (len(heads) - 1) / 2) * width
        ax.bar(
            x, values, width, yerr=np.nan_to_num(errors), capsize=2, label=head, color=f"C{k % 10}"
        )
        if with_test:
            tests = [rows["test_accuracy"].get((m, layer), np.nan) for m, _, layer in groups]
            ax.plot(x, tests, linestyle="none", marker="_", markersize=10, color="black")
    ax.set_xticks(
        range(len(groups)),
        [f"{m}\n{layer}" for m, _, layer in groups],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylabel("CV accuracy")
    ax.legend(fontsize=8, ncols=min(4, len(heads)))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig, stamp=False)


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str]) -> bytes:
    """The confusion matrix ``matrix[true, predicted]``: counts written in the cells (up to
    30 classes), coloured by the fraction of the true class."""
    n = len(class_names)
    size = min(12.0, max(4.0, 0.45 * n + 2))
    fig = _figure(size, size * 0.85)
    ax = fig.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    return _png(fig, stamp=False)


def depth_figure(
    table: pd.DataFrame, score: str, label: str, marked: Mapping[str, str] | None = None
) -> bytes:
    """One line per backbone: ``score`` against relative depth in [0, 1].

    ``table`` has one row per (model, layer) with ``model``, ``layer``, ``depth``
    and ``score``; rows without a depth are left out. ``marked[model]`` names the
    layer to ring and label (the report passes the best by CV, never by test).
    """
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    for model, rows in table.dropna(subset=["depth", score]).groupby("model", sort=True):
        rows = rows.sort_values("depth")
        (line,) = ax.plot(rows["depth"], rows[score], marker="o", label=model)
        chosen = rows[rows["layer"] == (marked or {}).get(model)]
        if chosen.empty:
            continue
        top = chosen.iloc[0]
        ax.scatter(
            [top["depth"]], [top[score]], s=160, facecolors="none", edgecolors=line.get_color()
        )
        ax.annotate(str(top["layer"]), (top["depth"], top[score]), textcoords="offset points",
                    xytext=(4, 6), fontsize=8, color=line.get_color())  # fmt: skip
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("relative depth (0 = input, 1 = penultimate embedding)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def learning_curve_figure(curves: Mapping[str, Sequence[tuple[float, float, float]]]) -> bytes:
    """Accuracy against shots per class (log axis), a line with a 95 % band per curve.

    ``curves[label] = [(shots, mean, half_width), ...]``.
    """
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    for label, points in curves.items():
        points = sorted(points)
        shots = np.array([p[0] for p in points], dtype=float)
        mean = np.array([p[1] for p in points])
        half = np.array([p[2] for p in points])
        (line,) = ax.plot(shots, mean, marker="o", label=label)
        ax.fill_between(shots, mean - half, mean + half, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training images per class (log scale)")
    ax.set_ylabel("test accuracy (mean of draws, 95 % interval)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def project_2d(X: np.ndarray, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``[("PCA", coords)]``, plus ``("UMAP", coords)`` when ``umap-learn`` is installed.

    Both are fitted on the rows given (the test rows: a picture, not a model).
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaled = StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))
    maps = [("PCA", PCA(n_components=2, random_state=seed).fit_transform(scaled))]
    try:
        import umap
    except ImportError:
        return maps
    reducer = umap.UMAP(n_components=2, random_state=seed)
    maps.append(("UMAP", np.asarray(reducer.fit_transform(scaled))))
    return maps


def map_figure(
    coords: np.ndarray,
    y_true: np.ndarray,
    wrong: np.ndarray,
    class_names: Sequence[str],
    method: str,
) -> bytes:
    """Test points coloured by true class; misclassified ones marked with a black cross."""
    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot()
    cmap = _cmap(len(class_names))
    for k, name in enumerate(class_names):
        mine = y_true == k
        if mine.any():
            ax.scatter(coords[mine, 0], coords[mine, 1], s=8, color=cmap(k), label=name, alpha=0.7)
    if wrong.any():
        ax.scatter(coords[wrong, 0], coords[wrong, 1], s=28, marker="x", color="black",
                   linewidths=0.8, label=f"misclassified ({int(wrong.sum())})")  # fmt: skip
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.legend(fontsize=7, markerscale=1.5, loc="best", ncols=2 if len(class_names) > 8 else 1)
    return _png(fig)


def _cmap(n: int):
    from matplotlib import colormaps

    return colormaps["tab10" if n <= 10 else "tab20"]


def confidently_wrong(predictions: pd.DataFrame, top: int = 12) -> pd.DataFrame:
    """The ``top`` misclassified rows of ``predictions`` by decreasing ``confidence``.

    ``predictions`` has ``y_true``, ``y_pred`` and ``confidence`` (the probability
    or vote share of the predicted class); ties keep file order.
    """
    wrong = predictions[predictions["y_true"] != predictions["y_pred"]]
    return wrong.sort_values("confidence", ascending=False, kind="stable").head(top)


def thumbnail(image, size: int = 64) -> np.ndarray:
    """An RGB ``uint8`` thumbnail of a file path or an array (HxW, HxWx1, HxWx3, HxWx4)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            low, high = float(array.min()), float(array.max())
            array = ((array - low) / (high - low or 1.0) * 255).astype(np.uint8)
        picture = Image.fromarray(array.squeeze())
    else:
        with Image.open(image) as opened:
            picture = opened.copy()
    picture = picture.convert("RGB")
    picture.thumbnail((size, size))
    return np.asarray(picture)


def gallery_figure(
    images: Sequence[np.ndarray], captions: Sequence[str], columns: int = 6
) -> bytes:
    """Thumbnails in a grid, each with its caption (true and predicted class)."""
    rows = max(1, math.ceil(len(images) / columns))
    fig = _figure(1.6 * columns, 1.9 * rows)
    for i in range(rows * columns):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(captions[i], fontsize=7)
    return _png(fig)


def per_class_accuracy(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> list[tuple[str, int, float]]:
    """``(class, test rows, accuracy)`` for every class present in ``y_true``, worst first."""
    rows = []
    for k, name in enumerate(class_names):
        mine = y_true == k
        if mine.any():
            rows.append((name, int(mine.sum()), float(np.mean(y_pred[mine] == k))))
    return sorted(rows, key=lambda r: (r[2], r[0]))
