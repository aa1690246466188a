import numpy as np
import pytest
import torch

from components.losses.distill_loss import DistillationLoss

HEAD_SCALE, HEAD_BIAS = 6.0, -2.0


def head(cosine):
    return HEAD_SCALE * cosine + HEAD_BIAS


def numpy_distill(z_a, z_b, teacher, keep, mode, tau=0.05, tau_t=0.05, teacher_cosine=None):
    a = z_a / np.linalg.norm(z_a, axis=1, keepdims=True)
    b = z_b / np.linalg.norm(z_b, axis=1, keepdims=True)
    s = a @ b.T
    n = len(s)
    entries = [[i == j and (keep is None or keep[i]) or i != j for j in range(n)] for i in range(n)]
    if mode == "mse":
        vals = [((s[i, j] + 1) / 2 - teacher[i, j]) ** 2 for i in range(n) for j in range(n) if entries[i][j]]
        return float(np.mean(vals)) if vals else 0.0
    if mode == "cosine":
        vals = [(s[i, j] - teacher_cosine[i, j]) ** 2 for i in range(n) for j in range(n) if entries[i][j]]
        return float(np.mean(vals)) if vals else 0.0
    if mode == "prob":  # Bernoulli KL(T || sigmoid(HEAD_SCALE * s + HEAD_BIAS))
        vals = []
        for i in range(n):
            for j in range(n):
                if entries[i][j]:
                    p, t = 1 / (1 + np.exp(-(HEAD_SCALE * s[i, j] + HEAD_BIAS))), teacher[i, j]
                    vals.append(t * np.log(t / p) + (1 - t) * np.log((1 - t) / (1 - p)))
        return float(np.mean(vals)) if vals else 0.0
    if mode == "rank":  # log(1 + sum over entry pairs the teacher orders of (T_p - T_q) exp((S_q - S_p) / tau))
        kept = [(i, j) for i in range(n) for j in range(n) if entries[i][j]]
        total = 1.0 + sum((teacher[p] - teacher[q]) * np.exp((s[q] - s[p]) / tau)
                          for p in kept for q in kept if teacher[p] > teacher[q])
        return float(np.log(total))
    rows = []
    for i in range(n):
        cols = [j for j in range(n) if entries[i][j]]
        if not cols:
            continue
        ps = np.exp(s[i, cols] / tau) / np.exp(s[i, cols] / tau).sum()
        pt = np.exp(teacher[i, cols] / tau_t) / np.exp(teacher[i, cols] / tau_t).sum()
        rows.append(float((pt * (np.log(pt) - np.log(ps))).sum()))
    return float(np.mean(rows)) if rows else 0.0


def test_mse_hand_computed():
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_b = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    # S = [[1, 1], [0, 0]] -> (S+1)/2 = [[1, 1], [0.5, 0.5]]
    t = torch.tensor([[0.8, 0.4], [0.5, 0.1]], dtype=torch.float64)
    expected = ((1 - 0.8) ** 2 + (1 - 0.4) ** 2 + 0 + (0.5 - 0.1) ** 2) / 4
    assert DistillationLoss()(z_a, z_b, t).item() == pytest.approx(expected)
    # drop pair 1: its diagonal entry leaves the mean
    expected_kept = ((1 - 0.8) ** 2 + (1 - 0.4) ** 2 + 0) / 3
    assert DistillationLoss()(z_a, z_b, t, torch.tensor([True, False])).item() == pytest.approx(expected_kept)


DISTILL_CASES = [
    ("mse_all", "mse", 5, None),
    ("mse_keep", "mse", 5, [True, False, True, False, True]),
    ("kl_all", "kl", 5, None),
    ("kl_keep", "kl", 4, [False, True, True, False]),
    ("mse_one_pair", "mse", 1, None),
    ("kl_one_pair", "kl", 1, None),
    ("prob_all", "prob", 5, None),
    ("prob_keep", "prob", 4, [False, True, True, False]),
    ("prob_one_pair", "prob", 1, None),
    ("rank_all", "rank", 5, None),
    ("rank_keep", "rank", 4, [False, True, True, False]),
    ("rank_one_pair", "rank", 1, None),
    ("cosine_all", "cosine", 5, None),
    ("cosine_keep", "cosine", 4, [False, True, True, False]),
    ("cosine_one_pair", "cosine", 1, None),
]


@pytest.mark.parametrize("name,mode,n,keep", DISTILL_CASES, ids=[c[0] for c in DISTILL_CASES])
def test_matches_numpy_reference(name, mode, n, keep):
    g = torch.Generator().manual_seed(n)
    z_a, z_b = torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randn(n, 6, generator=g, dtype=torch.float64)
    t = torch.rand(n, n, generator=g, dtype=torch.float64)
    c = torch.rand(n, n, generator=g, dtype=torch.float64) * 2 - 1  # teacher cosines, read by ``cosine`` only
    loss = DistillationLoss(mode)(z_a, z_b, t, None if keep is None else torch.tensor(keep), head, c)
    expected = numpy_distill(z_a.numpy(), z_b.numpy(), t.numpy(), keep, mode, teacher_cosine=c.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mode", ["mse", "kl", "prob", "rank", "cosine"])
def test_gradcheck_float64(mode):
    g = torch.Generator().manual_seed(2)
    z_a = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.rand(4, 4, generator=g, dtype=torch.float64)
    keep = torch.tensor([True, False, True, True])
    fn = DistillationLoss(mode, temperature=0.5, teacher_temperature=0.5)
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, t, keep, head, 2 * t - 1), (z_a, z_b))


