import numpy as np
import pytest

from components.metrics import average_precision, best_f1, best_f1_threshold, classification_metrics, roc_auc


def test_hand_computed_case():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    labels = np.array([1, 0, 1, 1, 0])
    # threshold 0.6 -> predictions 1,1,1,1,0: tp 3 fp 1 fn 0 -> P 0.75 R 1 F1 6/7
    m = classification_metrics(scores, labels, 0.6)
    assert m["f1"] == pytest.approx(6 / 7) and m["precision"] == 0.75 and m["recall"] == 1.0
    assert m["accuracy"] == pytest.approx(0.8)
    # AUC: positive-negative pairs ordered right: (0.9>0.8,0.2), (0.7>0.2), (0.6>0.2) -> 4 of 6
    assert roc_auc(scores, labels) == pytest.approx(4 / 6)
    # AP: recall steps at ranks 1, 3, 4 with precision 1, 2/3, 3/4
    assert average_precision(scores, labels) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # the best cut is between 0.6 and 0.2: its midpoint, so no dev score sits on the threshold
    assert best_f1_threshold(scores, labels) == pytest.approx(0.4)


def test_ties_do_not_split():
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    labels = np.array([1, 0, 1, 0])
    t = best_f1_threshold(scores, labels)
    assert t == pytest.approx(0.3)  # 0.5 ties are never split: the cut falls between 0.5 and 0.1
    assert roc_auc(scores, labels) == pytest.approx(0.75)


def test_graded_correlations():
    scores = np.array([0.1, 0.4, 0.35, 0.9])
    m = classification_metrics(scores, np.array([0, 0, 1, 1]), 0.3, graded=np.array([0.0, 1.0, 2.0, 5.0]))
    assert m["spearman"] == pytest.approx(0.8)
    assert "pearson" in m


def test_one_class_gives_nan_auc():
    assert np.isnan(roc_auc([0.1, 0.2], [0, 0]))


def test_threshold_is_never_a_score_and_keeps_the_best_f1():
    rng = np.random.default_rng(0)
    scores, labels = rng.random(200), rng.random(200) < 0.4
    t = best_f1_threshold(scores, labels)
    assert not np.isclose(scores, t).any()
    grid = max(classification_metrics(scores, labels, c)["f1"] for c in np.unique(scores))
    assert classification_metrics(scores, labels, t)["f1"] == pytest.approx(grid)


def test_best_f1_by_hand():
    # cuts after 0.9 / 0.8 / 0.3 / 0.1 give F1 2/3, 1/2, 4/5, 2/3: the best is 0.8 (threshold between 0.3 and 0.1)
    assert best_f1(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(0.8)


def _mann_whitney_auc(scores, labels):
    """The formula flipkd used before scikit-learn: average ranks for ties."""
    from scipy.stats import rankdata

    y = np.asarray(labels) >= 0.5
    ranks = rankdata(scores)
    return (ranks[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum())


def _step_ap(scores, labels):
    """The formula flipkd used before scikit-learn: sum over distinct thresholds of (R_k - R_{k-1}) P_k."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], (np.asarray(labels) >= 0.5)[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.sum(np.diff(np.r_[0.0, tp / y.sum()]) * tp / (tp + fp))


@pytest.mark.parametrize("n, decimals, positive_share", [(5, 1, 0.5), (40, 1, 0.2), (40, 3, 0.5), (200, 2, 0.8),
                                                         (200, 6, 0.05)])
def test_same_values_as_the_formulas_before_scikit_learn(n, decimals, positive_share):
    rng = np.random.default_rng(n + decimals)
    scores = np.round(rng.random(n), decimals)  # few decimals: many ties
    labels = (rng.random(n) < positive_share).astype(int)
    labels[:2] = [1, 0]
    assert roc_auc(scores, labels) == pytest.approx(_mann_whitney_auc(scores, labels), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(_step_ap(scores, labels), abs=1e-12)


def test_no_positive_gives_nan_ap_and_zero_f1():
    m = classification_metrics(np.array([0.1, 0.9]), np.array([0, 0]), 0.5)
    assert np.isnan(m["average_precision"]) and np.isnan(m["roc_auc"])
    assert m["f1"] == 0.0 and m["precision"] == 0.0 and m["accuracy"] == 0.5
