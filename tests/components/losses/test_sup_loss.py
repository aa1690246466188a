import math

import pytest
import torch

from components.losses.composite_loss import FlipKDLoss, LossConfig
from components.losses.sup_loss import SupervisedLoss


def test_representation_hand_computed():
    fn = SupervisedLoss(scale_init=10.0, bias_init=-5.0)
    cos = torch.tensor([0.8, 0.2])
    logits = [10 * 0.8 - 5, 10 * 0.2 - 5]
    expected = (-math.log(1 / (1 + math.exp(-logits[0]))) - math.log(1 - 1 / (1 + math.exp(-logits[1])))) / 2
    assert fn(torch.tensor([1.0, 0.0]), cosine=cos).item() == pytest.approx(expected, rel=1e-6)
    # a matrix input uses its diagonal
    assert fn(torch.tensor([1.0, 0.0]), cosine=torch.diag(cos)).item() == pytest.approx(expected, rel=1e-6)


def test_graded_soft_targets():
    fn = SupervisedLoss(scale_init=1.0, bias_init=0.0)
    loss = fn(torch.tensor([0.25]), cosine=torch.tensor([0.0]))
    assert loss.item() == pytest.approx(math.log(2))


def test_generative_hand_computed():
    logp = torch.log(torch.tensor([[0.2, 0.7], [0.6, 0.1]]))
    expected = -(math.log(0.7) + math.log(0.6)) / 2
    assert SupervisedLoss("generative")(torch.tensor([1.0, 0.0]), label_logprobs=logp).item() == pytest.approx(expected)


def test_both_is_the_sum_of_the_two_modes_hand_computed():
    cos, y = torch.tensor([0.8, 0.2]), torch.tensor([1.0, 0.0])
    logp = torch.log(torch.tensor([[0.2, 0.7], [0.6, 0.1]]))
    logits = [10 * 0.8 - 5, 10 * 0.2 - 5]
    representation = (math.log1p(math.exp(-logits[0])) + math.log1p(math.exp(logits[1]))) / 2
    generative = -(math.log(0.7) + math.log(0.6)) / 2
    both = SupervisedLoss("both")(y, cosine=cos, label_logprobs=logp)
    assert both.item() == pytest.approx(representation + generative, rel=1e-6)


@pytest.mark.parametrize("labels", [[1.0], [1.0, 1.0, 1.0], [0.0, 0.25, 1.0]],
                         ids=["one-pair", "all-positive", "graded"])
def test_both_gradcheck_float64(labels):
    fn = SupervisedLoss("both").double()
    y = torch.tensor(labels, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    cos = (torch.rand(len(labels), generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    logp = torch.log_softmax(torch.randn(len(labels), 2, generator=g, dtype=torch.float64), -1).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, lp: fn(y, cosine=c, label_logprobs=lp), (cos, logp))


@pytest.mark.parametrize("given,match", [({"cosine": torch.tensor([0.5])}, "label_logprobs"),
                                          ({"label_logprobs": torch.zeros(1, 2)}, "cosine")])
def test_both_needs_both_readings(given, match):
    with pytest.raises(ValueError, match=match):
        SupervisedLoss("both")(torch.tensor([1.0]), **given)


def test_scale_and_bias_are_learned():
    fn = SupervisedLoss()
    fn(torch.tensor([1.0]), cosine=torch.tensor([0.1])).backward()
    assert fn.scale.grad is not None and fn.bias.grad is not None


def test_composite_parts_and_weights():
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    t, y = torch.rand(4, 4, generator=g), torch.tensor([1.0, 0.0, 1.0, 1.0])
    full = FlipKDLoss(LossConfig(w_sup=1.0, w_dist=2.0, w_mcl=0.5))(z_a, z_b, t, y)
    assert set(full) == {"total", "sup", "dist", "mcl"}
    assert full["total"].item() == pytest.approx((full["sup"] + 2 * full["dist"] + 0.5 * full["mcl"]).item())
    ablated = FlipKDLoss(LossConfig(parts=("sup", "dist")))(z_a, z_b, t, y)
    assert set(ablated) == {"total", "sup", "dist"}


@pytest.mark.parametrize("kwargs,match", [({"parts": ("sup", "kd")}, "loss parts"), ({"parts": ()}, "loss parts"),
                                          ({"w_mcl": -1}, "w_mcl"), ({"delta_pos": 2}, "delta_pos"),
                                          ({"sup_mode": "x"}, "sup mode")])
def test_composite_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlipKDLoss(LossConfig(**kwargs))


def test_unlabelled_rows_stay_out_of_sup_but_reach_dist_and_mcl():
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    t, y = torch.rand(4, 4, generator=g), torch.tensor([1.0, 0.0, 1.0, 1.0])
    labelled = torch.tensor([True, True, False, False])
    fn = FlipKDLoss()
    mixed = fn(z_a, z_b, t, y, labelled=labelled)
    gold_only = fn(z_a[:2], z_b[:2], t[:2, :2], y[:2])
    assert mixed["sup"].item() == pytest.approx(gold_only["sup"].item(), rel=1e-6)
    assert mixed["dist"].item() == pytest.approx(fn(z_a, z_b, t, y)["dist"].item(), rel=1e-6)
    none = fn(z_a, z_b, t, y, labelled=torch.zeros(4, dtype=torch.bool))
    assert none["sup"].item() == 0.0
