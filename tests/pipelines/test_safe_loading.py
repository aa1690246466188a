"""Damaged or tampered model files are refused, naming the file; the code base loads no pickle and trusts no
remote code.

(a, b) a student adapter whose safetensors file is truncated or has one byte flipped: ``python -m
pipelines.evaluate --model <folder>`` exits 2 with one ``error:`` line naming the file (a flipped byte in the
tensor data still parses as safetensors: ``flipkd_checksums.json`` catches it). (c) an exported model whose
bundle files were changed after export is refused when the pyfunc loads. (d) a scan of components/, pipelines/
and serving/ for pickle, joblib, ``torch.load`` without ``weights_only=True``, ``trust_remote_code=True`` and
``allow_pickle=True``.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from safetensors import safe_open

from components.models import load_student
from components.student.lora_encoder import ADAPTER_WEIGHTS, CHECKSUM_FILE, LoraEncoder
from serving.onnx_pyfunc import CHECKSUM_FILE as BUNDLE_CHECKSUMS
from serving.onnx_pyfunc import CONFIG_FILE, FAQ_EMBEDDINGS_FILE, FAQ_FILE, MODEL_FILE, TOKENIZER_FILE
from tests.pipelines.test_serving_abuse import trained_and_exported

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("components", "pipelines", "serving")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, migrated_store, tiny_llama_dir, tiny_bert_dir):
    """(exported, the trained adapter folder, the exported pyfunc model folder), downloaded from the store."""
    work = tmp_path_factory.mktemp("safe")
    with trained_and_exported(work, migrated_store, tiny_llama_dir, tiny_bert_dir) as exported:
        adapter = mlflow.artifacts.download_artifacts(f"runs:/{exported.train_run}/student", dst_path=str(work / "a"))
        model = mlflow.artifacts.download_artifacts(f"runs:/{exported.export_run}/model", dst_path=str(work / "m"))
        yield exported, Path(adapter), Path(model)


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def _data_start(path: Path) -> int:
    """Offset of the tensor data in a safetensors file (8-byte header length, then the JSON header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_data_byte(path: Path) -> None:
    start = _data_start(path)
    _flip(path, start + (path.stat().st_size - start) // 2)
    with safe_open(str(path), framework="pt") as handle:  # still a valid safetensors file: only the sha256 tells
        assert handle.keys()


def flip_header_byte(path: Path) -> None:
    _flip(path, _data_start(path) - 2)


# ------------------------------------------------------------------------------------------ (a, b) adapters


@pytest.mark.parametrize("damage,message", [
    (truncate, "is not a valid safetensors file"),
    (flip_data_byte, "does not match its sha256"),
], ids=["truncated", "flipped-data-byte"])
def test_evaluate_refuses_a_damaged_adapter(artifacts, tmp_path, damage, message):
    exported, adapter, _ = artifacts
    folder = _copy(adapter, tmp_path / "student")
    damage(folder / ADAPTER_WEIGHTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "pipelines.evaluate", "--model", str(folder), "--no-progress",
                          "--experiment", "t"], cwd=exported.work, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert str(folder / ADAPTER_WEIGHTS) in errors[0] and message in errors[0], errors[0]


def _edit_config(folder: Path) -> Path:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "r": config["r"] * 2}))
    return path


@pytest.mark.parametrize("damage,named,message", [
    (lambda f: flip_header_byte(f / ADAPTER_WEIGHTS), ADAPTER_WEIGHTS, "is not a valid safetensors file"),
    (_edit_config, "adapter_config.json", "does not match its sha256"),
    (lambda f: (f / ADAPTER_WEIGHTS).unlink(), ADAPTER_WEIGHTS, "is missing"),
    (lambda f: (f / CHECKSUM_FILE).write_text("{not json"), CHECKSUM_FILE, "is damaged"),
], ids=["flipped-header-byte", "edited-adapter-config", "no-weights", "bad-listing"])
def test_lora_encoder_load_names_the_damaged_file(artifacts, tiny_llama_dir, tmp_path, damage, named, message):
    folder = _copy(artifacts[1], tmp_path / "student")
    damage(folder)
    with pytest.raises(ValueError, match=re.escape(str(folder / named)) + ".*" + message):
        LoraEncoder.load(folder, *load_student(tiny_llama_dir))


def test_intact_and_pre_checksum_adapters_load(artifacts, tiny_llama_dir, tmp_path):
    adapter = artifacts[1]
    listing = json.loads((adapter / CHECKSUM_FILE).read_text())
    assert listing["algorithm"] == "sha256"
    assert set(listing["files"]) == {ADAPTER_WEIGHTS, "adapter_config.json", "flipkd_encoder.json"}
    reference = LoraEncoder.load(adapter, *load_student(tiny_llama_dir)).encode(["where is the parcel"])
    old = _copy(adapter, tmp_path / "old")
    (old / CHECKSUM_FILE).unlink()  # saved before checksums existed: only the safetensors check applies
    again = LoraEncoder.load(old, *load_student(tiny_llama_dir)).encode(["where is the parcel"])
    assert (reference == again).all()


