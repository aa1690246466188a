import numpy as np
import pytest

from components.training.divergence_guard import DivergenceGuard, collapse


def feed(guard: DivergenceGuard, values, name="loss/mcl") -> list[tuple[int, str]]:
    said = []
    for step, value in enumerate(values, start=1):
        said += [(step, m) for m in guard.observe(step, {name: float(value), "lr": 1e-3, "loss/total": 99.0})]
    return said


def test_a_noisy_but_stable_run_says_nothing():
    rng = np.random.default_rng(0)
    values = 1.0 + 0.3 * rng.standard_normal(300).clip(-2, 2)  # +-60% step to step, no trend
    assert feed(DivergenceGuard(), values) == []


def test_the_reported_divergence_is_named_by_its_step_once():
    """loss/mcl of the issue's run, per 12-step block: 1.09, 0.57, 0.68, 1.80, 3.90, 3.35, 2.17, 1.78."""
    blocks = [1.09, 0.57, 0.68, 1.80, 3.90, 3.35, 2.17, 1.78]
    values = np.repeat(blocks, 12)
    said = feed(DivergenceGuard(), values)
    assert len(said) == 1
    step, message = said[0]
    assert 37 <= step <= 60 and message.startswith(f"step {step}: loss/mcl jumped")
    noisy = values * np.random.default_rng(0).lognormal(0, 1, len(values))  # the same, per batch heavy-tailed
    assert 37 <= feed(DivergenceGuard(), noisy)[0][0] <= 60


def test_heavy_tailed_but_stationary_batches_are_not_a_divergence():
    """L_MCL per batch on real data: mostly near 0.01, one batch in ten at 1-4 (a hard negative)."""
    rng = np.random.default_rng(1)
    values = np.where(rng.random(300) < 0.1, rng.uniform(1, 4, 300), rng.uniform(0.001, 0.1, 300))
    values[:20] = 1.0  # the start level
    assert feed(DivergenceGuard(), values) == []


def test_grad_norm_is_watched_and_lr_and_total_are_not():
    values = [8.0] * 40 + [60.0] * 10
    said = feed(DivergenceGuard(), values, name="grad_norm")
    assert len(said) == 1 and "grad_norm" in said[0][1]
    assert feed(DivergenceGuard(), values, name="lr") == []


def test_tiny_levels_stay_quiet_and_a_recovered_series_can_warn_again():
    assert feed(DivergenceGuard(), [0.001] * 40 + [0.01] * 20) == []  # 10x, but below the floor
    values = [1.0] * 40 + [5.0] * 10 + [1.0] * 60 + [6.0] * 10
    assert len(feed(DivergenceGuard(), values)) == 2


def test_a_converged_loss_bumping_near_zero_is_not_a_divergence():
    """loss/mcl of a real run (MEDIQA, 1,524 pairs, lr 1e-3): ~1 at the start, 0.012 by step 250, then 0.06-0.09."""
    values = [1.0] * 20 + list(np.linspace(1.0, 0.012, 200)) + [0.012] * 30 + [0.08] * 10
    assert feed(DivergenceGuard(), values) == []
    assert len(feed(DivergenceGuard(start_share=0.0), values)) == 1  # without the start level it would warn


def test_nothing_warns_during_warmup():
    assert feed(DivergenceGuard(warmup=30), [1.0] * 10 + [9.0] * 15) == []


@pytest.mark.parametrize("scores,threshold,expected", [
    (np.linspace(0.985, 1.0, 50), None, "every pair looks alike"),
    (np.full(20, 0.4) + np.linspace(0, 1e-5, 20), None, "hardly vary"),
    (np.linspace(-0.5, 0.9, 50), -0.5, "every pair a match"),
    (np.linspace(-0.5, 0.9, 50), 0.95, "no pair a match"),
    (np.linspace(-0.5, 0.9, 50), 0.3, None),
])
def test_collapse(scores, threshold, expected):
    found = collapse(scores, threshold)
    assert (found is None) if expected is None else (expected in found)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="factor must be > 1"):
        DivergenceGuard(factor=1.0)
