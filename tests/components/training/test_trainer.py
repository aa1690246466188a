import random

import numpy as np
import pytest
import torch

from components.losses.composite_loss import FlipKDLoss, LossConfig
from components.student.lora_encoder import EncoderConfig, LoraEncoder
from components.training.trainer import TrainConfig, Trainer, TrainingPairs, bucketed_batches, warmup_linear
from tests.tiny_models import random_texts, tiny_llama, tiny_tokenizer


def tiny_pairs(n=16, seed=0):
    a = random_texts(n, seed=seed)
    b = [t if i % 2 == 0 else random_texts(1, seed=seed + 100 + i)[0] for i, t in enumerate(a)]
    labels = np.array([1.0 if i % 2 == 0 else 0.0 for i in range(n)])
    rng = np.random.default_rng(seed)
    ta = rng.normal(size=(n, 8)).astype(np.float32)
    ta /= np.linalg.norm(ta, axis=1, keepdims=True)
    tb = np.where(labels[:, None] > 0, ta, -ta)
    return TrainingPairs(a, b, labels, ta, tb, lambda c: (c + 1) / 2, np.ones(n, dtype=bool))


def test_bucketed_batches_cover_everything_once_and_group_lengths():
    lengths = [random.Random(i).randint(1, 100) for i in range(103)]
    batches = bucketed_batches(lengths, 8, random.Random(0), bucket_batches=50)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(103))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 15  # random batches of 8 from U(1, 100) spread by about 70


def test_warmup_then_linear_decay():
    f = warmup_linear(100, 0.05)
    assert [round(f(s), 3) for s in (0, 4, 5, 99)] == [0.2, 1.0, 1.0, round(1 / 95, 3)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_steps_lower_the_loss(tiny_lm, precision):
    model, tok = tiny_lm
    enc = LoraEncoder(model, tok, EncoderConfig(rank=8, alpha=16, dropout=0.0, layer=1))
    loss = FlipKDLoss(LossConfig())
    pairs = tiny_pairs()
    trainer = Trainer(enc, loss, pairs, TrainConfig(learning_rate=5e-3, batch_size=16, max_steps=12, warmup_ratio=0,
                                                     precision=precision), show_progress=False)
    seen = []
    trainer.on_step = lambda step, m: seen.append(m["loss/total"])
    trainer.train()
    assert len(seen) == 12 and seen[-1] < seen[0]
    assert trainer.step == 12


def test_same_seed_same_result():
    def run():
        torch.manual_seed(0)
        enc = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, dropout=0.0))
        t = Trainer(enc, FlipKDLoss(), tiny_pairs(), TrainConfig(learning_rate=1e-3, batch_size=4, max_steps=3,
                                                                 precision="fp32"), show_progress=False)
        return t.train()["loss/total"]
    assert run() == run()


def test_no_pairs_is_a_clear_error(tiny_lm):
    model, tok = tiny_lm
    empty = TrainingPairs([], [], np.zeros(0), np.zeros((0, 4)), np.zeros((0, 4)), lambda c: c, np.zeros(0, bool))
    with pytest.raises(ValueError, match="no training pairs"):
        Trainer(LoraEncoder(model, tok, EncoderConfig(rank=4)), FlipKDLoss(), empty, TrainConfig())


@pytest.mark.parametrize("kwargs,match", [({"learning_rate": -1}, "learning_rate"), ({"batch_size": 0}, "batch_size"),
                                          ({"precision": "fp16"}, "precision"), ({"warmup_ratio": 1.0}, "warmup")])
def test_bad_train_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_naive_loop_computes_the_same_steps():
    """Full-length padding and full-depth forward change the cost, not the result."""
    def run(naive):
        torch.manual_seed(0)
        enc = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, dropout=0.0, layer=1, max_length=16))
        seen = []
        t = Trainer(enc, FlipKDLoss(), tiny_pairs(), TrainConfig(learning_rate=1e-3, batch_size=4, max_steps=4,
                                                                 precision="bf16", naive=naive),
                    on_step=lambda s, m: seen.append((m["loss/total"], m["padded_tokens"])), show_progress=False)
        t.train()
        return seen, t.precision
    fast, fast_precision = run(False)
    naive, naive_precision = run(True)
    assert naive_precision == "fp32" and fast_precision == "bf16"
    assert all(n_pad > f_pad for (_, f_pad), (_, n_pad) in zip(fast, naive, strict=True))


