import math
import warnings

import numpy as np
import pytest
import torch

from components.losses.mcl_loss import MarginAwareContrastiveLoss


def numpy_mcl(z_a, z_b, teacher, labels, keep, margin, tau, delta_neg, rule):
    """Independent reference: loops over anchors and negatives, one term at a time."""
    a = z_a / np.linalg.norm(z_a, axis=1, keepdims=True)
    b = z_b / np.linalg.norm(z_b, axis=1, keepdims=True)
    s = np.clip(a @ b.T, -1 + 1e-7, 1 - 1e-7)
    theta = np.arccos(s)
    losses = []
    for i in range(len(labels)):
        if labels[i] < 0.5 or (keep is not None and not keep[i]):
            continue
        if rule == "aware":
            pos = math.cos(min(theta[i, i] + margin * teacher[i, i], math.pi))
        elif rule == "fixed":
            pos = math.cos(min(theta[i, i] + margin, math.pi))
        else:
            pos = s[i, i]
        denom = math.exp(pos / tau)
        for j in range(len(labels)):
            if j == i or teacher[i, j] > delta_neg:
                continue
            neg = math.cos(max(theta[i, j] - margin * (1 - teacher[i, j]), 0.0)) if rule == "aware" else s[i, j]
            denom += math.exp(neg / tau)
        losses.append(-(pos / tau - math.log(denom)))
    return float(np.mean(losses)) if losses else 0.0


def test_hand_computed_two_pairs():
    # z_a = e1, e2; z_b = e1 rotated 0.5 rad, e2. t = [[0.8, 0.2], [0.3, 0.9]]; both positives.
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_b = torch.tensor([[math.cos(0.5), math.sin(0.5)], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[0.8, 0.2], [0.3, 0.9]], dtype=torch.float64)
    m, tau = 0.06, 0.05
    # anchor 0: theta_00 = 0.5, theta_01 = pi/2
    p0 = math.cos(0.5 + m * 0.8)
    n01 = math.cos(math.pi / 2 - m * 0.8)
    l0 = -p0 / tau + math.log(math.exp(p0 / tau) + math.exp(n01 / tau))
    # anchor 1: theta_11 ~ 0 (clamped), theta_10 = pi/2 - 0.5
    theta11 = math.acos(1 - 1e-7)
    p1 = math.cos(theta11 + m * 0.9)
    n10 = math.cos(math.pi / 2 - 0.5 - m * 0.7)
    l1 = -p1 / tau + math.log(math.exp(p1 / tau) + math.exp(n10 / tau))
    loss = MarginAwareContrastiveLoss(margin=m, temperature=tau)(z_a, z_b, t, torch.tensor([1, 1]))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-9)


MCL_CASES = [
    # (name, n, rule, labels, keep)
    ("aware_mixed", 6, "aware", [1, 0, 1, 1, 0, 1], None),
    ("aware_keep", 6, "aware", [1, 0, 1, 1, 0, 1], [True, True, False, True, True, True]),
    ("fixed", 5, "fixed", [1, 1, 0, 1, 0], None),
    ("none", 5, "none", [1, 1, 1, 0, 0], None),
    ("all_positive", 4, "aware", [1, 1, 1, 1], None),
    ("one_pair", 1, "aware", [1], None),
]


@pytest.mark.parametrize("name,n,rule,labels,keep", MCL_CASES, ids=[c[0] for c in MCL_CASES])
def test_matches_numpy_reference(name, n, rule, labels, keep):
    g = torch.Generator().manual_seed(n)
    z_a, z_b = torch.randn(n, 8, generator=g, dtype=torch.float64), torch.randn(n, 8, generator=g, dtype=torch.float64)
    teacher = torch.rand(n, n, generator=g, dtype=torch.float64)
    loss = MarginAwareContrastiveLoss(margin=0.06, temperature=0.05, delta_neg=0.5, margin_rule=rule)(
        z_a, z_b, teacher, torch.tensor(labels), None if keep is None else torch.tensor(keep))
    ref = numpy_mcl(z_a.numpy(), z_b.numpy(), teacher.numpy(), labels, keep, 0.06, 0.05, 0.5, rule)
    assert loss.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("rule", ["aware", "fixed", "none"])
def test_gradcheck_float64(rule):
    g = torch.Generator().manual_seed(3)
    z_a = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.rand(4, 4, generator=g, dtype=torch.float64)
    loss_fn = MarginAwareContrastiveLoss(margin_rule=rule, temperature=0.5)
    labels = torch.tensor([1, 0, 1, 1])
    assert torch.autograd.gradcheck(lambda a, b: loss_fn(a, b, teacher, labels), (z_a, z_b))


@pytest.mark.parametrize("labels,keep", [([0, 0, 0], None), ([1, 1, 0], [False, False, True])],
                         ids=["all_negative", "every_anchor_filtered"])
def test_no_anchor_gives_zero_with_warning(labels, keep):
    z = torch.randn(3, 4, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="no anchor"):
        loss = MarginAwareContrastiveLoss()(z, z.detach().clone(), torch.rand(3, 3), torch.tensor(labels),
                                            None if keep is None else torch.tensor(keep))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.all(z.grad == 0)


def test_false_negatives_leave_the_denominator():
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    low = torch.full((3, 3), 0.1)
    high = low.clone()
    high[0, 1] = 0.9  # b_1 is a probable false negative for anchor 0
    fn = MarginAwareContrastiveLoss()
    labels = torch.tensor([1, 0, 0])
    with_negative = fn(z_a, z_b, low, labels)
    without = fn(z_a, z_b, high, labels)
    assert without < with_negative


def test_confident_positive_gets_a_larger_margin():
    z = torch.nn.functional.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    fn = MarginAwareContrastiveLoss(margin=0.2, temperature=1.0)  # unsaturated
    t_conf, t_doubt = torch.full((3, 3), 0.1), torch.full((3, 3), 0.1)
    t_conf[0, 0], t_doubt[0, 0] = 0.95, 0.55
    labels = torch.tensor([1, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fn(z, z, t_conf, labels) > fn(z, z, t_doubt, labels)


@pytest.mark.parametrize("kwargs,match", [({"margin_rule": "cosface"}, "margin_rule"),
                                          ({"temperature": 0}, "temperature"), ({"margin": -0.1}, "margin")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MarginAwareContrastiveLoss(**kwargs)
