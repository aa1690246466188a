import json
import random

import numpy as np
import pytest
import torch

from components.losses.composite_loss import FlipKDLoss
from components.student.lora_encoder import EncoderConfig, LoraEncoder
from components.training import checkpoint as ck
from components.training.checkpoint import (
    CHECKSUMS,
    FILES,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from components.training.trainer import TrainConfig, Trainer
from tests.components.training.test_trainer import tiny_pairs
from tests.tiny_models import tiny_llama, tiny_tokenizer

CONFIG = {"train": {"learning_rate": 0.01, "seed": 0}, "data_fingerprint": "abc"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is faster, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_trainer(init_seed=0, steps=6, every=0, on_checkpoint=None, on_step=None):
    """LoRA dropout is on, so the result depends on torch's global RNG, not only on the data order."""
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    torch.manual_seed(init_seed)  # LoRA initialisation
    enc = LoraEncoder(model, tokenizer, EncoderConfig(rank=4, alpha=8, dropout=0.3, max_length=16))
    config = TrainConfig(learning_rate=1e-2, batch_size=4, max_steps=steps, warmup_ratio=0.2, precision="fp32",
                         checkpoint_every=every)
    return Trainer(enc, FlipKDLoss(), tiny_pairs(), config, on_step=on_step, on_checkpoint=on_checkpoint,
                   show_progress=False)


def params_of(trainer):
    return {k: v.detach().clone() for k, v in trainer.trained_parameters().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_restore_then_train_equals_uninterrupted_training(tmp_path):
    seen_a, seen_b = {}, {}
    a = make_trainer(on_step=lambda s, m: seen_a.__setitem__(s, m["loss/total"]))
    a.train(until_step=3)
    path = save_checkpoint(tmp_path / "ck", a.state_dict(), CONFIG)
    a.train()  # saving changed nothing: this is the uninterrupted run

    torch.manual_seed(123), random.seed(5), np.random.seed(7)  # a new process has other global RNG states
    b = make_trainer(init_seed=1, on_step=lambda s, m: seen_b.__setitem__(s, m["loss/total"]))
    loaded = load_checkpoint(path, CONFIG)
    assert loaded.step == 3
    b.load_state_dict(loaded.state)
    assert b.step == 3 and b.scheduler.last_epoch == 3
    b.train()

    assert_same(params_of(a), params_of(b))
    assert [seen_a[s] for s in (4, 5, 6)] == [seen_b[s] for s in (4, 5, 6)]
    assert b.scheduler.get_last_lr() == a.scheduler.get_last_lr()
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][i][key], sb["state"][i][key]), (i, key)
    assert torch.equal(torch.get_rng_state(), torch.get_rng_state())


def test_without_the_rng_state_dropout_would_differ(tmp_path):
    """Guards the test above: the RNG state is what makes the resume exact."""
    a = make_trainer()
    a.train(until_step=3)
    state = a.state_dict()
    a.train()
    b = make_trainer()
    b.load_state_dict(state)
    torch.manual_seed(999)
    b.train()
    assert any(not torch.equal(x, y) for x, y in zip(params_of(a).values(), params_of(b).values(), strict=True))


def test_rng_states_round_trip(tmp_path):
    a = make_trainer(steps=2)
    a.train(until_step=1)
    random.random(), np.random.rand()
    state = a.state_dict()
    expected = (torch.rand(3), random.random(), np.random.rand())
    loaded = load_checkpoint(save_checkpoint(tmp_path, state, CONFIG)).state
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    make_trainer(steps=2).load_state_dict(loaded)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_trainer_calls_back_every_n_steps_and_keeps_the_last_two(tmp_path):
    calls = []

    def on_checkpoint(step):
        calls.append(step)
        save_checkpoint(tmp_path, trainer.state_dict(), CONFIG)

    trainer = make_trainer(steps=5, every=2, on_checkpoint=on_checkpoint)
    trainer.train()
    assert calls == [2, 4, 5]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]
    # safe formats only: safetensors and JSON, each listed with its sha256
    files = sorted(p.name for p in latest_checkpoint(tmp_path).iterdir())
    assert files == sorted([*FILES, CHECKSUMS])
    assert all(name.endswith((".json", ".safetensors")) for name in files)
    sums = json.loads((latest_checkpoint(tmp_path) / CHECKSUMS).read_text())["files"]
    assert set(sums) == set(FILES)


def test_checkpoint_every_must_not_be_negative():
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainConfig(checkpoint_every=-1)


@pytest.fixture
def two_checkpoints(tmp_path):
    trainer = make_trainer(steps=6)
    trainer.train(until_step=2)
    save_checkpoint(tmp_path, trainer.state_dict(), CONFIG)
    trainer.train(until_step=4)
    return tmp_path, save_checkpoint(tmp_path, trainer.state_dict(), CONFIG)


def test_truncated_file_is_refused_by_name(two_checkpoints):
    root, path = two_checkpoints
    target = path / "optimizer.safetensors"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors does not match its sha256") as err:
        load_checkpoint(path)
    assert "step-00000002" in str(err.value)  # points at the previous checkpoint


