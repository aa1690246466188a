import logging

import numpy as np
import pytest
import torch

import components.teacher.scorer as teacher_module
from components.teacher.embedding_cache import EmbeddingCache
from components.teacher.scorer import TeacherScorer

TEXTS = [
    "how do i reset my password?",
    "the cat sat on the mat",
    "card lost",
    "i forgot my password, how can i change it?",
    "what is the weather today",
    "where is my parcel? the order is late and the tracking failed",
    "card lost",  # a repeat
    "yes",
]


@pytest.fixture
def scorer(tiny_bert_dir):
    return TeacherScorer(tiny_bert_dir, batch_size=3, show_progress=False)


def count_forwards(monkeypatch):
    calls = []
    original = teacher_module.embed_fixed_batch

    def counting(model, tokenizer, texts, length, rows, device="cpu"):
        calls.append(list(texts))
        return original(model, tokenizer, texts, length, rows, device)

    monkeypatch.setattr(teacher_module, "embed_fixed_batch", counting)
    return calls


def test_encode_shape_norm_and_dtype(scorer):
    emb = scorer.encode(TEXTS)
    assert emb.shape == (len(TEXTS), 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[2], emb[6])
    assert scorer.encode([]).shape == (0, 32)
    with pytest.raises(TypeError):
        scorer.encode("one string")


def test_encode_is_mean_pooling_over_the_mask(scorer):
    texts = ["card lost", "where is my parcel? the order is late"]
    encoded = scorer.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = scorer.model(**encoded).last_hidden_state
    expected = []
    for row, mask in zip(hidden, encoded["attention_mask"], strict=True):
        mean = row[mask.bool()].mean(dim=0)
        expected.append((mean / mean.norm()).numpy())
    np.testing.assert_allclose(scorer.encode(texts), np.stack(expected), atol=1e-5)


