import pytest
import torch

from components.student.lora_encoder import PROMPTS, EncoderConfig, LoraEncoder
from components.student.packing import pack, padded_token_index

TEXTS = ["alpha beta gamma delta epsilon zeta eta theta", "iota", "kappa lambda mu", "nu xi omicron pi rho",
         "sigma", "tau upsilon phi chi psi omega alpha beta"]


@pytest.mark.parametrize(("capacity", "padding_side", "attention"), [
    (8, "right", "eager"), (8, "left", "eager"), (1000, "right", "eager"), (3, "right", "eager"),
    (8, "right", "sdpa"),
])
def test_packed_forward_equals_padded(tiny_lm, capacity, padding_side, attention):
    """Same z as the padded batch, whatever the rows, padding side or attention implementation; never more
    computed tokens than the padded batch, fewer when several texts fit a row (plain texts: the prompt's tokens
    would make every text longer than 8)."""
    model, tokenizer = tiny_lm
    tokenizer.padding_side = padding_side
    model.set_attn_implementation(attention)
    torch.manual_seed(0)
    enc = LoraEncoder(model, tokenizer, EncoderConfig(rank=4, alpha=8, dropout=0.0, **PROMPTS["none"]))
    for p in enc.trainable_parameters():
        torch.nn.init.normal_(p, std=0.2)
    batch = enc.tokenize(TEXTS)
    padded = enc(**batch)
    padded_tokens = enc.computed_tokens
    packed = enc(**batch, pack_capacity=capacity)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    assert enc.computed_tokens <= padded_tokens
    if capacity >= 8:
        assert enc.computed_tokens < padded_tokens


@pytest.mark.parametrize("site", ["input", "bottleneck"])
def test_training_dropout_does_not_depend_on_layout(tiny_lm, site):
    """Seeded alike, padded, full-length padded and packed layouts draw the same dropout masks per real token."""
    model, tokenizer = tiny_lm
    torch.manual_seed(0)
    enc = LoraEncoder(model, tokenizer, EncoderConfig(rank=4, alpha=8, dropout=0.3, dropout_site=site))
    for p in enc.trainable_parameters():
        torch.nn.init.normal_(p, std=0.2)
    enc.train()
    batch = enc.tokenize(TEXTS)
    extra = 5  # full-length padding on the right, as the trainer's naive loop does
    full = {"input_ids": torch.nn.functional.pad(batch["input_ids"], (0, extra), value=tokenizer.pad_token_id),
            "attention_mask": torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0)}

    def z(inputs, capacity=0, seed=7):
        torch.manual_seed(seed)
        return enc(**inputs, pack_capacity=capacity).detach()

    reference = z(batch)
    for inputs, capacity in ((batch, 8), (batch, 3), (full, 0), (full, 8)):
        torch.testing.assert_close(z(inputs, capacity), reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(z(batch, seed=8), reference, atol=1e-3)  # the masks are random ...
    enc.eval()
    assert not torch.allclose(z(batch), reference, atol=1e-3)  # ... and active in training only


def test_token_index_names_each_real_token_once():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1]])
    padded = padded_token_index(mask)
    assert padded[mask.bool()].tolist() == list(range(6))
    packed = pack(torch.arange(9).view(3, 3), mask, capacity=3)
    index = packed.token_index()
    assert sorted(index[packed.rows, packed.cols].tolist()) == list(range(6))
    flat_ids = torch.arange(9).view(3, 3)[mask.bool()]
    assert torch.equal(packed.input_ids[packed.rows, packed.cols], flat_ids[index[packed.rows, packed.cols]])


def test_rows_are_balanced_and_texts_kept_whole():
    lengths = [7, 1, 3, 5, 1, 7]
    mask = torch.zeros(6, 7, dtype=torch.long)
    ids = torch.zeros(6, 7, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, :n] = torch.arange(1, n + 1) + 10 * i
    p = pack(ids, mask, capacity=12)
    assert p.input_ids.shape[0] == 2  # ceil(24 / 12)
    assert p.input_ids.shape[1] == 12  # 7+5 and 7+3+1+1
    torch.testing.assert_close(p.unpack(p.input_ids.unsqueeze(-1)).squeeze(-1) * mask, ids * mask)
    # each real token sees exactly its own text's earlier tokens (token id // 10 is the text; 0 is padding)
    allowed = p.attention_bias[:, 0] == 0
    text = torch.where(p.input_ids == 0, -1, p.input_ids // 10)
    for r in range(2):
        for i in range(12):
            if text[r, i] < 0:
                continue
            for j in range(12):
                assert bool(allowed[r, i, j]) == bool(text[r, j] == text[r, i] and j <= i), (r, i, j)


def test_empty_text_refused():
    with pytest.raises(ValueError, match="at least one real token"):
        pack(torch.zeros(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0, 0, 0]]))
