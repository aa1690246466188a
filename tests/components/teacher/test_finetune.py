import json
import math
from itertools import product

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from components.losses.cosent_loss import CoSENTLoss
from components.model_cache import CHECKSUM_FILE, verify_folder
from components.models import resolve_teacher
from components.teacher.finetune import FINETUNE_SIDECAR, TeacherFinetuneConfig, finetune_teacher
from components.teacher.scorer import TeacherScorer

TOPICS = [
    ("how do i reset my password", "i forgot my password, can i change it?"),
    ("my card is lost", "block my stolen card"),
    ("where is my parcel", "track my late order"),
    ("cancel my subscription", "close my account"),
    ("transfer money with the app", "payment failed in the app"),
    ("what is the weather today", "the cat sat on the mat"),
]


def train_frame() -> pd.DataFrame:
    rows = []
    for (i, (a, b)), (j, (_, c)) in product(enumerate(TOPICS), enumerate(TOPICS)):
        rows.append({"text_a": a, "text_b": b if i == j else c, "label": 1.0 if i == j else 0.0})
    return pd.DataFrame(rows)


def cosent_on(model_dir, frame: pd.DataFrame) -> float:
    scorer = TeacherScorer(model_dir, show_progress=False)
    cosine = torch.tensor(scorer.pair_cosine(frame["text_a"], frame["text_b"]))
    return float(CoSENTLoss(20.0).compute_loss_from_cosine(cosine, torch.tensor(frame["label"].to_numpy())))


# ------------------------------------------------------------------------------------------------ CoSENT


def test_cosent_matches_the_formula():
    torch.manual_seed(0)
    cosine, labels = torch.rand(6) * 2 - 1, torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.25])
    total = sum(math.exp(20 * (cosine[j] - cosine[i])) for i in range(6) for j in range(6) if labels[i] > labels[j])
    expected = math.log(1 + total)
    assert float(CoSENTLoss(20.0).compute_loss_from_cosine(cosine, labels)) == pytest.approx(expected, rel=1e-5)


def test_cosent_is_zero_with_a_finite_gradient_when_labels_are_equal():
    emb = torch.randn(4, 8, requires_grad=True)
    loss = CoSENTLoss()(emb, torch.randn(4, 8), torch.ones(4))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(emb.grad).all()


def test_cosent_rewards_the_right_order():
    labels = torch.tensor([1.0, 0.0])
    good = CoSENTLoss().compute_loss_from_cosine(torch.tensor([0.9, 0.1]), labels)
    bad = CoSENTLoss().compute_loss_from_cosine(torch.tensor([0.1, 0.9]), labels)
    assert good < 0.01 < bad
    with pytest.raises(ValueError):
        CoSENTLoss(scale=0)


# ---------------------------------------------------------------------------------------------- fine-tune


@pytest.fixture(scope="module")
def finetuned(tiny_bert_dir, tmp_path_factory):
    logged = []
    config = TeacherFinetuneConfig(epochs=8, learning_rate=3e-3, batch_size=12, warmup_ratio=0.1, seed=0)
    out = finetune_teacher(tiny_bert_dir, train_frame(), tmp_path_factory.mktemp("ft") / "teacher", config,
                           show_progress=False, log_fn=lambda step, metrics: logged.append((step, metrics)))
    return out, logged, config


def test_finetune_lowers_the_cosent_loss(tiny_bert_dir, finetuned):
    out, _, _ = finetuned
    frame = train_frame()
    before, after = cosent_on(tiny_bert_dir, frame), cosent_on(out, frame)
    assert after < 0.7 * before, (before, after)


def test_finetuned_folder_is_a_normal_checksummed_model_folder(finetuned, tiny_bert_dir):
    out, _, config = finetuned
    assert resolve_teacher(str(out)) == out
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert verify_folder(out, "full") is None and (out / CHECKSUM_FILE).is_file()
    sidecar = json.loads((out / FINETUNE_SIDECAR).read_text())
    assert sidecar["pooling"] == "mean" and sidecar["config"]["learning_rate"] == config.learning_rate
    scorer = TeacherScorer(out, show_progress=False)
    assert scorer.fingerprint != TeacherScorer(tiny_bert_dir, show_progress=False).fingerprint
    assert scorer.encode(["card lost"]).shape == (1, 32)
    assert [p.name for p in out.parent.iterdir()] == ["teacher"]  # no temp folder left


def test_log_fn_gets_every_step_with_warmup_then_decay(finetuned):
    _, logged, config = finetuned
    steps_per_epoch = math.ceil(len(train_frame()) / config.batch_size)
    assert [step for step, _ in logged] == list(range(1, steps_per_epoch * config.epochs + 1))
    lrs = [metrics["lr"] for _, metrics in logged]
    peak = lrs.index(max(lrs))
    assert lrs[0] < max(lrs) == pytest.approx(config.learning_rate, rel=0.2)
    assert all(x >= y for x, y in zip(lrs[peak:], lrs[peak + 1:], strict=False))
    assert all(math.isfinite(metrics["loss"]) for _, metrics in logged)


def test_finetune_is_seeded_and_refuses_to_overwrite(tiny_bert_dir, tmp_path):
    config = TeacherFinetuneConfig(epochs=1, learning_rate=1e-3, batch_size=12, seed=3)
    frame = train_frame()
    first = finetune_teacher(tiny_bert_dir, frame, tmp_path / "a", config, show_progress=False)
    second = finetune_teacher(tiny_bert_dir, frame, tmp_path / "b", config, show_progress=False)
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    with pytest.raises(FileExistsError):
        finetune_teacher(tiny_bert_dir, frame, first, config, show_progress=False)
    finetune_teacher(tiny_bert_dir, frame, first, TeacherFinetuneConfig(epochs=1, batch_size=12, seed=4),
                     show_progress=False, overwrite=True)
    assert not torch.equal(load_file(first / "model.safetensors")["embeddings.word_embeddings.weight"],
                           weights_a["embeddings.word_embeddings.weight"])


def test_bad_training_data(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="missing"):
        finetune_teacher(tiny_bert_dir, pd.DataFrame({"text_a": ["a", "b"], "label": [0, 1]}), tmp_path / "x")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        finetune_teacher(tiny_bert_dir, pd.DataFrame({"text_a": ["a", "b"], "text_b": ["a", "b"], "label": [0, 5]}),
                         tmp_path / "x")
    with pytest.raises(ValueError, match="batch_size"):
        TeacherFinetuneConfig(batch_size=1)
    assert not (tmp_path / "x").exists()
