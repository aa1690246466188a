import numpy as np
import pytest

from benchmarks.threshold_rules import RULES, half_to_half, render, smoothed_f1_threshold
from components.metrics import best_f1_threshold, classification_metrics


def test_smoothed_threshold_separates_separable_scores_between_the_classes():
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    threshold = smoothed_f1_threshold(scores, labels, resamples=50)
    assert 0.3 < threshold < 0.7
    assert classification_metrics(scores, labels, threshold)["f1"] == 1.0


def test_smoothed_threshold_lands_in_the_overlap_and_near_the_f1_maximum_of_the_pairs():
    # negatives on [0, 0.6], positives on [0.4, 1]: every good threshold lies in the overlap
    rng = np.random.default_rng(0)
    negatives = rng.uniform(0.0, 0.6, 300)
    positives = rng.uniform(0.4, 1.0, 100)
    scores = np.r_[negatives, positives]
    labels = np.r_[np.zeros(300), np.ones(100)]
    smoothed = smoothed_f1_threshold(scores, labels)
    plain = best_f1_threshold(scores, labels)
    f1 = classification_metrics(scores, labels, smoothed)["f1"]
    assert 0.4 < smoothed < 0.6
    assert f1 >= classification_metrics(scores, labels, plain)["f1"] - 0.03  # near the maximum on the pairs themselves


@pytest.mark.parametrize("scores, labels", [
    (np.full(10, 0.5), np.r_[np.ones(5), np.zeros(5)]),  # one score for every pair
    (np.linspace(0, 1, 10), np.zeros(10)),  # no positive: F1 is 0 whatever the threshold, fall back to F1's rule
])
def test_smoothed_threshold_falls_back_to_the_f1_maximum_when_there_is_nothing_to_smooth(scores, labels):
    assert smoothed_f1_threshold(scores, labels) == best_f1_threshold(scores, labels)


def test_half_to_half_reads_each_rule_on_the_half_it_did_not_fit():
    rng = np.random.default_rng(1)
    labels = rng.random(200) < 0.3
    perfect = labels.astype(float) + 0.01 * rng.random(200)
    figures = half_to_half(perfect, labels, splits=3)
    assert set(figures) == set(RULES)
    assert all(len(v) == 6 and np.allclose(v, 1.0) for v in figures.values())
    noisy = labels + 1.5 * rng.standard_normal(200)
    figures = half_to_half(noisy, labels, splits=3)
    assert all(0.2 < np.mean(v) < 0.9 for v in figures.values())


def test_render_gives_each_rule_and_their_gap():
    rows = {"stsbenchmark": {"teacher_finetuned": {"f1_max": [0.6, 0.7], "smoothed": [0.65, 0.7]}}}
    text = render(rows, {"stsbenchmark": (600, 106)}, "python -m benchmarks.threshold_rules", 1)
    assert "| stsbenchmark (600, 106) | teacher_finetuned | 0.650 ± 0.050 | 0.675 ± 0.025 | +0.025 ± 0.025 |" in text