# ------------------------------------------------------------------------------------------ (c) served model


def _bundle(model: Path) -> Path:
    return next(model.rglob(BUNDLE_CHECKSUMS)).parent


def test_exported_bundle_lists_every_file(artifacts):
    bundle = _bundle(artifacts[2])
    listed = set(json.loads((bundle / BUNDLE_CHECKSUMS).read_text())["files"])
    present = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {BUNDLE_CHECKSUMS}
    assert listed == present
    assert {MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE, FAQ_FILE, FAQ_EMBEDDINGS_FILE} <= listed
    model = mlflow.pyfunc.load_model(str(artifacts[2]))
    answer = model.predict(pd.DataFrame({"text_a": ["where is the parcel"], "text_b": ["card lost"]}))
    assert answer["score"].notna().all()


@pytest.mark.parametrize("name", [MODEL_FILE, FAQ_EMBEDDINGS_FILE, TOKENIZER_FILE, CONFIG_FILE])
def test_pyfunc_refuses_a_tampered_bundle_file(artifacts, tmp_path, name):
    model = _copy(artifacts[2], tmp_path / "model")
    path = _bundle(model) / name
    if name == CONFIG_FILE:  # a plausible edit: a higher serving limit
        path.write_text(path.read_text().replace('"max_chars": 4000', '"max_chars": 400000'))
        assert '"max_chars": 400000' in path.read_text()
    else:
        _flip(path, path.stat().st_size // 2)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*does not match its sha256"):
        mlflow.pyfunc.load_model(str(model))


def test_exported_model_holds_no_pickle(artifacts):
    pickles = [p.name for p in artifacts[2].rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]
    assert not pickles, pickles


# ------------------------------------------------------------------------------------------ (d) the code base

UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
UNSAFE_TEXT = re.compile(r"trust_remote_code\s*=\s*True|allow_pickle\s*=\s*True|\bimport\s+(?:c?pickle|joblib|"
                         r"cloudpickle|dill)\b|\bfrom\s+(?:c?pickle|joblib|cloudpickle|dill)\s+import\b")


def unsafe_uses(source: str, name: str) -> list[str]:
    """Unsafe loading in one file: a grep for the literal patterns, then the syntax tree for calls that span
    lines or hide in attribute chains (``torch.load`` without ``weights_only=True``, ``pickle.loads``, ...)."""
    found = [f"{name}:{source.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in UNSAFE_TEXT.finditer(source)]
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            weights_only = keywords.get("weights_only")
            if func.endswith("torch.load") and not (isinstance(weights_only, ast.Constant) and weights_only.value):
                found.append(f"{where}: {func}(...) without weights_only=True")
            if func.split(".")[0] in UNSAFE_MODULES or func.endswith(("read_pickle", "Unpickler")):
                found.append(f"{where}: {func}(...)")
            for key in ("trust_remote_code", "allow_pickle"):
                value = keywords.get(key)
                if isinstance(value, ast.Constant) and value.value is True:
                    found.append(f"{where}: {key}=True")
    return sorted(set(found))


def test_the_scan_finds_unsafe_loading():
    bad = ("import pickle\nimport joblib as jl\nfrom dill import loads\nimport torch\n"
           "x = torch.load(path)\ny = torch.load(path, weights_only=False)\nz = pickle.loads(b)\n"
           "m = AutoModel.from_pretrained(\n    path,\n    trust_remote_code=True)\na = np.load(p, allow_pickle=True)\n"
           "f = pd.read_pickle(p)\n")
    hits = unsafe_uses(bad, "bad.py")
    for expected in ("import pickle", "import joblib", "from dill import", "torch.load(...) without weights_only=True",
                     "pickle.loads(...)", "trust_remote_code=True", "allow_pickle=True", "read_pickle(...)"):
        assert any(expected in hit for hit in hits), (expected, hits)
    assert sum("without weights_only" in hit for hit in hits) == 2
    good = ("import torch\nx = torch.load(p, weights_only=True)\nm = load(p, trust_remote_code=trust_remote_code)\n"
            "a = np.load(p, allow_pickle=False)\n'''no pickle here'''\n")
    assert unsafe_uses(good, "good.py") == []


def test_code_base_loads_no_pickle_and_trusts_no_remote_code():
    files = sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 20
    hits = [hit for path in files for hit in unsafe_uses(path.read_text(encoding="utf-8"),
                                                         str(path.relative_to(ROOT)))]
    assert hits == []
