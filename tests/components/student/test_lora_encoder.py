import json

import pytest
import torch
from peft import PeftModel

from components.pooling import last_token_index, pool
from components.student.lora_encoder import EncoderConfig, LoraEncoder
from tests.tiny_models import random_texts, tiny_llama

TEXTS = ["how do i reset my password", "card lost", "where is the parcel with my new card order", "fee"]


def make_encoder(tiny_lm, **kwargs):
    model, tok = tiny_lm
    enc = LoraEncoder(model, tok, EncoderConfig(rank=4, alpha=8, dropout=0.0, **kwargs))
    # LoRA B starts at zero: give A and B random values so the merge has something to merge
    torch.manual_seed(0)
    for p in enc.trainable_parameters():
        torch.nn.init.normal_(p, std=0.2)
    return enc.eval()


def test_pooling_index_arithmetic():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]
    hidden = torch.arange(30, dtype=torch.float).view(3, 5, 2)
    assert pool(hidden, mask, "mean")[1].tolist() == hidden[1, 2:].mean(0).tolist()


ENCODER_CASES = [
    ("last_token_last_layer", {}),
    ("mean_pooling", {"pooling": "mean"}),
    ("middle_layer_k_proj", {"layer": 1, "module": "k_proj"}),
    ("first_layer_v_proj", {"layer": 0, "module": "v_proj"}),
    ("lora_in_top_two_blocks", {"lora_layers": 2}),
    ("wide_readout", {"readout_rank": 8}),
    ("hidden_state_readout", {"readout": "hidden"}),
]


@pytest.mark.parametrize("name,kwargs", ENCODER_CASES, ids=[c[0] for c in ENCODER_CASES])
def test_left_and_right_padding_agree(tiny_lm, name, kwargs):
    enc = make_encoder(tiny_lm, **kwargs)
    enc.tokenizer.padding_side = "right"
    right = enc.encode(TEXTS, batch_size=4)
    enc.tokenizer.padding_side = "left"
    left = enc.encode(TEXTS, batch_size=4)
    one_by_one = torch.cat([enc.encode([t]) for t in TEXTS])
    # z is as wide as the readout module's rank, or the model's hidden size for the hidden-state readout
    assert right.shape == (4, 32 if kwargs.get("readout") == "hidden" else kwargs.get("readout_rank", 4))
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_by_one, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(right.norm(dim=-1), torch.ones(4))


@pytest.mark.parametrize("name,kwargs", ENCODER_CASES, ids=[c[0] for c in ENCODER_CASES])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_merged_encoder_equals_encode(tiny_lm, name, kwargs, padding_side):
    enc = make_encoder(tiny_lm, **kwargs)
    enc.tokenizer.padding_side = padding_side
    merged = enc.merged_encoder()
    texts = random_texts(7, seed=1)
    batch = enc.tokenize(texts)
    with torch.inference_mode():
        got = merged(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, enc.encode(texts, batch_size=7), atol=1e-5, rtol=0)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # the encoder is unchanged by building the merged copy
    torch.testing.assert_close(enc.encode(texts), enc.encode(texts))


def test_layers_after_representation_are_not_run(tiny_lm):
    enc = make_encoder(tiny_lm, layer=0)
    calls = []
    base = enc.model.get_base_model().model
    for i, layer in enumerate(base.layers):
        layer.mlp.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    base.norm.register_forward_hook(lambda m, a, o: calls.append("norm"))
    enc.encode(TEXTS)
    assert calls == []  # even layer 0's MLP runs after q_proj


def test_gradients_reach_lora(tiny_lm):
    enc = make_encoder(tiny_lm)
    enc.train()
    z = enc.encode_batch(TEXTS)
    z.sum().backward()
    grads = [p.grad for n, p in enc.model.named_parameters() if p.requires_grad and "lora_A" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_save_and_load_round_trip(tiny_lm, tmp_path):
    enc = make_encoder(tiny_lm, layer=1, pooling="mean", threshold=0.42)
    expected = enc.encode(TEXTS)
    enc.save(tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "flipkd_encoder.json").read_text())
    assert meta["config"]["layer"] == 1 and meta["config"]["threshold"] == 0.42
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    _, tok = tiny_lm
    again = LoraEncoder.load(tmp_path / "adapter", tiny_llama(), tok)
    torch.testing.assert_close(again.encode(TEXTS), expected, atol=1e-6, rtol=0)
    # plain peft can load the adapter too
    assert isinstance(PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "adapter")), PeftModel)


@pytest.mark.parametrize("kwargs,match", [
    ({"layer": 3}, "out of range"), ({"layer": -4}, "out of range"), ({"module": "lm_head"}, "no LoRA module"),
])
def test_bad_representation_choice(tiny_lm, kwargs, match):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match=match):
        LoraEncoder(model, tok, EncoderConfig(rank=4, **kwargs))


@pytest.mark.parametrize("kwargs,match", [({"rank": 0}, "rank"), ({"pooling": "cls"}, "pooling"),
                                          ({"dropout": 1.0}, "dropout"), ({"max_length": 1}, "max_length")])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EncoderConfig(**kwargs)


