"""The embedded demo dataset: size, balance, determinism, splits by phrasing (the same intents, new wordings),
hard negatives."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from components.data.contract import CANONICAL_COLUMNS, read_pairs
from components.data.demo import FAMILIES, SOURCE, _overlap, demo_pairs, write_demo
from components.data.splitting import check_leakage


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return demo_pairs()


def _text_intents(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df[["text_a", "intent_a"]].set_axis(["text", "intent"], axis=1),
                      df[["text_b", "intent_b"]].set_axis(["text", "intent"], axis=1)])


def test_size_balance_and_columns(demo):
    assert 550 <= len(demo) <= 700
    assert 0.45 <= demo["match"].mean() <= 0.55
    assert list(demo.columns[:5]) == list(CANONICAL_COLUMNS)
    assert {"split", "group", "intent_a", "intent_b", "kind"} <= set(demo.columns)
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


def test_deterministic_per_seed(demo):
    pd.testing.assert_frame_equal(demo_pairs(0), demo)
    assert demo_pairs(1)["pair_id"].tolist() != demo["pair_id"].tolist()


def test_write_demo_splits_by_phrasing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="components.data"):
        paths = write_demo(tmp_path / "demo")
        splits = {split: read_pairs(path) for split, path in paths.items()}
    assert list(paths) == ["train", "dev", "test"]
    assert all(path.suffix == ".jsonl" and path.parent == tmp_path / "demo" for path in paths.values())
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["dev.jsonl", "test.jsonl", "train.jsonl"]
    assert caplog.text == ""  # nothing truncated, no duplicates
    assert sum(len(s) for s in splits.values()) == len(demo_pairs())
    assert check_leakage(splits) == 0  # no text on two sides of a split
    intents = {intent for family in FAMILIES.values() for intent in family}
    for split, frame in splits.items():  # the FAQ's intents are fixed: every one is asked in every split
        assert set(frame["intent_a"]) | set(frame["intent_b"]) == intents, split
    texts = {split: set(f["text_a"]) | set(f["text_b"]) for split, f in splits.items()}
    assert not texts["train"] & (texts["dev"] | texts["test"])
    fractions = {split: len(frame) / sum(len(s) for s in splits.values()) for split, frame in splits.items()}
    assert 0.5 <= fractions["train"] <= 0.65 and 0.15 <= fractions["dev"] <= 0.25 and 0.15 <= fractions["test"] <= 0.25
    assert all(0.4 <= frame["match"].mean() <= 0.6 for frame in splits.values())
    assert all(set(frame["kind"]) == {"positive", "hard_negative", "random_negative"} for frame in splits.values())


def test_each_intent_is_phrased_with_other_templates_in_each_split(demo):
    """Dev and test ask the known questions in wordings never seen in training: whole templates per split."""
    from components.data.demo import _expand

    for intents in FAMILIES.values():
        for intent, templates in intents.items():
            template_of = {text: index for text, index in _expand(templates)}
            used = {}
            for split, frame in demo.groupby("split"):
                texts = set(frame.loc[frame["intent_a"] == intent, "text_a"]) | set(
                    frame.loc[frame["intent_b"] == intent, "text_b"])
                used[split] = {template_of[t] for t in texts}
            assert not used["train"] & used["dev"] and not used["train"] & used["test"], intent
            assert not used["dev"] & used["test"], intent


def test_write_demo_is_deterministic(tmp_path):
    first, second = write_demo(tmp_path / "a", seed=3), write_demo(tmp_path / "b", seed=3)
    assert all(first[s].read_bytes() == second[s].read_bytes() for s in first)