@pytest.mark.parametrize(("dropout", "site"), [(0.0, "input"), (0.2, "input"), (0.2, "bottleneck")])
def test_naive_and_default_fp32_losses_agree(dropout, site):
    """With dropout too: masks are drawn per real token, so padding and packing do not change them."""
    def run(naive):
        torch.manual_seed(0)
        enc = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, dropout=dropout, dropout_site=site,
                                                                        layer=1, max_length=16))
        seen = []
        Trainer(enc, FlipKDLoss(), tiny_pairs(), TrainConfig(learning_rate=1e-3, batch_size=4, max_steps=4,
                                                             precision="fp32", naive=naive),
                on_step=lambda s, m: seen.append(m["loss/total"]), show_progress=False).train()
        return seen
    np.testing.assert_allclose(run(False), run(True), rtol=1e-4, atol=1e-5)


def test_bf16_loss_matches_fp32_within_tolerance():
    """bf16 autocast is an option where the CPU supports it; its loss stays within 2% of fp32."""
    pairs = tiny_pairs()
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        enc = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, dropout=0.0, layer=1))
        t = Trainer(enc, FlipKDLoss(), pairs, TrainConfig(batch_size=16, max_steps=1, precision=precision),
                    show_progress=False)
        losses[precision] = t.train_step(list(range(16)))["loss/total"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


@pytest.mark.parametrize("mode", ["generative", "both"])
def test_decoder_path_sup_modes_train_the_decoder_path(mode):
    torch.manual_seed(0)
    enc = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, dropout=0.0, pair_prompt="{text_a} what "
                                                                    "{text_b}", label_words=("no", "yes")))
    seen = []
    t = Trainer(enc, FlipKDLoss(LossConfig(sup_mode=mode)), tiny_pairs(),
                TrainConfig(learning_rate=5e-3, batch_size=16, max_steps=8, warmup_ratio=0, precision="fp32"),
                on_step=lambda s, m: seen.append(m["loss/sup"]), show_progress=False)
    t.train()
    assert seen[-1] < seen[0]



def test_cosine_distillation_reads_the_raw_teacher_cosines():
    """L_dist's ``cosine`` form gets the teacher's cosines before calibration, and training lowers it."""
    pairs, index = tiny_pairs(), list(range(16))
    raw = pairs.teacher_a @ pairs.teacher_b.T
    assert np.allclose(pairs.teacher_cosine_matrix(index).numpy(), raw, atol=1e-6)
    assert np.allclose(pairs.teacher_matrix(index).numpy(), (raw + 1) / 2, atol=1e-6)
    torch.manual_seed(0)
    enc = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, dropout=0.0))
    t = Trainer(enc, FlipKDLoss(LossConfig(parts=("dist",), distill_mode="cosine")), pairs,
                TrainConfig(learning_rate=5e-3, batch_size=16, max_steps=8, warmup_ratio=0, precision="fp32"),
                show_progress=False)
    with torch.no_grad():
        s = (enc.encode(pairs.text_a) @ enc.encode(pairs.text_b).T).numpy()
    first = t.train_step(index)["loss/dist"]
    assert first == pytest.approx(float(np.mean((s - raw) ** 2)), rel=1e-4)
    assert abs(first - float(np.mean((s - (raw + 1) / 2) ** 2))) > 1e-3
    later = [t.train_step(index)["loss/dist"] for _ in range(7)]
    assert later[-1] < first


def early_trainer(eval_every, patience, scores, steps=20, dropout=0.3):
    """A trainer whose dev evaluations return ``scores`` in turn (LoRA dropout on: training draws from the RNG)."""
    torch.manual_seed(0)
    enc = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, alpha=8, dropout=dropout, max_length=16))
    config = TrainConfig(learning_rate=1e-2, batch_size=4, max_steps=steps, warmup_ratio=0, precision="fp32",
                         eval_every=eval_every, patience=patience)
    trainer = Trainer(enc, FlipKDLoss(), tiny_pairs(), config, show_progress=False)
    snapshots, asked = {}, []

    def evaluate(step):
        asked.append(step)
        snapshots[step] = {k: v.detach().clone() for k, v in trainer.trained_parameters().items()}
        torch.rand(3)  # an evaluation that draws random numbers must not change the training
        return scores[len(asked) - 1]

    trainer.evaluate = evaluate if eval_every else None
    return trainer, snapshots, asked


