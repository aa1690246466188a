"""The frozen prefix: cached states give the uncached forward's loss, gradients and z; the store is safe on disk."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from components.losses.composite_loss import FlipKDLoss, LossConfig
from components.student.lora_encoder import EncoderConfig, LoraEncoder
from components.student.prefix_cache import FrozenPrefix, PrefixCacheFull, PrefixStore, token_key
from components.training.trainer import TrainConfig, Trainer, TrainingPairs
from tests.tiny_models import random_texts, tiny_llama, tiny_tokenizer

PROMPT = {"instruction": "what ", "suffix": " yes", "append_eos": False}


def make_encoder(lora_layers: int = 2, layers: int = 5, side: str = "right", **kwargs) -> LoraEncoder:
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = side
    torch.manual_seed(0)
    config = EncoderConfig(rank=4, alpha=8, lora_layers=lora_layers, **{"dropout": 0.1, **PROMPT, **kwargs})
    encoder = LoraEncoder(tiny_llama(layers=layers), tokenizer, config)
    with torch.no_grad():  # B starts at zero: random values so every LoRA weight gets a gradient
        for p in encoder.trainable_parameters():
            p.normal_(0, 0.2)
    return encoder


def pairs(n: int = 12) -> TrainingPairs:
    a, b = random_texts(n, seed=3), random_texts(n, seed=4)
    labels = (np.arange(n) % 2).astype(np.float64)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2, n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    return TrainingPairs(a, b, labels, emb[0], emb[1], lambda c: (c + 1) / 2, np.arange(n) % 5 != 4)


def loss_and_grads(encoder: LoraEncoder, batch: dict, capacity: int, use_prefix: bool):
    encoder.train()
    torch.manual_seed(5)  # the same dropout masks for both paths
    z = encoder(**batch, pack_capacity=capacity, use_prefix=use_prefix)
    p = pairs()
    n = len(z) // 2
    loss = FlipKDLoss(LossConfig())(z[:n], z[n:], p.teacher_matrix(list(range(n))),
                                    torch.as_tensor(p.labels[:n], dtype=torch.float32),
                                    torch.as_tensor(p.keep[:n]))["total"]
    params = list(encoder.trainable_parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(loss), dict(zip([id(q) for q in params], grads, strict=True))


# (name, encoder options, pack capacity)
EXACT_CASES = [
    ("right_padded", {"side": "right"}, 0),
    ("left_padded", {"side": "left"}, 0),
    ("right_packed", {"side": "right"}, 24),
    ("left_packed", {"side": "left"}, 24),
    ("no_dropout", {"dropout": 0.0}, 24),
    ("k1_mean_pooling", {"lora_layers": 1, "pooling": "mean"}, 0),
    ("middle_layer", {"layer": 2, "lora_layers": 2}, 24),
    ("bottleneck_dropout", {"dropout_site": "bottleneck"}, 24),
    ("hidden_readout", {"readout": "hidden", "lora_layers": 3}, 24),
    ("wide_readout", {"readout_rank": 8}, 0),
]


@pytest.mark.parametrize("name,options,capacity", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_cached_states_give_the_uncached_loss_gradients_and_z(name, options, capacity):
    encoder = make_encoder(**options)
    texts = pairs().text_a[:6] + pairs().text_b[:6]
    batch = encoder.tokenize(texts)
    plain_loss, plain_grads = loss_and_grads(encoder, batch, capacity, use_prefix=False)
    cached_loss, cached_grads = loss_and_grads(encoder, batch, capacity, use_prefix=True)
    assert encoder.prefix.store.misses > 0  # the cached path really read the store
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    assert any(g is not None and g.abs().sum() > 0 for g in plain_grads.values())
    for key, grad in plain_grads.items():
        if grad is None:  # modules past the representation: no gradient on either path
            assert cached_grads[key] is None
            continue
        scale = max(float(grad.abs().max()), 1.0)
        torch.testing.assert_close(cached_grads[key], grad, atol=1e-5 * scale, rtol=0)
    encoder.eval()
    with torch.inference_mode():
        plain = encoder(**batch, use_prefix=False)
    torch.testing.assert_close(encoder.encode(texts), plain, atol=1e-5, rtol=0)


JOINT = {"pair_prompt": "{text_a} what {text_b} yes or no", "label_words": ("no", "yes")}
# (name, encoder options): the decoder path reads a pair prompt through every block above the prefix
JOINT_CASES = [
    ("left_padded", {"side": "left"}),
    ("no_dropout", {"dropout": 0.0}),
    ("middle_layer", {"layer": 2, "lora_layers": 2}),  # frozen blocks above the readout run from the cache too
]


@pytest.mark.parametrize("name,options", JOINT_CASES, ids=[c[0] for c in JOINT_CASES])
def test_the_joint_reading_from_cached_states_gives_the_full_forwards_logprobs_gradients_and_scores(name, options):
    encoder = make_encoder(**{**JOINT, **options})
    p = pairs()
    a, b = p.text_a[:6], p.text_b[:6]
    batch = encoder.tokenize_pairs(a, b)
    results = []
    for use_prefix in (False, True):
        encoder.train()
        torch.manual_seed(5)  # the same dropout masks for both paths
        logp = encoder.label_logprobs(**batch, use_prefix=use_prefix)
        loss = -(logp[:, 1] * torch.tensor(p.labels[:6]) + logp[:, 0] * torch.tensor(1 - p.labels[:6])).mean()
        params = list(encoder.trainable_parameters())
        results.append((logp.detach(), torch.autograd.grad(loss, params, allow_unused=True)))
    assert encoder.prefix.store.misses > 0  # the cached path really read the store
    (plain, plain_grads), (cached, cached_grads) = results
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=0)
    assert any(g is not None and g.abs().sum() > 0 for g in plain_grads)
    for grad, other in zip(plain_grads, cached_grads, strict=True):
        assert (grad is None) == (other is None)
        if grad is not None:
            torch.testing.assert_close(other, grad, atol=1e-5 * max(float(grad.abs().max()), 1.0), rtol=0)
    encoder.eval()
    with torch.inference_mode():  # one pair at a time, full depth: no padding, no cache
        alone = torch.cat([torch.softmax(encoder.label_logprobs(**encoder.tokenize_pairs([x], [y]), use_prefix=False),
                                         -1)[:, 1] for x, y in zip(a, b, strict=True)])
    torch.testing.assert_close(encoder.joint_scores(a, b, batch_size=4), alone, atol=1e-5, rtol=0)


def test_lora_sits_only_in_the_top_blocks_and_the_prefix_skips_the_rest():
    encoder = make_encoder(lora_layers=2, layers=5)
    blocks = {n.split("layers.")[1].split(".")[0] for n, _ in encoder.model.named_parameters() if "lora_" in n}
    assert blocks == {"3", "4"} and encoder.prefix_start == 3
    everywhere = make_encoder(lora_layers=0, layers=5)
    assert everywhere.prefix is None
    assert {n.split("layers.")[1].split(".")[0] for n, _ in everywhere.model.named_parameters() if "lora_" in n} \
        == {"0", "1", "2", "3", "4"}
    assert make_encoder(lora_layers=9, layers=5).prefix is None  # K beyond the model: every block
    with pytest.raises(ValueError, match="blocks below 3 hold LoRA"):
        FrozenPrefix(everywhere.model, 3, PrefixStore(None, "memory"))
    with pytest.raises(ValueError, match="lora_layers must be >= 0"):
        EncoderConfig(lora_layers=-1)


def test_each_text_is_computed_once_across_batches_epochs_and_evaluation():
    encoder = make_encoder()
    texts = random_texts(10, seed=8)
    encoder.fill_prefix(texts + texts[:4])
    assert encoder.prefix.computed_texts == 10
    encoder.encode(texts, batch_size=3)
    encoder.train()
    encoder(**encoder.tokenize(texts[:5]), pack_capacity=16)
    assert encoder.prefix.computed_texts == 10


def test_training_from_the_cache_logs_the_uncached_losses():
    """Three trainer steps (AdamW, dropout, packing): cached and uncached runs take the same steps."""
    losses = []
    for cached in (True, False):
        encoder = make_encoder()
        if not cached:
            encoder.prefix = None  # the plain forward through every block (LoRA still only in the top two)
        trainer = Trainer(encoder, FlipKDLoss(LossConfig()), pairs(),
                          TrainConfig(batch_size=4, max_steps=3, precision="fp32", pack_capacity=24, seed=1),
                          show_progress=False)
        history = []
        trainer.on_step = lambda step, metrics, h=history: h.append(metrics["loss/total"])
        trainer.train()
        losses.append(history)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-5)  # fp32 order: ~1e-5 on a loss of 18


def states(n: int, length: int = 3, dim: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(length + i % 2, dim, generator=g) for i in range(n)]


def test_store_round_trip_on_disk_and_lazy_reads(tmp_path):
    keys = [token_key([i, i + 1]) for i in range(5)]
    values = states(5)
    store = PrefixStore(tmp_path, "fp")
    store.put_many(keys, values)
    assert store.flush() is not None and store.flush() is None  # nothing new the second time
    again = PrefixStore(tmp_path, "fp")
    found = again.get_many([keys[3], token_key([99]), keys[0]])
    assert found[1] is None and again.hits == 2 and again.misses == 1
    torch.testing.assert_close(found[0], values[3], atol=0, rtol=0)
    torch.testing.assert_close(found[2], values[0], atol=0, rtol=0)
    assert again.memory_bytes == (values[3].numel() + values[0].numel()) * 4  # only what was read
    assert PrefixStore(None, "memory").flush() is None


@pytest.mark.parametrize("damage", ["flip_state_byte", "truncate"])
def test_a_damaged_shard_is_dropped_and_its_texts_become_misses(tmp_path, damage, caplog):
    keys = [token_key([i]) for i in range(4)]
    store = PrefixStore(tmp_path, "fp")
    store.put_many(keys, states(4))
    shard = store.flush()
    data = bytearray(shard.read_bytes())
    if damage == "flip_state_byte":  # a byte inside the last entry's floats: the file still parses
        header = 8 + int.from_bytes(data[:8], "little")
        end = json.loads(data[8:header])["states"]["data_offsets"][1]
        data[header + end - 3] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    shard.write_bytes(bytes(data))
    reader = PrefixStore(tmp_path, "fp")
    found = reader.get_many(keys[-1:])
    assert found == [None] and reader.misses == 1
    assert not shard.exists() and "damaged shard" in caplog.text


def test_reaching_the_size_bound_warns_once_and_keeps_states_in_memory(tmp_path):
    store = PrefixStore(tmp_path, "fp", max_bytes=200)
    keys = [token_key([i]) for i in range(3)]
    store.put_many(keys, states(3, length=8))
    with pytest.warns(PrefixCacheFull, match="bound is 0.00 GB.*--prefix-cache-gb"):
        assert store.flush() is None
    assert not list(tmp_path.rglob("*.safetensors"))
    assert all(v is not None for v in store.get_many(keys))  # still answered from memory
    store.put_many([token_key([7])], states(1, length=8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.flush()  # the warning is said once


def test_stores_of_other_fingerprints_share_the_bound(tmp_path):
    first = PrefixStore(tmp_path, "a")
    first.put_many([token_key([1])], states(1, length=50))
    first.flush()
    used = first.disk_bytes()
    second = PrefixStore(tmp_path, "b", max_bytes=used + 10)
    second.put_many([token_key([2])], states(1, length=50))
    with pytest.warns(PrefixCacheFull):
        second.flush()


def test_a_saved_top_block_adapter_loads_with_its_prefix(tmp_path):
    encoder = make_encoder(lora_layers=2, layers=5).eval()
    texts = random_texts(6, seed=11)
    expected = encoder.encode(texts)
    encoder.save(tmp_path / "adapter")
    loaded = LoraEncoder.load(tmp_path / "adapter", tiny_llama(layers=5), tiny_tokenizer())
    assert loaded.prefix is not None and loaded.prefix_start == 3
    torch.testing.assert_close(loaded.encode(texts), expected, atol=1e-6, rtol=0)
