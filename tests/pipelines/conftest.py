import pytest


@pytest.fixture
def tiny_model_args(tiny_llama_dir, tiny_bert_dir):
    """Options that point the pipelines at the tiny test models and keep runs short."""
    return ["--student", str(tiny_llama_dir), "--teacher", str(tiny_bert_dir), "--no-progress", "--experiment", "t"]
