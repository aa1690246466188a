import numpy as np
import pytest

from components.data.augment import AugmentConfig, teacher_labelled_pairs


def unit_rows(n, d=6, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_neighbours_and_random_pairs_are_new_and_scored():
    emb = unit_rows(30)
    existing = [(0, 1), (2, 3)]
    extra = teacher_labelled_pairs(emb, lambda c: (c + 1) / 2, 20, AugmentConfig(per_pair=1.0), existing)
    assert len(extra) == 20 and extra.neighbour.sum() == 10
    keys = {tuple(sorted(p)) for p in zip(extra.index_a.tolist(), extra.index_b.tolist(), strict=True)}
    assert len(keys) == 20 and not keys & {(0, 1), (2, 3)} and all(a != b for a, b in keys)
    expected = (np.einsum("nd,nd->n", emb[extra.index_a], emb[extra.index_b]) + 1) / 2
    np.testing.assert_allclose(extra.scores, expected)
    # a neighbour pair is closer than a random pair on average
    assert extra.scores[extra.neighbour].mean() > extra.scores[~extra.neighbour].mean()
    report = extra.report(0.8)
    assert report["extra_pairs"] == 20 and report["extra_pairs_neighbour"] == 10


def test_none_requested():
    assert len(teacher_labelled_pairs(unit_rows(5), lambda c: c, 0, AugmentConfig())) == 0


@pytest.mark.parametrize("kwargs", [{"per_pair": -1}, {"positive_threshold": 2}])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)
