"""A run does not depend on the cache state: cold, warm or partly filled caches train the same model.

A cold cache converts the packaged student (here a stand-in package whose converter builds the model from its
config and loads the weights, as the GGUF converter does: the build draws from torch's RNG) and computes every
teacher embedding; a warm one reads both; a partly filled teacher cache encodes the rest in other batches.
"""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import components.models as models
from components.data.demo import demo_pairs
from components.teacher.scorer import TeacherScorer
from pipelines import train

STEPS = 3
ARGS = ["--student", "smollm2-135m", "--max-steps", str(STEPS), "--rank", "4", "--lora-alpha", "8", "--batch-size",
        "8", "--max-length", "16", "--precision", "fp32", "--no-progress", "--experiment", "t"]


@pytest.fixture
def packaged_tiny_student(monkeypatch, tmp_path, tiny_llama_dir):
    """`smollm2-135m` resolves to a fake package; its 'conversion' builds the tiny Llama as the real one does."""
    package = tmp_path / "package"
    package.mkdir()
    (package / models.STUDENT_GGUF).write_bytes(b"GGUF stand-in")
    monkeypatch.setattr(models, "_package_dir", lambda name: package)

    def convert(gguf, out, eos_token):
        plain = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama_dir))  # draws from the RNG
        plain.load_state_dict(AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict())
        plain.save_pretrained(out)
        AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)

    monkeypatch.setattr(models, "convert_gguf_student", convert)


def train_in(cache, tiny_bert_dir, client) -> tuple[list[float], dict[str, float]]:
    result = CliRunner().invoke(train.cli, [*ARGS, "--teacher", str(tiny_bert_dir), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    run = client.search_runs([client.get_experiment_by_name("t").experiment_id], order_by=["start_time DESC"])[0]
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss/total"), key=lambda m: m.step)]
    assert len(losses) == STEPS
    return losses, {k: v for k, v in run.data.metrics.items() if k.startswith(("student/", "teacher/"))}


def test_cold_warm_and_partly_filled_caches_train_the_same_model(mlflow_env, packaged_tiny_student, tiny_bert_dir,
                                                                  tmp_path):
    cold = train_in(tmp_path / "cache", tiny_bert_dir, mlflow_env)
    assert (tmp_path / "cache" / "models" / "smollm2-135m").is_dir()  # the student was converted in that run
    warm = train_in(tmp_path / "cache", tiny_bert_dir, mlflow_env)

    partly = tmp_path / "partly"  # the converted student, and a third of the texts already in the teacher cache
    shutil.copytree(tmp_path / "cache" / "models", partly / "models")
    pairs = demo_pairs()
    texts = sorted(set(pairs["text_a"]) | set(pairs["text_b"]))[::3]
    TeacherScorer(tiny_bert_dir, cache=partly / "teacher_embeddings", show_progress=False).encode(texts)
    partial = train_in(partly, tiny_bert_dir, mlflow_env)

    assert cold[0] == warm[0] == partial[0]  # the same losses, bit for bit
    assert cold[1] == warm[1] == partial[1]