def test_every_pair_filtered_out_gives_zero_with_warning():
    z = torch.randn(1, 4, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="filtered out"):
        loss = DistillationLoss()(z, z.detach(), torch.rand(1, 1), torch.tensor([False]))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()


def test_bad_mode():
    with pytest.raises(ValueError, match="distill mode"):
        DistillationLoss("l1")


def test_prob_hand_computed_and_zero_when_the_student_agrees():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # S = identity
    # head(1) = 4 -> p = sigmoid(4); head(0) = -2 -> p = sigmoid(-2)
    p_on, p_off = 1 / (1 + np.exp(-4.0)), 1 / (1 + np.exp(2.0))
    t = torch.tensor([[p_on, p_off], [p_off, 0.5]], dtype=torch.float64)
    expected = (0.0 + 0.0 + 0.0 + (0.5 * np.log(0.5 / p_on) + 0.5 * np.log(0.5 / (1 - p_on)))) / 4
    assert DistillationLoss("prob")(z, z, t, head=head).item() == pytest.approx(expected, rel=1e-9)
    t[1, 1] = p_on
    assert DistillationLoss("prob")(z, z, t, head=head).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="needs the calibration head"):
        DistillationLoss("prob")(z, z, t)


def test_prob_trains_the_head_through_the_composite():
    from components.losses.composite_loss import FlipKDLoss, LossConfig

    loss = FlipKDLoss(LossConfig(parts=("dist",), distill_mode="prob"))
    g = torch.Generator().manual_seed(0)
    out = loss(torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.rand(4, 4, generator=g),
               torch.tensor([1.0, 0, 1, 0]))
    out["total"].backward()
    assert loss.sup.scale.grad is not None and loss.sup.scale.grad != 0


def test_rank_hand_computed():
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_b = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    # S = [[1, 1], [0, 0]]; teacher order 0.8 > 0.5 > 0.4 > 0.1 over entries (0,0), (1,0), (0,1), (1,1)
    t = torch.tensor([[0.8, 0.4], [0.5, 0.1]], dtype=torch.float64)
    tau = 0.5
    # couples (p above q): teacher gap x exp(student gap / tau), student gap = S_q - S_p
    couples = [(0.3, -1.0), (0.4, 0.0), (0.7, -1.0), (0.1, 1.0), (0.4, 0.0), (0.3, -1.0)]
    expected = np.log(1 + sum(w * np.exp(g / tau) for w, g in couples))
    assert DistillationLoss("rank", temperature=tau)(z_a, z_b, t).item() == pytest.approx(expected, rel=1e-12)


def test_rank_is_zero_without_an_order_and_falls_when_the_student_agrees():
    z = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=-1).requires_grad_()
    flat = DistillationLoss("rank")(z, z.detach(), torch.full((3, 3), 0.3, dtype=torch.float64))
    assert flat.item() == 0.0
    flat.backward()
    assert torch.all(z.grad == 0)
    eye = torch.eye(3, dtype=torch.float64)
    teacher = 0.1 + 0.8 * eye  # matches on the diagonal only
    agree = DistillationLoss("rank")(eye, eye, teacher)  # S = I: every diagonal entry above every other
    disagree = DistillationLoss("rank")(eye, eye[[1, 2, 0]], teacher)  # diagonal cosines 0, off-diagonal ones 1
    assert agree.item() < 1e-6 < 1.0 < disagree.item()


def test_cosine_hand_computed_and_reachable_where_mse_is_not():
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_b = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    # S = [[1, 1], [0, 0]]
    c = torch.tensor([[0.9, 0.2], [0.1, -0.3]], dtype=torch.float64)
    t = torch.rand(2, 2, dtype=torch.float64)  # calibrated scores: not read in this mode
    expected = ((1 - 0.9) ** 2 + (1 - 0.2) ** 2 + (0 - 0.1) ** 2 + (0 + 0.3) ** 2) / 4
    assert DistillationLoss("cosine")(z_a, z_b, t, teacher_cosine=c).item() == pytest.approx(expected, rel=1e-12)
    expected_kept = ((1 - 0.9) ** 2 + (1 - 0.2) ** 2 + (0 - 0.1) ** 2) / 3
    kept = DistillationLoss("cosine")(z_a, z_b, t, torch.tensor([True, False]), teacher_cosine=c)
    assert kept.item() == pytest.approx(expected_kept, rel=1e-12)
    # four orthonormal pairs the teacher calls unrelated (cosine 0, score ~0): ``cosine`` is met exactly, ``mse``
    # asks for off-diagonal cosines of -1 and stays above 0
    eye = torch.eye(4, dtype=torch.float64)
    assert DistillationLoss("cosine")(eye, eye, torch.zeros(4, 4), teacher_cosine=eye).item() == 0.0
    assert DistillationLoss("mse")(eye, eye, eye).item() > 0.1
    with pytest.raises(ValueError, match="raw cosine matrix"):
        DistillationLoss("cosine")(z_a, z_b, t)
