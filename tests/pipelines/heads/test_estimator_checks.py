"""Every custom estimator of stage 2 passes scikit-learn's own estimator checks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipelines.heads._fixed import FixedLinearClassifier
from pipelines.heads._knn import CosineKNNClassifier

#: Checks that cannot apply, with scikit-learn's reason-per-check mechanism.
_FIXED_WEIGHTS = {
    "check_classifiers_train": "fixed weights: fit learns nothing, so the training accuracy "
    "of a weight-less placeholder is chance, not the 0.83 the check asks of a learner",
}


def _expected_failures(estimator) -> dict[str, str]:
    return _FIXED_WEIGHTS if isinstance(estimator, FixedLinearClassifier) else {}


@parametrize_with_checks(
    [FixedLinearClassifier(), CosineKNNClassifier(n_neighbors=3)],
    expected_failed_checks=_expected_failures,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _fixed(n_classes: int = 3, n_features: int = 4) -> FixedLinearClassifier:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n_classes, n_features))
    return FixedLinearClassifier(weight=weight, bias=rng.standard_normal(n_classes))


def test_fixed_weights_refuse_predict_before_fit_and_continuous_labels():
    X = np.random.default_rng(1).standard_normal((6, 4))
    with pytest.raises(NotFittedError, match=r"^This FixedLinearClassifier instance is not fitted"):
        _fixed().predict(X)
    with pytest.raises(ValueError, match=r"^Unknown label type: continuous"):
        _fixed().fit(X, np.linspace(0.1, 0.9, 6))
    with pytest.raises(ValueError, match=r"^y holds classes outside 0\.\.2\.$"):
        _fixed().fit(X, np.arange(6))
    with pytest.raises(ValueError, match=r"^X has 3 features, but the fixed weights have shape"):
        _fixed().fit(X[:, :3])


def test_two_fixed_classes_give_the_binary_margin_and_the_softmax_of_both_logits():
    X = np.random.default_rng(2).standard_normal((8, 4))
    clf = _fixed(n_classes=2).fit(X)
    logits = X @ clf.weight.T + clf.bias
    np.testing.assert_allclose(clf.decision_function(X), logits[:, 1] - logits[:, 0])
    np.testing.assert_allclose(
        clf.predict_proba(X)[:, 1], 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0])))
    )
    assert np.array_equal(clf.predict(X), logits.argmax(axis=1))