@pytest.mark.parametrize("name", ["parameters.safetensors", "rng.json", "trainer.json"])
def test_tampered_file_is_refused_by_name(two_checkpoints, name):
    _, path = two_checkpoints
    blob = bytearray((path / name).read_bytes())
    blob[len(blob) // 2] ^= 0x01  # same length, one bit changed
    (path / name).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=f"{name} does not match"):
        load_checkpoint(path)


def test_missing_file_or_broken_checksums_are_refused(two_checkpoints):
    root, path = two_checkpoints
    (path / "scheduler.json").unlink()
    with pytest.raises(CheckpointError, match="scheduler.json is missing"):
        load_checkpoint(path)
    (path / CHECKSUMS).write_text('{"algorithm": "sha256", "fi')
    with pytest.raises(CheckpointError, match="checksums.json is unreadable"):
        load_checkpoint(path)
    (path / CHECKSUMS).unlink()
    with pytest.raises(CheckpointError, match="checksums.json is missing"):
        load_checkpoint(path)
    first = list_checkpoints(root)[0]
    with pytest.raises(CheckpointError, match="no earlier checkpoint"):
        (first / "rng.safetensors").write_bytes(b"")
        load_checkpoint(first)


def test_other_config_or_data_is_refused(two_checkpoints):
    _, path = two_checkpoints
    assert load_checkpoint(path, CONFIG).step == 4
    other = {"train": {"learning_rate": 0.02, "seed": 0}, "data_fingerprint": "xyz"}
    with pytest.raises(CheckpointError, match="other options or data") as err:
        load_checkpoint(path, other)
    assert "train.learning_rate: 0.01 -> 0.02" in str(err.value) and "data_fingerprint" in str(err.value)


def test_a_write_killed_before_the_rename_leaves_the_previous_checkpoint(two_checkpoints, monkeypatch):
    root, previous = two_checkpoints
    trainer = make_trainer(steps=6)
    trainer.load_state_dict(load_checkpoint(previous).state)
    trainer.train(until_step=5)

    def killed(tmp, final):  # every file is written and fsynced in the temporary folder; then the process dies
        assert sorted(p.name for p in tmp.iterdir()) == sorted([*FILES, CHECKSUMS])
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_publish", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, trainer.state_dict(), CONFIG)
    monkeypatch.undo()
    assert latest_checkpoint(root) == previous and load_checkpoint(previous, CONFIG).step == 4
    # SIGKILL runs no cleanup: a half-written temporary folder stays behind; readers never list it
    half = root / ".tmp-step-00000005-x"
    half.mkdir()
    (half / "parameters.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(root) == previous
    # the next save removes it, and saving a step that exists again replaces it whole
    save_checkpoint(root, trainer.state_dict(), CONFIG)
    save_checkpoint(root, trainer.state_dict(), CONFIG)
    assert not half.exists() and not list(root.glob(".*"))
    assert [p.name for p in list_checkpoints(root)] == ["step-00000004", "step-00000005"]
    assert load_checkpoint(latest_checkpoint(root), CONFIG).step == 5


def test_state_for_other_parameters_is_refused(two_checkpoints):
    _, path = two_checkpoints
    state = load_checkpoint(path).state
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    other = Trainer(LoraEncoder(model, tokenizer, EncoderConfig(rank=4, target_modules=["q_proj"], max_length=16)),
                    FlipKDLoss(), tiny_pairs(), TrainConfig(batch_size=4, max_steps=4), show_progress=False)
    with pytest.raises(ValueError, match="other trainable parameters"):
        other.load_state_dict(state)


def test_early_stopping_state_survives_a_checkpoint(tmp_path):
    """Best score, misses and best parameters are checkpointed: a resumed run stops and restores as uninterrupted."""
    def trainer_with_scores():
        t = make_trainer(steps=12)
        t.config.eval_every, t.config.patience = 2, 3
        scores = iter([0.3, 0.9, 0.4, 0.5, 0.6, 0.95])  # best at step 4; misses at 6, 8, 10: stop at 10
        t.evaluate = lambda step: next(scores)
        return t

    a = trainer_with_scores()
    summary_a = a.train()
    b = trainer_with_scores()
    b.train(until_step=6)
    path = save_checkpoint(tmp_path / "ck", b.state_dict(), CONFIG)
    assert (path / "best.safetensors").is_file()
    c = trainer_with_scores()
    scores = iter([0.5, 0.6, 0.95])  # b saw three scores: the resumed run sees the rest
    c.evaluate = lambda step: next(scores)
    c.load_state_dict(load_checkpoint(path, CONFIG).state)
    summary_c = c.train()
    assert (summary_a["best_step"], summary_a["stopped_at_step"]) == (4, 10)
    assert (summary_c["best_step"], summary_c["stopped_at_step"]) == (4, 10)
    assert_same(params_of(a), params_of(c))
