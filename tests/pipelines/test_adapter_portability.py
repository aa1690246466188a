"""A saved adapter names its base model by name and fingerprint, not by a path of the machine that trained it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from components.checksums import write_checksums
from components.model_cache import ModelLoadError
from components.models import load_student, model_fingerprint
from components.student.lora_encoder import CHECKSUMMED, ENCODER_FILE, EncoderConfig, LoraEncoder
from pipelines.evaluate import load_trained_encoder
from tests.tiny_models import tiny_llama, tiny_tokenizer

TEXTS_A, TEXTS_B = ["card lost", "where is the parcel"], ["my card is stolen", "track my order"]


@pytest.fixture
def trained(tmp_path, tiny_llama_dir):
    """An adapter saved on 'machine 1', trained on the student folder machine1/student."""
    base = tmp_path / "machine1" / "student"
    shutil.copytree(tiny_llama_dir, base)
    model, tokenizer = load_student(base)
    encoder = LoraEncoder(model, tokenizer, EncoderConfig(rank=4, alpha=8, dropout=0.0, extra={"student": str(base)}))
    with torch.no_grad():  # a trained adapter: B is not zero
        for name, param in encoder.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.1)
    adapter = encoder.save(tmp_path / "adapter")
    return adapter, base, encoder.score_pairs(TEXTS_A, TEXTS_B)


def test_base_model_is_recorded_by_name_and_fingerprint(trained, tmp_path):
    adapter, base, _ = trained
    record = json.loads((adapter / ENCODER_FILE).read_text())["base_model"]
    assert record == {"name": "student", "fingerprint": model_fingerprint(base)}


def test_the_adapter_moves_to_another_machine(trained, tmp_path, capsys):
    adapter, base, scores = trained
    moved = tmp_path / "machine2" / "models" / "smollm"
    moved.parent.mkdir(parents=True)
    base.rename(moved)  # the training machine's folder is gone
    with pytest.raises(ModelLoadError, match="--student FOLDER"):
        load_trained_encoder(str(adapter))
    again = load_trained_encoder(str(adapter), student=str(moved))
    assert torch.equal(again.score_pairs(TEXTS_A, TEXTS_B), scores)
    assert "warning" not in capsys.readouterr().err


def test_another_base_model_is_loaded_with_a_warning(trained, tmp_path, capsys):
    adapter, *_ = trained
    other = tmp_path / "other"
    tiny_llama(seed=1).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    load_trained_encoder(str(adapter), student=str(other))
    assert "is not the one the adapter was trained on ('student', fingerprint" in capsys.readouterr().err


def test_an_adapter_that_recorded_a_path_still_loads(trained):
    adapter, base, scores = trained
    meta = json.loads((adapter / ENCODER_FILE).read_text())
    meta["base_model"] = "/home/someone/.cache/flipkd/models/smollm2-135m"  # the earlier format
    (adapter / ENCODER_FILE).write_text(json.dumps(meta))
    write_checksums(adapter, CHECKSUMMED)
    assert torch.equal(load_trained_encoder(str(adapter), student=str(base)).score_pairs(TEXTS_A, TEXTS_B), scores)
