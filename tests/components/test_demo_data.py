"""The embedded demo dataset: size, balance, determinism, splits that keep intents apart, hard negatives."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from components.data import CANONICAL_COLUMNS, check_leakage, read_pairs
from components.demo_data import FAMILIES, SOURCE, _overlap, demo_pairs, write_demo


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return demo_pairs()


def _text_intents(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df[["text_a", "intent_a"]].set_axis(["text", "intent"], axis=1),
                      df[["text_b", "intent_b"]].set_axis(["text", "intent"], axis=1)])


def test_size_balance_and_columns(demo):
    assert 400 <= len(demo) <= 600
    assert 0.45 <= demo["match"].mean() <= 0.55
    assert list(demo.columns[:5]) == list(CANONICAL_COLUMNS)
    assert {"group", "intent_a", "intent_b", "kind"} <= set(demo.columns)
    assert demo.attrs == {"source": SOURCE, "graded": False}
    assert set(demo["label"]) == {0.0, 1.0}
    assert (demo["match"] == demo["label"]).all()


def test_intents_and_families(demo):
    intents = {intent for family in FAMILIES.values() for intent in family}
    assert 30 <= len(intents) <= 40
    assert set(demo["intent_a"]) | set(demo["intent_b"]) == intents
    assert _text_intents(demo).groupby("text")["intent"].nunique().max() == 1  # a text belongs to one intent
    family_of = {intent: family for family, members in FAMILIES.items() for intent in members}
    assert (demo["intent_a"].map(family_of) == demo["group"]).all()
    assert (demo["intent_b"].map(family_of) == demo["group"]).all()  # no pair crosses a family


def test_labels_follow_intents(demo):
    positives = demo[demo["kind"] == "positive"]
    assert (positives["intent_a"] == positives["intent_b"]).all() and (positives["label"] == 1).all()
    assert (positives["text_a"] != positives["text_b"]).all()
    negatives = demo[demo["kind"] != "positive"]
    assert (negatives["intent_a"] != negatives["intent_b"]).all() and (negatives["label"] == 0).all()


def test_no_duplicate_or_mirrored_pairs(demo):
    keys = {frozenset(pair) for pair in zip(demo["text_a"], demo["text_b"], strict=True)}
    assert len(keys) == len(demo)
    assert demo["pair_id"].is_unique


def test_hard_negatives_are_lexically_close(demo):
    counts = demo["kind"].value_counts()
    assert counts["hard_negative"] >= 0.4 * (counts["hard_negative"] + counts["random_negative"])
    overlap = {kind: demo[demo["kind"] == kind].apply(lambda r: _overlap(r["text_a"], r["text_b"]), axis=1).mean()
               for kind in ("hard_negative", "random_negative")}
    assert overlap["hard_negative"] > 2 * overlap["random_negative"]
    hard = demo[demo["kind"] == "hard_negative"]
    same_frame = hard["text_a"].str.match(r"How do I cancel my \w+\?") & hard["text_b"].str.match(r"How do I cancel my")
    assert same_frame.any()  # e.g. "How do I cancel my order?" vs "How do I cancel my return?"


def test_deterministic_per_seed(demo):
    pd.testing.assert_frame_equal(demo_pairs(0), demo)
    assert demo_pairs(1)["pair_id"].tolist() != demo["pair_id"].tolist()


def test_write_demo_splits_by_family(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="components.data"):
        paths = write_demo(tmp_path / "demo")
        splits = {split: read_pairs(path) for split, path in paths.items()}
    assert list(paths) == ["train", "dev", "test"]
    assert all(path.suffix == ".jsonl" and path.parent == tmp_path / "demo" for path in paths.values())
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["dev.jsonl", "test.jsonl", "train.jsonl"]
    assert caplog.text == ""  # nothing truncated, no duplicates
    assert sum(len(s) for s in splits.values()) == len(demo_pairs())
    assert check_leakage(splits) == 0
    where: dict[str, set[str]] = {}
    for split, frame in splits.items():
        for intent in set(frame["intent_a"]) | set(frame["intent_b"]):
            where.setdefault(intent, set()).add(split)
    assert all(len(splits_of_intent) == 1 for splits_of_intent in where.values())  # every intent in one split
    fractions = {split: len(frame) / sum(len(s) for s in splits.values()) for split, frame in splits.items()}
    assert 0.6 <= fractions["train"] <= 0.8 and 0.1 <= fractions["dev"] <= 0.2 and 0.1 <= fractions["test"] <= 0.2
    assert all(0.4 <= frame["match"].mean() <= 0.6 for frame in splits.values())


def test_write_demo_is_deterministic(tmp_path):
    first, second = write_demo(tmp_path / "a", seed=3), write_demo(tmp_path / "b", seed=3)
    assert all(first[s].read_bytes() == second[s].read_bytes() for s in first)
