import pytest
import torch

from components.student.lora_dropout import FastDropout, fast_dropout, install_lora_dropout, keep_mask, masks_by_token
from components.student.lora_encoder import EncoderConfig, LoraEncoder


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_keep_rate_and_scale_match_nn_dropout(p):
    """Kept elements are scaled by 1/(1-p) and the kept fraction is 1-p (binomial: 6 std bound)."""
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([400, 500]), p, torch.float32)
    kept = mask > 0
    assert torch.allclose(mask[kept], torch.tensor(1 / (1 - p)), rtol=1e-4)
    n = mask.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 6 * (p * (1 - p) / n) ** 0.5
    x = torch.ones(400, 500)
    assert abs(fast_dropout(x, p).mean().item() - 1.0) < 0.01  # unbiased, like nn.Dropout


def test_mask_elements_are_independent():
    """Neighbouring elements (same 64-bit draw) and rows are uncorrelated."""
    torch.manual_seed(0)
    keep = (keep_mask(torch.Size([1000, 1000]), 0.5, torch.float32) > 0).float()
    flat = keep.flatten()
    for lag in (1, 2, 3, 4, 1000):
        corr = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()
        assert abs(corr) < 0.01, lag


def test_seeded_and_identity_in_eval():
    drop = FastDropout(0.2)
    x = torch.randn(8, 16)
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x))
    drop.eval()
    assert drop(x) is x
    assert fast_dropout(x, 0.0) is x


def test_gradient_is_the_mask():
    x = torch.randn(5, 7, requires_grad=True)
    torch.manual_seed(1)
    y = fast_dropout(x, 0.4)
    y.sum().backward()
    torch.manual_seed(1)
    assert torch.equal(x.grad, keep_mask(x.shape, 0.4, x.dtype))


def test_masks_by_token_follow_the_token_not_the_position():
    """Positions holding the same real token get the same mask row; the keep rate is unchanged."""
    index = torch.tensor([[0, 1, 2, 2], [3, 0, 4, 1]])
    x = torch.ones(2, 4, 3000)
    torch.manual_seed(0)
    with masks_by_token(index, tokens=5):
        y = fast_dropout(x, 0.3)
        other = fast_dropout(torch.ones(7, 5), 0.3)  # a shape that is not the layout's: drawn per element
    assert torch.equal(y[0, 2], y[0, 3]) and torch.equal(y[0, 0], y[1, 1]) and torch.equal(y[0, 1], y[1, 3])
    assert not torch.equal(y[0, 0], y[0, 1])
    assert abs((y > 0).float().mean().item() - 0.7) < 0.02
    assert other.shape == (7, 5)


def test_masks_by_token_use_one_global_draw_per_forward():
    """However many modules drop out inside, the global generator moves by one draw, so extra modules
    (a full-depth forward) leave later masks unchanged."""
    def after(calls):
        torch.manual_seed(0)
        with masks_by_token(torch.zeros(1, 2, dtype=torch.long), tokens=1):
            for _ in range(calls):
                fast_dropout(torch.ones(1, 2, 8), 0.5)
        return torch.rand(3)
    assert torch.equal(after(1), after(5))


@pytest.mark.parametrize(("index", "tokens"), [(torch.zeros(3, dtype=torch.long), 1),
                                              (torch.tensor([[0, 2]]), 2), (torch.tensor([[-1, 0]]), 2),
                                              (torch.zeros(1, 1, dtype=torch.long), 0)])
def test_masks_by_token_refuses_bad_index(index, tokens):
    with pytest.raises(ValueError, match="token_index"):
        with masks_by_token(index, tokens):
            pass


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_bad_rate(p):
    with pytest.raises(ValueError, match="dropout rate"):
        FastDropout(p)


def test_install_counts_and_refuses_unknown_site(tiny_lm):
    model, tokenizer = tiny_lm
    enc = LoraEncoder(model, tokenizer, EncoderConfig(rank=4, alpha=8, dropout=0.1))
    kinds = [type(m.lora_dropout["default"]).__name__ for m in enc.model.modules() if hasattr(m, "lora_dropout")]
    assert kinds and set(kinds) == {"FastDropout"}
    assert install_lora_dropout(enc.model, "input") == 0  # nothing left to replace
    with pytest.raises(ValueError, match="dropout site"):
        install_lora_dropout(enc.model, "output")
