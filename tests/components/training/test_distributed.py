"""Two CPU processes (gloo, DistributedDataParallel) take the same steps as one process on the same global batch."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from components.losses.composite_loss import FlipKDLoss, LossConfig
from components.student.lora_encoder import EncoderConfig, LoraEncoder
from components.training.distributed import DistributedContext, auto_backend
from components.training.trainer import TrainConfig, Trainer, TrainingPairs
from tests.tiny_models import random_texts, tiny_llama, tiny_tokenizer

# a global batch of 8 pairs (4 per rank), then an uneven one of 7 (4 + 3), then 1 pair (rank 1 has none)
STEPS = [list(range(8)), list(range(8, 15)), [15]]
WORLD = 2


def _pairs(n: int = 16) -> TrainingPairs:
    a = random_texts(n, seed=3)
    b = [t if i % 2 == 0 else random_texts(1, seed=200 + i)[0] for i, t in enumerate(a)]
    labels = np.array([1.0 if i % 2 == 0 else 0.0 for i in range(n)])
    rng = np.random.default_rng(0)
    ta = rng.normal(size=(n, 8)).astype(np.float32)
    ta /= np.linalg.norm(ta, axis=1, keepdims=True)
    tb = np.where(labels[:, None] > 0, ta, -ta) + 0.3 * rng.normal(size=(n, 8)).astype(np.float32)
    tb /= np.linalg.norm(tb, axis=1, keepdims=True)
    return TrainingPairs(a, b, labels, ta, tb, lambda c: (c + 1) / 2, np.arange(n) % 5 != 4)


def _trainer(distributed: DistributedContext | None, depth: dict) -> Trainer:
    torch.manual_seed(0)
    encoder = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, alpha=8, dropout=0.0, **depth))
    with torch.no_grad():  # non-zero B: every LoRA weight up to the representation gets a gradient
        for name, p in encoder.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    config = TrainConfig(learning_rate=1e-2, batch_size=8, max_steps=len(STEPS), warmup_ratio=0.0, precision="fp32",
                         clip_value=1e9)
    return Trainer(encoder, FlipKDLoss(LossConfig()), _pairs(), config, show_progress=False, distributed=distributed)


def _run(trainer: Trainer) -> list[dict]:
    out = []
    for index in STEPS:
        metrics = trainer.train_step(index)
        params = trainer.trained_parameters().items()
        grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in params}
        out.append({"loss": metrics["loss/total"], "grads": grads})
    return out


def _worker(rank: int, port: int, results, depth: dict) -> None:
    torch.set_num_threads(1)
    ctx = DistributedContext.init(rank, WORLD, backend="gloo", init_method=f"tcp://127.0.0.1:{port}")
    try:
        results[rank] = _run(_trainer(ctx, depth))
    finally:
        ctx.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_slices_cover_the_batch_in_order():
    index = list(range(10, 17))
    slices = [DistributedContext(rank=r, world_size=3).local_slice(index) for r in range(3)]
    assert slices == [[10, 11, 12], [13, 14], [15, 16]]
    assert DistributedContext(rank=1, world_size=2).local_slice([5]) == []
    assert DistributedContext(rank=1, world_size=2).shard(list("abcde")) == ["b", "d"]


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = DistributedContext.from_env()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled) == (0, 1, True, False)
    t = torch.ones(2, requires_grad=True)
    assert ctx.all_gather_with_grad(t)[0] is t and ctx.broadcast_object(7) == 7
    assert auto_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


@pytest.mark.parametrize("mode", ["generative", "both"])
def test_decoder_path_sup_is_refused_in_multi_process_training(mode):
    fake = DistributedContext(rank=0, world_size=2, backend="gloo")
    encoder = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, layer=1))
    with pytest.raises(ValueError, match=mode):
        Trainer(encoder, FlipKDLoss(LossConfig(sup_mode=mode)), _pairs(), TrainConfig(max_steps=1),
                distributed=fake)


# LoRA in every block; or in the top two of three, the block below read from the prefix cache
DEPTHS = [("every_block", {"layer": 1}), ("prefix_cached", {"layer": 2, "lora_layers": 2})]


@pytest.mark.parametrize("depth", [d for _, d in DEPTHS], ids=[name for name, _ in DEPTHS])
def test_two_processes_match_one_process_loss_and_gradients(depth):
    reference = _run(_trainer(None, depth))
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), results, depth), nprocs=WORLD, join=True)
        ranks = [results[r] for r in range(WORLD)]
    for step, expected in enumerate(reference):
        for rank, got in enumerate(ranks):
            got = got[step]
            # fp32 sums in another order: a loss of 3.178 was 1.05e-5 off (3.3e-6 of it) on an AVX-512 CPU
            # without AMX; a real mismatch (a pair lost or counted twice) moves it by percents
            assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-5), (step, rank)
            assert list(got["grads"]) == list(expected["grads"])
            for name, g in expected["grads"].items():
                if g is None:  # past the representation layer: no gradient, in both
                    assert got["grads"][name] is None or not got["grads"][name].any(), (step, rank, name)
                    continue
                # fp32 sums in another order differ by a fraction of the tensor's scale, not of each element (an
                # AMD CPU without AMX: entries of about 8 moved by 3e-4 in a tensor whose largest is about 44, i.e.
                # ~7e-6 of its scale): the tolerance follows the tensor's scale
                scale = float(g.abs().max())
                assert torch.allclose(got["grads"][name], g, atol=1e-5 + 2e-5 * scale, rtol=1e-4), (step, rank, name)
    used = [n for n, g in reference[0]["grads"].items() if g is not None and g.abs().sum() > 0]
    assert any("lora_A" in n for n in used) and any("lora_B" in n for n in used)
