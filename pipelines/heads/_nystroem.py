"""An RBF-kernel head that scales: a Nyström feature map followed by a linear ridge head.

``NystroemClassifier(gamma, n_components, alpha)`` is exactly
``make_pipeline(Nystroem(kernel="rbf", gamma=gamma, n_components=n_components,
random_state=seed), RidgeClassifier(alpha=alpha))``: the map approximates the RBF kernel
``exp(-gamma ||x - x'||²)`` on ``n_components`` training rows drawn with the seed, and
the ridge classifier is linear in it. Fitting costs ``O(n_samples n_components²)``, not
the ``O(n_samples²)`` and more of ``SVC``, so 60,000 rows fit in minutes.

A search scores every ``alpha`` of one ``(gamma, n_components)`` from one map and one
eigendecomposition (:func:`pipelines.heads._ridge.ridge_path_predictions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import RidgeClassifier
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from pipelines.heads._ridge import ridge_path_predictions

__all__ = ["NystroemClassifier", "nystroem_grid_predictions"]


class NystroemClassifier(ClassifierMixin, BaseEstimator):
    """RBF kernel approximated by Nyström, then ``RidgeClassifier``.

    Parameters
    ----------
    gamma : float, default=1.0
        The RBF kernel's ``gamma``.
    n_components : int, default=1000
        Rows the map is built on; at most ``n_samples``.
    alpha : float, default=1.0
        The ridge penalty.
    random_state : int, default=0
        Draws the rows of the map.

    Attributes
    ----------
    map_ : Nystroem
    linear_ : RidgeClassifier
    classes_ : ndarray of shape (n_classes,)
    """

    _parameter_constraints: dict = {
        "gamma": [Interval(Real, 0, None, closed="neither")],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, gamma=1.0, n_components=1000, alpha=1.0, random_state=0):
        self.gamma = gamma
        self.n_components = n_components
        self.alpha = alpha
        self.random_state = random_state

    def fit(self, X, y):
        """Build the map on ``X`` and fit the ridge head on the mapped rows."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        self.map_ = _map(self.gamma, self.n_components, self.random_state, len(X)).fit(X)
        self.linear_ = RidgeClassifier(alpha=self.alpha).fit(self.map_.transform(X), y)
        self.classes_ = self.linear_.classes_
        return self

    def decision_function(self, X) -> np.ndarray:
        """The ridge head's scores of the mapped rows."""
        check_is_fitted(self, "linear_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.linear_.decision_function(self.map_.transform(X))

    def predict(self, X) -> np.ndarray:
        """The class of highest score."""
        check_is_fitted(self, "linear_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.linear_.predict(self.map_.transform(X))


def _map(gamma: float, n_components: int, seed, n_samples: int) -> Nystroem:
    # Capped here: Nystroem itself warns and caps when asked for more rows than it gets.
    return Nystroem(
        kernel="rbf", gamma=gamma, n_components=min(int(n_components), n_samples),
        random_state=seed,
    )  # fmt: skip


def nystroem_grid_predictions(
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    candidates: Sequence[tuple[float, int, float]],
    seed: int,
) -> np.ndarray:
    """Labels of ``X_test`` predicted by each ``(gamma, n_components, alpha)`` candidate.

    Returns
    -------
    ndarray of shape (len(candidates), n_test)
        What ``NystroemClassifier(...).fit(X, y).predict(X_test)`` returns for each (up to
        floating-point rounding): one map per ``(gamma, n_components)``, every alpha of it
        from one eigendecomposition.
    """
    out = np.empty((len(candidates), len(X_test)), dtype=np.asarray(y).dtype)
    groups: dict[tuple[float, int], list[int]] = {}
    for i, (gamma, n_components, _) in enumerate(candidates):
        groups.setdefault((float(gamma), int(n_components)), []).append(i)
    for (gamma, n_components), members in groups.items():
        feature_map = _map(gamma, n_components, seed, len(X)).fit(X)
        alphas = [float(candidates[i][2]) for i in members]
        predicted = ridge_path_predictions(
            feature_map.transform(X), y, feature_map.transform(X_test), alphas
        )
        out[members] = predicted
    return out
