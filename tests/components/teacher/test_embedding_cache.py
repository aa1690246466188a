import logging
import os
import time

import numpy as np
import pytest

from components.teacher.embedding_cache import EmbeddingCache, text_key

TEXTS = ["how do i reset my password", "card lost", "where is my parcel", "ünïcödé ✓", ""]


def vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def shards(cache: EmbeddingCache) -> list:
    return sorted(cache.folder.glob("shard-*.safetensors"))


def test_put_then_get_counts_hits_and_misses(tmp_path):
    cache = EmbeddingCache(tmp_path, "fp")
    assert cache.get_many(TEXTS) == {}
    assert (cache.hits, cache.misses) == (0, 5)
    emb = vectors(3)
    cache.put_many(TEXTS[:3], emb)
    found = cache.get_many(["card lost", "nope", TEXTS[0]])
    assert sorted(found) == [0, 2]
    np.testing.assert_array_equal(found[0], emb[1])
    np.testing.assert_array_equal(found[2], emb[0])
    assert (cache.hits, cache.misses) == (2, 6)
    assert found[0].dtype == np.float32


def test_persists_across_instances_and_is_per_fingerprint(tmp_path):
    emb = vectors(5)
    EmbeddingCache(tmp_path, "fp").put_many(TEXTS, emb)
    again = EmbeddingCache(tmp_path, "fp")
    found = again.get_many(TEXTS)
    assert (again.hits, again.misses) == (5, 0)
    np.testing.assert_array_equal(np.stack([found[i] for i in range(5)]), emb)
    other = EmbeddingCache(tmp_path, "another-model")
    assert other.get_many(TEXTS) == {} and other.misses == 5


def test_known_and_repeated_texts_are_not_written_twice(tmp_path):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.put_many(["a", "b", "a"], vectors(3))
    assert len(cache) == 2 and len(shards(cache)) == 1
    cache.put_many(["a", "b"], vectors(2, seed=1))
    assert len(shards(cache)) == 1  # nothing new: no new shard
    np.testing.assert_array_equal(cache.get_many(["a"])[0], vectors(3)[0])  # the first value is kept


def test_files_are_safetensors_only(tmp_path):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.put_many(TEXTS, vectors(5))
    files = [p.name for p in cache.folder.iterdir()]
    assert len(files) == 1 and files[0].endswith(".safetensors")
    with open(cache.folder / files[0], "rb") as handle:  # no pickle opcode header
        assert not handle.read(2).startswith(b"\x80")


@pytest.mark.parametrize("damage", ["truncate", "flip_data_byte", "garbage"])
def test_corrupt_shard_is_discarded_with_a_warning_and_rebuilt(tmp_path, caplog, damage):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.put_many(TEXTS[:2], vectors(2))
    cache.put_many(TEXTS[2:], vectors(3, seed=1))
    bad, good = shards(cache)
    data = bytearray(bad.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_data_byte":
        data[-3] ^= 0x55  # inside the float32 payload: only the checksum sees it
    else:
        data = bytearray(b"not a safetensors file at all")
    bad.write_bytes(bytes(data))

    reader = EmbeddingCache(tmp_path, "fp")
    with caplog.at_level(logging.WARNING, logger="components.teacher.embedding_cache"):
        found = reader.get_many(TEXTS)
    assert "discarding corrupt shard" in caplog.text
    assert sorted(found) == [2, 3, 4]  # the good shard still serves
    assert not bad.exists()
    reader.put_many(TEXTS[:2], vectors(2))  # the pipeline re-encodes the misses: rebuilt
    assert EmbeddingCache(tmp_path, "fp").get_many(TEXTS).keys() == {0, 1, 2, 3, 4}


def test_failed_write_leaves_the_cache_as_it_was(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.put_many(["a"], vectors(1))
    import components.teacher.embedding_cache as module

    def exploding_save(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_file", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        cache.put_many(["b"], vectors(1))
    assert [p.name.startswith("shard-") for p in cache.folder.iterdir()] == [True]
    assert EmbeddingCache(tmp_path, "fp").get_many(["a", "b"]).keys() == {0}


def test_stale_temp_files_are_ignored_and_removed(tmp_path):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.put_many(["a"], vectors(1))
    stale = cache.folder / ".tmp-123-shard-x.safetensors"
    stale.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = cache.folder / ".tmp-456-shard-y.safetensors"  # maybe another process writing right now
    fresh.write_bytes(b"partial")
    assert EmbeddingCache(tmp_path, "fp").get_many(["a"]).keys() == {0}
    assert not stale.exists() and fresh.exists()


def test_compaction_merges_shards_and_keeps_every_row(tmp_path):
    cache = EmbeddingCache(tmp_path, "fp", max_shards=3)
    emb = vectors(6)
    for i in range(4):
        cache.put_many([f"text {i}"], emb[i : i + 1])
    assert len(shards(cache)) == 1
    cache.put_many(["text 4", "text 5"], emb[4:])
    found = EmbeddingCache(tmp_path, "fp").get_many([f"text {i}" for i in range(6)])
    np.testing.assert_array_equal(np.stack([found[i] for i in range(6)]), emb)


def test_bad_inputs(tmp_path):
    cache = EmbeddingCache(tmp_path, "fp")
    with pytest.raises(ValueError, match="must be"):
        cache.put_many(["a", "b"], vectors(3))
    with pytest.raises(ValueError, match="NaN"):
        cache.put_many(["a"], np.full((1, 8), np.nan, np.float32))
    cache.put_many(["a"], vectors(1))
    with pytest.raises(ValueError, match="dimension"):
        cache.put_many(["b"], vectors(1, d=4))
    with pytest.raises(TypeError):
        cache.get_many([1])
    with pytest.raises(ValueError, match="plain non-empty name"):
        EmbeddingCache(tmp_path, "../escape")


def test_text_key_is_the_sha256_of_utf8():
    import hashlib

    assert text_key("é") == hashlib.sha256("é".encode()).digest()
    assert len(text_key("")) == 32
