"""The grouped split keeps every text on one side (hubs shared, giant groups carved); leakage is counted."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from components.data.splitting import check_leakage, split_grouped


def _clustered_pairs(n_clusters: int = 60, seed: int = 0) -> pd.DataFrame:
    """Small connected clusters of 2-6 pairs each (like paraphrase groups), 200-odd pairs in all."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_clusters):
        texts = [f"cluster {c} text {k}" for k in range(int(rng.integers(3, 6)))]
        for k in range(1, len(texts)):
            rows.append((texts[0], texts[k], float(k % 2)))
        rows.append((texts[1], texts[-1], 0.0))
    return pd.DataFrame(rows, columns=["text_a", "text_b", "label"])


def _texts(df: pd.DataFrame) -> set[str]:
    return set(df["text_a"]) | set(df["text_b"])


def test_split_grouped_keeps_texts_apart_and_respects_fractions():
    df = _clustered_pairs()
    splits = split_grouped(df, dev_fraction=0.1, test_fraction=0.2, seed=3)
    assert list(splits) == ["train", "dev", "test"]
    assert sum(len(s) for s in splits.values()) == len(df)
    for x, y in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not _texts(splits[x]) & _texts(splits[y])
    assert check_leakage(splits) == 0
    assert abs(len(splits["dev"]) / len(df) - 0.1) < 0.03
    assert abs(len(splits["test"]) / len(df) - 0.2) < 0.03


def test_split_grouped_is_deterministic_per_seed():
    df = _clustered_pairs()
    first, again, other = split_grouped(df, seed=7), split_grouped(df, seed=7), split_grouped(df, seed=8)
    for split in first:
        pd.testing.assert_frame_equal(first[split], again[split])
    assert first["dev"]["text_a"].tolist() != other["dev"]["text_a"].tolist()


def test_split_grouped_links_texts_across_sides():
    # "x" is text_b of one pair and text_a of another: both pairs must stay together.
    df = pd.DataFrame({"text_a": ["a", "x", "c", "e"], "text_b": ["x", "b", "d", "f"], "label": [1.0, 0, 1, 0]})
    for seed in range(5):
        splits = split_grouped(df, 0.25, 0.25, seed=seed)
        together = [s for s in splits.values() if "x" in _texts(s)]
        assert len(together) == 1 and len(together[0]) == 2


def test_split_grouped_shares_hub_texts_of_a_giant_component(caplog):
    # FAQ-like: every query is paired with one of two answers, which are also paired with each other.
    rows = [(f"query {i}", "the one answer" if i < 150 else "the other answer", float(i % 2)) for i in range(200)]
    rows.append(("the one answer", "the other answer", 0.0))
    df = pd.DataFrame(rows, columns=["text_a", "text_b", "label"])
    with caplog.at_level(logging.WARNING, logger="components.data.splitting"):
        splits = split_grouped(df, 0.1, 0.1, seed=0)
    assert "sharing the 1 most frequent texts" in caplog.text
    assert sum(len(s) for s in splits.values()) == len(df)  # nothing dropped
    assert abs(len(splits["dev"]) - 20) <= 2 and abs(len(splits["test"]) - 20) <= 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="components.data.splitting"):
        assert check_leakage(splits) == 1  # only the hub is shared; queries never cross
    assert "1 distinct texts" in caplog.text


def test_split_grouped_carves_a_giant_component_without_hubs(caplog):
    # A chain t0 - t1 - ... - t200: one component, no text in more than two pairs.
    df = pd.DataFrame({"text_a": [f"t{i}" for i in range(200)], "text_b": [f"t{i + 1}" for i in range(200)],
                       "label": 1.0})
    with caplog.at_level(logging.WARNING, logger="components.data.splitting"):
        splits = split_grouped(df, 0.1, 0.1, seed=0)
        again = split_grouped(df, 0.1, 0.1, seed=0)
    assert "carved dev/test out of it and dropped" in caplog.text
    assert len(splits["dev"]) >= 20 and len(splits["test"]) >= 20
    assert check_leakage(splits) == 0
    assert 0 < len(df) - sum(len(s) for s in splits.values()) <= 6  # only the pairs across the cuts
    pd.testing.assert_frame_equal(splits["test"], again["test"])


def test_split_grouped_edge_cases():
    empty = pd.DataFrame({"text_a": [], "text_b": [], "label": []})
    assert all(len(s) == 0 for s in split_grouped(empty).values())
    with pytest.raises(ValueError, match="sum < 1"):
        split_grouped(_clustered_pairs(), 0.5, 0.5)


def test_check_leakage_counts_and_warns(caplog):
    train = pd.DataFrame({"text_a": ["a", "b"], "text_b": ["c", "d"]})
    dev = pd.DataFrame({"text_a": ["c", "e"], "text_b": ["a", "f"]})
    test = pd.DataFrame({"text_a": ["f"], "text_b": ["g"]})
    with caplog.at_level(logging.WARNING, logger="components.data.splitting"):
        assert check_leakage({"train": train, "dev": dev, "test": test}) == 3  # a, c, f
    assert "3 distinct texts appear in more than one split" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="components.data.splitting"):
        assert check_leakage({"train": train, "test": test}) == 0
    assert caplog.text == ""