@pytest.mark.parametrize("eval_every,patience,scores,asked,best,stopped_at", [
    (2, 2, [0.5, 0.7, 0.6, 0.6, 0.9], [2, 4, 6, 8], 4, 8),  # two misses after step 4: stop at 8
    (5, 0, [0.5, 0.8, 0.6, 0.7], [5, 10, 15, 20], 10, 20),  # no patience: every step, the best restored
    (3, 1, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], [3, 6, 9, 12, 15, 18, 20], 20, 20),  # always better: the last
    (4, 2, [0.5, 0.5, 0.5], [4, 8, 12], 4, 12),  # a tie is no improvement
])
def test_early_stopping_keeps_the_best_parameters(eval_every, patience, scores, asked, best, stopped_at):
    trainer, snapshots, seen = early_trainer(eval_every, patience, scores)
    summary = trainer.train()
    assert seen == asked
    assert (summary["best_step"], summary["stopped_at_step"], trainer.step) == (best, stopped_at, stopped_at)
    assert summary["stopped_early"] == float(stopped_at < 20)
    assert summary["best_dev_score"] == max(scores[:len(asked)])
    for name, value in trainer.trained_parameters().items():
        assert torch.equal(value.detach(), snapshots[best][name]), name


def test_evaluation_does_not_change_the_training():
    """Scores that always improve keep the last parameters: they must equal a run without evaluation."""
    plain, _, _ = early_trainer(0, 0, [], steps=8)
    plain.train()
    evaluated, _, seen = early_trainer(2, 0, [0.1, 0.2, 0.3, 0.4], steps=8)
    evaluated.train()
    assert seen == [2, 4, 6, 8]
    for (name, a), b in zip(plain.trained_parameters().items(), evaluated.trained_parameters().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kwargs,match", [({"patience": 2}, "patience needs eval_every"),
                                          ({"eval_every": -1}, "eval_every"), ({"eval_every": 2, "patience": -1},
                                                                               "patience")])
def test_bad_early_stopping_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(("precision", "rel"), [("fp32", 1e-5), ("bf16", 1e-2)])
def test_fast_training_path_changes_speed_not_the_loss(precision, rel):
    """Eager attention and once-cast norm outputs give the step's loss; the model is restored afterwards."""
    from components.training.trainer import fast_training_path

    pairs = tiny_pairs()
    losses = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = tiny_llama()
        model.set_attn_implementation("sdpa")
        enc = LoraEncoder(model, tiny_tokenizer(), EncoderConfig(rank=4, dropout=0.0, layer=2))
        t = Trainer(enc, FlipKDLoss(), pairs, TrainConfig(batch_size=16, max_steps=1, precision=precision),
                    show_progress=False)
        if fast:
            with fast_training_path(enc.model):
                assert model.config._attn_implementation == "eager"
                assert model.model.layers[0].input_layernorm._forward_hooks
                losses.append(t.train_step(list(range(16)))["loss/total"])
            assert model.config._attn_implementation == "sdpa"
            assert not any(m._forward_hooks for n, m in model.named_modules() if n.endswith("layernorm"))
        else:
            losses.append(t.train_step(list(range(16)))["loss/total"])
    assert losses[1] == pytest.approx(losses[0], rel=rel)


def one_step(config: TrainConfig) -> tuple[Trainer, dict]:
    torch.manual_seed(0)
    enc = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, dropout=0.0))
    trainer = Trainer(enc, FlipKDLoss(), tiny_pairs(), config, show_progress=False)
    trainer.optimizer.step = lambda *a, **k: None  # keep the clipped gradients to look at
    return trainer, trainer.train_step(list(range(8)))


@pytest.mark.parametrize("mode", ["value", "norm"])
def test_gradient_clipping_modes(mode):
    trainer, metrics = one_step(TrainConfig(max_steps=2, batch_size=8, precision="fp32", clip_mode=mode,
                                            clip_value=1e-3))
    grads = [p.grad for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    assert metrics["grad_norm"] > 1e-2  # the norm before clipping is logged
    if mode == "norm":
        assert norm == pytest.approx(1e-3, rel=1e-3)  # rescaled as a whole: every direction kept
    else:
        assert max(float(g.abs().max()) for g in grads) == pytest.approx(1e-3) and norm > 1e-3 * 1.5  # elementwise


def test_teacher_terms_ramp_in_over_their_warmup():
    trainer, _ = one_step(TrainConfig(max_steps=10, batch_size=8, precision="fp32", teacher_warmup_ratio=0.5))
    weights = []
    for step in range(10):
        trainer.step = step
        weights.append(trainer.teacher_weight())
    assert weights == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    parts = FlipKDLoss()(torch.randn(4, 3), torch.randn(4, 3), torch.rand(4, 4), torch.tensor([1.0, 0, 1, 0]),
                         teacher_weight=0.0)
    assert float(parts["total"]) == pytest.approx(float(parts["sup"]))  # only L_sup at the start of the ramp
    with pytest.raises(ValueError, match="clip_mode"):
        TrainConfig(clip_mode="sign")
