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
