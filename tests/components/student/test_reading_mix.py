import math

import numpy as np
import pytest

from components.metrics import average_precision
from components.student.reading_mix import ReadingMix, joint_log_odds


def test_logit_hand_computed():
    mix = ReadingMix(weight=0.25, scale=10.0, bias=-5.0)
    cosine, joint = np.array([0.8]), np.array([0.2])
    expected = 0.25 * (10 * 0.8 - 5) + 0.75 * math.log(0.2 / 0.8)
    assert mix.logit(cosine, joint)[0] == pytest.approx(expected)
    assert mix(cosine, joint)[0] == pytest.approx(1 / (1 + math.exp(-expected)))


@pytest.mark.parametrize("weight,reading", [(1.0, "cosine"), (0.0, "joint")])
def test_the_ends_of_the_weight_are_one_reading_alone(weight, reading):
    g = np.random.default_rng(0)
    cosine, joint = g.uniform(-1, 1, 50), g.uniform(0, 1, 50)
    mixed = ReadingMix(weight)(cosine, joint)
    alone = cosine if reading == "cosine" else joint
    assert (np.argsort(mixed) == np.argsort(alone)).all()


def test_joint_log_odds_stay_finite_at_certainty():
    odds = joint_log_odds(np.array([0.0, 0.5, 1.0], dtype=np.float32))
    assert np.isfinite(odds).all() and odds[1] == pytest.approx(0.0) and odds[0] < -10 < 10 < odds[2]


@pytest.mark.parametrize("good,expected", [("cosine", 1.0), ("joint", 0.0)])
def test_fit_chooses_the_reading_that_ranks(good, expected):
    g = np.random.default_rng(1)
    labels = np.r_[np.ones(20), np.zeros(20)]
    ranked, noise = np.r_[g.uniform(0.6, 0.9, 20), g.uniform(0.1, 0.4, 20)], g.uniform(0.1, 0.9, 40)
    cosine, joint = (ranked, noise) if good == "cosine" else (g.uniform(-1, 1, 40), ranked)
    mix = ReadingMix.fit(cosine, joint, labels, average_precision, scale=10.0, bias=-5.0)
    assert mix.weight == expected
    assert average_precision(mix(cosine, joint), labels) == pytest.approx(1.0)


def test_fit_finds_a_mix_better_than_either_reading():
    # each reading misorders a different pair; together (equal weight on equal scales) they order all four
    labels = np.array([1, 1, 0, 0])
    cosine = np.array([0.9, 0.3, 0.4, 0.1])   # cosine log-odds, scale 10, bias -5: 4, -2, -1, -4
    joint = 1 / (1 + np.exp(-np.array([-1.0, 4.0, 1.5, -3.0])))
    assert average_precision(cosine, labels) < 1 and average_precision(joint, labels) < 1
    mix = ReadingMix.fit(cosine, joint, labels, average_precision, scale=10.0, bias=-5.0)
    assert 0 < mix.weight < 1 and average_precision(mix(cosine, joint), labels) == pytest.approx(1.0)


def test_ties_go_to_the_cosine_reading_and_an_undefined_measure_never_wins():
    cosine, joint, labels = np.array([0.9, 0.1]), np.array([0.8, 0.2]), np.array([1, 0])
    assert ReadingMix.fit(cosine, joint, labels, lambda s, y: 1.0, 10.0, -5.0).weight == 1.0
    calls = []  # the grid is tried from weight 1 down: the first call is the cosine reading alone

    def undefined_first(scores, y):
        calls.append(1)
        return float("nan") if len(calls) == 1 else 0.5

    assert ReadingMix.fit(cosine, joint, labels, undefined_first, 10.0, -5.0).weight == 0.9


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_a_weight_out_of_range_is_refused(weight):
    with pytest.raises(ValueError, match="weight"):
        ReadingMix(weight)


def test_mismatched_readings_are_refused():
    with pytest.raises(ValueError, match="shape"):
        ReadingMix(0.5).logit(np.zeros(3), np.zeros(2))