def test_order_is_restored_and_batch_size_does_not_matter(tiny_bert_dir, scorer):
    together = scorer.encode(TEXTS)
    one_by_one = np.concatenate([scorer.encode([text]) for text in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    big = TeacherScorer(tiny_bert_dir, batch_size=64, show_progress=False).encode(TEXTS)
    np.testing.assert_allclose(together, big, atol=1e-5)
    reversed_order = scorer.encode(TEXTS[::-1])
    np.testing.assert_allclose(reversed_order[::-1], together, atol=1e-5)


def test_batches_hold_texts_of_one_padded_length_and_texts_are_deduplicated(scorer, monkeypatch):
    calls = count_forwards(monkeypatch)
    scorer.encode(TEXTS)
    flat = [text for batch in calls for text in batch]
    assert sorted(flat) == sorted(set(TEXTS))  # each distinct text encoded once
    padded = [{-(-len(scorer.tokenizer(t)["input_ids"]) // teacher_module.PAD_MULTIPLE) for t in batch}
              for batch in calls]
    assert all(len(lengths) == 1 for lengths in padded)
    assert all(len(batch) <= 3 for batch in calls)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_a_texts_vector_does_not_depend_on_its_batch_mates(tiny_bert_dir, batch_size):
    """What the cache held before decides which texts are encoded together: the bits must not change with it."""
    scorer = TeacherScorer(tiny_bert_dir, batch_size=batch_size, show_progress=False)
    texts = list(dict.fromkeys(TEXTS)) + [f"{t} {w}" for t in TEXTS[:4] for w in ("card", "pin lost", "yes no a")]
    together = scorer.encode(texts)
    rng = np.random.default_rng(0)
    for subset in (texts[::-1], texts[1::2], [texts[3]], list(rng.permutation(texts))):
        alone = scorer.encode(subset)
        expected = together[[texts.index(t) for t in subset]]
        assert np.array_equal(alone, expected), np.abs(alone - expected).max()


def test_fixed_shape_batches():
    batches = teacher_module.fixed_shape_batches([3, 9, 8, 17, 2, 16, 1], rows=2, max_length=12, multiple=8)
    assert batches == [(8, [0, 2]), (8, [4, 6]), (12, [1, 3]), (12, [5])]


def test_pair_cosine_and_cosine_matrix(scorer):
    a, b = TEXTS[:4], TEXTS[4:]
    matrix = scorer.cosine_matrix(a, b)
    assert matrix.shape == (4, 4)
    np.testing.assert_allclose(np.diag(matrix), scorer.pair_cosine(a, b), atol=1e-6)
    emb_a, emb_b = scorer.encode(a), scorer.encode(b)
    np.testing.assert_allclose(matrix, emb_a @ emb_b.T, atol=1e-6)
    assert scorer.cosine_matrix(a, b[:2]).shape == (4, 2)
    with pytest.raises(ValueError, match="same length"):
        scorer.pair_cosine(a, b[:2])


def test_second_scorer_encodes_nothing_thanks_to_the_cache(tiny_bert_dir, tmp_path, monkeypatch):
    first = TeacherScorer(tiny_bert_dir, cache=tmp_path, show_progress=False)
    assert (first.cache_hits, first.cache_misses) == (0, 0)
    emb = first.encode(TEXTS)
    distinct = len(set(TEXTS))
    assert (first.cache_hits, first.cache_misses) == (0, distinct)

    calls = count_forwards(monkeypatch)
    second = TeacherScorer(tiny_bert_dir, cache=str(tmp_path), show_progress=False)
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.encode(TEXTS), emb)
    assert calls == []
    assert (second.cache_hits, second.cache_misses) == (distinct, 0)
    second.encode(TEXTS[:2] + ["a new text"])
    assert calls == [["a new text"]]
    assert (second.cache_hits, second.cache_misses) == (distinct + 2, 1)


def test_corrupt_cache_shard_is_rebuilt(tiny_bert_dir, tmp_path, caplog, monkeypatch):
    first = TeacherScorer(tiny_bert_dir, cache=tmp_path, show_progress=False)
    emb = first.encode(TEXTS)
    (shard,) = first.cache.folder.glob("shard-*.safetensors")
    shard.write_bytes(shard.read_bytes()[:-7])

    calls = count_forwards(monkeypatch)
    second = TeacherScorer(tiny_bert_dir, cache=tmp_path, show_progress=False)
    with caplog.at_level(logging.WARNING, logger="components.teacher.embedding_cache"):
        np.testing.assert_allclose(second.encode(TEXTS), emb, atol=1e-6)
    assert "discarding corrupt shard" in caplog.text
    assert second.cache_misses == len(set(TEXTS)) and calls

    third = TeacherScorer(tiny_bert_dir, cache=tmp_path, show_progress=False)
    third.encode(TEXTS)
    assert (third.cache_hits, third.cache_misses) == (len(set(TEXTS)), 0)


def test_fingerprint_depends_on_max_length_and_cache_must_match(tiny_bert_dir, tmp_path):
    short = TeacherScorer(tiny_bert_dir, max_length=8, show_progress=False)
    long = TeacherScorer(tiny_bert_dir, max_length=128, show_progress=False)
    assert short.fingerprint != long.fingerprint
    assert (short.cache_hits, short.cache_misses) == (0, 0)
    cache = EmbeddingCache(tmp_path, long.fingerprint)
    assert TeacherScorer(tiny_bert_dir, cache=cache, show_progress=False).cache is cache
    with pytest.raises(ValueError, match="pass the cache folder"):
        TeacherScorer(tiny_bert_dir, max_length=8, cache=cache, show_progress=False)


def test_truncation_to_max_length(tiny_bert_dir):
    scorer = TeacherScorer(tiny_bert_dir, max_length=4, show_progress=False)
    # [CLS] card lost [SEP] fills 4 tokens: anything after "card lost" is cut off
    np.testing.assert_allclose(scorer.encode(["card lost yes no"]), scorer.encode(["card lost"]), atol=1e-6)
