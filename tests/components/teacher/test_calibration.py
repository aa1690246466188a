import json

import numpy as np
import pytest

from components.teacher.calibration import PlattCalibrator


def synthetic(a: float, b: float, n: int = 20000, seed: int = 0):
    rng = np.random.default_rng(seed)
    cosine = rng.uniform(-1, 1, n)
    probability = 1 / (1 + np.exp(-(a * cosine + b)))
    return cosine, (rng.uniform(size=n) < probability).astype(float), probability


@pytest.mark.parametrize("a, b", [(8.0, -2.0), (3.0, 0.5), (-4.0, 1.0)])
@pytest.mark.parametrize("smoothing", [False, True])
def test_fit_recovers_known_parameters(a, b, smoothing):
    cosine, labels, _ = synthetic(a, b)
    fitted = PlattCalibrator.fit(cosine, labels, smoothing=smoothing)
    assert fitted.a == pytest.approx(a, abs=0.25 + 0.05 * abs(a))
    assert fitted.b == pytest.approx(b, abs=0.12)


def test_soft_labels_equal_to_the_model_are_fitted_exactly():
    cosine, _, probability = synthetic(6.0, -1.5, n=500)
    fitted = PlattCalibrator.fit(cosine, probability, smoothing=False, l2=0.0)
    assert fitted.a == pytest.approx(6.0, abs=1e-5)
    assert fitted.b == pytest.approx(-1.5, abs=1e-5)


def test_separable_data_gives_a_finite_fit():
    cosine = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    fitted = PlattCalibrator.fit(cosine, labels)
    assert np.isfinite([fitted.a, fitted.b]).all() and fitted.a > 0
    assert (fitted(cosine[3:]) > 0.5).all() and (fitted(cosine[:3]) < 0.5).all()


def test_constant_labels_and_constant_cosine_do_not_break():
    assert np.isfinite(PlattCalibrator.fit(np.linspace(0, 1, 10), np.ones(10)).b)
    flat = PlattCalibrator.fit(np.full(10, 0.3), np.array([0, 1] * 5))
    assert flat(np.array([0.3]))[0] == pytest.approx(0.5, abs=1e-6)


def test_call_keeps_the_shape_and_stays_in_0_1():
    calibrator = PlattCalibrator(a=50.0, b=-10.0)
    matrix = np.random.default_rng(0).uniform(-1, 1, (4, 5)).astype(np.float32)
    scores = calibrator(matrix)
    assert scores.shape == (4, 5)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert calibrator(np.array([1e6, -1e6])).tolist() == [1.0, 0.0]
    assert PlattCalibrator()(0.0) == pytest.approx(0.5)


def test_json_round_trip_is_atomic(tmp_path):
    path = tmp_path / "sub" / "calibration.json"
    original = PlattCalibrator(a=7.25, b=-3.5)
    original.to_json(path)
    assert PlattCalibrator.from_json(path) == original
    data = json.loads(path.read_text())
    assert data["kind"] == "platt" and data["a"] == 7.25
    assert [p.name for p in path.parent.iterdir()] == ["calibration.json"]


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="same size"):
        PlattCalibrator.fit(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PlattCalibrator.fit(np.zeros(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="finite"):
        PlattCalibrator.fit(np.array([0.0, np.nan]), np.array([0, 1]))
    (tmp_path / "other.json").write_text('{"kind": "isotonic", "a": 1, "b": 0}')
    with pytest.raises(ValueError, match="not a Platt calibration"):
        PlattCalibrator.from_json(tmp_path / "other.json")
