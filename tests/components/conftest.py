import copy

import pytest

from tests.tiny_models import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="session")
def _tiny_lm_session():
    return tiny_llama(), tiny_tokenizer()


@pytest.fixture
def tiny_lm(_tiny_lm_session):
    """A fresh copy of the tiny causal LM and its tokenizer for each test."""
    model, tokenizer = _tiny_lm_session
    return copy.deepcopy(model), copy.deepcopy(tokenizer)
