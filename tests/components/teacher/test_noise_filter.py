import numpy as np
import pytest
import torch

from components.teacher.noise_filter import DualThresholdFilter, false_negative_mask


def test_counts_on_crafted_example():
    t = [0.9, 0.4, 0.5, 0.6, 0.2, 0.51, 0.49, 0.1]
    y = [1, 1, 1, 0, 0, 0, 1, 0]
    keep, report = DualThresholdFilter(0.5, 0.5)(t, y, ids=list("abcdefgh"))
    # positives: a kept, b dropped (0.4 < 0.5), c kept (0.5 not < 0.5), g dropped (0.49)
    # negatives: d dropped (0.6 > 0.5), e kept, f dropped (0.51), h kept
    assert keep.tolist() == [True, False, True, False, True, False, False, True]
    assert (report.pairs_seen, report.positives_seen, report.negatives_seen) == (8, 4, 4)
    assert report.dropped_positive_below_delta_pos == 2
    assert report.dropped_negative_above_delta_neg == 2
    assert report.kept == 4 and report.fraction_dropped == pytest.approx(0.5)
    assert report.examples == {"positive_below_delta_pos": ["b", "g"], "negative_above_delta_neg": ["d", "f"]}
    assert "dropped 4 of 8 pairs (50.0%)" in report.summary()
    assert report.to_dict()["dropped"] == 4


def test_asymmetric_thresholds_and_scope():
    f = DualThresholdFilter(delta_pos=0.3, delta_neg=0.8, scope="all")
    keep, report = f(np.array([0.35, 0.25, 0.7, 0.85]), np.array([1, 1, 0, 0]))
    assert keep.tolist() == [True, False, True, False]
    assert f.drops_from_training and report.scope == "all"


def test_graded_labels_count_as_match_from_half():
    keep, report = DualThresholdFilter()([0.2, 0.2], [0.6, 0.4])
    assert keep.tolist() == [False, True] and report.positives_seen == 1


@pytest.mark.parametrize("kwargs,match", [({"delta_pos": 1.5}, "delta_pos"), ({"delta_neg": -0.1}, "delta_neg"),
                                          ({"scope": "everything"}, "scope")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DualThresholdFilter(**kwargs)


def test_length_mismatch():
    with pytest.raises(ValueError, match="labels"):
        DualThresholdFilter()([0.1, 0.2], [1])


def test_false_negative_mask():
    t = torch.tensor([[0.9, 0.6, 0.2], [0.1, 0.9, 0.5], [0.7, 0.3, 0.9]])
    assert false_negative_mask(t, 0.5).tolist() == [[False, False, True], [True, False, True], [False, True, False]]
