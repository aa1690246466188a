"""Shared fixtures. Tiny randomly initialised model *folders* for the model, teacher and cache tests.

Nothing here touches the network: HF_HUB_OFFLINE is set for the whole session.
"""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors  # noqa: E402
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast  # noqa: E402

TINY_BERT_WORDS = (
    "how do i reset my password forgot can change it the cat sat on mat what is weather today card lost "
    "where parcel order refund cancel subscription account open close balance transfer money fee app login "
    "yes no a an of for with when why new late track payment failed block stolen pin limit to"
).split()


def tiny_bert_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style WordLevel tokenizer: lower-cases, splits words and punctuation, adds [CLS] ... [SEP]."""
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for word in TINY_BERT_WORDS + ["?", ",", ".", "!"]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)


def build_tiny_bert(folder, seed: int = 0):
    """Save a tiny random BERT encoder (hidden 32, 2 layers) and its tokenizer into ``folder``."""
    tokenizer = tiny_bert_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """Folder of a tiny random BERT teacher (read-only: copy it before changing anything)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """Folder of a tiny random Llama student with a WordLevel tokenizer (read-only)."""
    from tests.tiny_models import tiny_llama, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama().save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models gain nothing from threads and run several times slower with two on a busy machine;
    integration tests (the real models) keep every thread."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory):
    """An empty tracking store with MLflow's tables made once: creating them takes seconds per store."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_env(tmp_path, monkeypatch, migrated_store):
    """A private tracking store and working folder; MLflow's global state is reset around the test."""
    import mlflow

    shutil.copy(migrated_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("FLIPKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(uri)
    while mlflow.active_run():
        mlflow.end_run()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="Also run tests marked slow (minutes of real training).")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run only with ``--run-slow``: CI (the README's ``python -m pytest``) leaves them out."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