def test_joint_scoring_reads_the_pair_prompt(tiny_lm):
    enc = make_encoder(tiny_lm, pair_prompt="{text_a} what {text_b} yes or no", label_words=("no", "yes"))
    batch = enc.tokenize_pairs(["card lost", "how do i reset my password"], ["block card", "fee"])
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]  # left padded: the answer position is last
    logp = enc.label_logprobs(**batch)
    assert logp.shape == (2, 2) and (logp < 0).all()
    p = enc.joint_scores(["card lost", "how do i reset my password"], ["block card", "fee"], batch_size=1)
    assert ((p > 0) & (p < 1)).all()
    torch.testing.assert_close(p, torch.softmax(logp, -1)[:, 1].detach(), atol=1e-5, rtol=0)
    # the representation path still stops early after a joint forward
    assert enc._stop_early


def test_label_words_must_be_single_tokens(tiny_lm):
    enc = make_encoder(tiny_lm, label_words=("no no", "yes"))
    with pytest.raises(ValueError, match="one-token"):
        enc.label_token_ids()


@pytest.mark.parametrize("site", ["input", "bottleneck"])
def test_dropout_site(site):
    """input: B A dropout(x) (PEFT's place); bottleneck: B dropout(A x). Both are the identity in eval mode."""
    from tests.tiny_models import tiny_tokenizer

    torch.manual_seed(0)
    enc = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, alpha=8, dropout=0.5, dropout_site=site))
    for p in enc.trainable_parameters():
        torch.nn.init.normal_(p, std=0.2)
    module = enc._target
    enc._stop_early = False  # the representation hook would end the call at this module
    a, b, scale = module.lora_A["default"], module.lora_B["default"], module.scaling["default"]
    x = torch.randn(2, 3, a.in_features)
    from components.student.lora_dropout import fast_dropout as drop

    with torch.no_grad():
        enc.eval()
        torch.testing.assert_close(module(x), module.base_layer(x) + b(a(x)) * scale)
        enc.train()
        torch.manual_seed(1)
        got = module(x)
        torch.manual_seed(1)
        lin = torch.nn.functional.linear  # not a(x): the hooked module would apply the dropout again
        expected = module.base_layer(x) + (b(drop(lin(x, a.weight), 0.5, True)) if site == "bottleneck"
                                           else b(lin(drop(x, 0.5, True), a.weight))) * scale
        torch.testing.assert_close(got, expected)
    kinds = {type(m["default"]).__name__ for m in (mod.lora_dropout for mod in enc.model.modules()
                                                   if hasattr(mod, "lora_dropout"))}
    assert kinds == ({"Identity"} if site == "bottleneck" else {"FastDropout"})


@pytest.mark.parametrize("append_eos", [True, False])
def test_suffix_follows_the_truncated_text(tiny_lm, append_eos):
    """Only the text is truncated: the prompt's suffix (and EOS) always end the sequence."""
    model, tok = tiny_lm
    enc = LoraEncoder(model, tok, EncoderConfig(rank=4, max_length=8, instruction="alpha ", suffix=" gamma delta",
                                                append_eos=append_eos))
    tail = tok(" gamma delta", add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if append_eos else [])
    head = tok("alpha", add_special_tokens=False)["input_ids"]
    for text in (" ".join(random_texts(6, seed=1)), "beta"):
        batch = enc.tokenize([text])
        ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
        assert ids[: len(head)] == head and ids[-len(tail):] == tail and len(ids) <= 8
    assert len(ids) == len(head) + len(tok("beta", add_special_tokens=False)["input_ids"]) + len(tail)
    with pytest.raises(ValueError, match="no room"):
        LoraEncoder(model, tok, EncoderConfig(rank=4, max_length=2, suffix=" gamma delta")).tokenize(["beta"])


def test_a_wide_readout_widens_z_alone_and_survives_save_and_load(tiny_lm, tmp_path):
    from tests.tiny_models import tiny_llama, tiny_tokenizer

    enc = make_encoder(tiny_lm, readout_rank=8)
    ranks = {name: m.lora_A["default"].weight.shape[0] for name, m in enc.model.named_modules() if hasattr(m, "lora_A")}
    readout = [n for n in ranks if n.endswith(f"layers.{enc.layer_index}.self_attn.q_proj")]
    assert len(readout) == 1 and ranks[readout[0]] == 8
    assert {r for n, r in ranks.items() if n != readout[0]} == {4}  # every other module keeps the LoRA rank
    target = dict(enc.model.named_modules())[readout[0]]
    assert target.scaling["default"] == pytest.approx(8 / 4)  # alpha / r as for the rank-4 modules
    texts = random_texts(5, seed=2)
    expected = enc.encode(texts)
    enc.save(tmp_path / "adapter")
    loaded = LoraEncoder.load(tmp_path / "adapter", tiny_llama(), tiny_tokenizer())
    assert loaded.dimension == 8
    torch.testing.assert_close(loaded.encode(texts), expected, atol=1e-6, rtol=0)
