"""The export's paired decision gate and its engine choice, on plain numbers."""

import pytest

from pipelines._export_gates import Gates, choose_engine, engine_gate

BASE = {"tokenizer_mismatches": 0.0, "fp32_max_abs_diff": 2e-6, "torch_dev_ap": 0.70}


def int8(min_cosine=0.995, flipped=0, ap_delta=0.0, near_threshold=0):
    """``flipped`` decisions changed off the threshold, ``near_threshold`` more within the decision margin."""
    return {"int8_x_min_cosine": min_cosine, "int8_x_flipped_pairs": float(flipped + near_threshold),
            "int8_x_flipped_clear_pairs": float(flipped), "int8_x_dev_ap_delta": ap_delta,
            "int8_x_dev_ap": 0.70 + ap_delta}


@pytest.mark.parametrize(("pairs", "allowed"), [(84, 1), (99, 1), (100, 1), (250, 2), (1000, 10)])
def test_allowed_flips_is_one_percent_or_one_pair(pairs, allowed):
    assert Gates().allowed_flips(pairs) == allowed


# (id, metrics, dev pairs, expected failure keywords; empty: passes)
CASES = [
    ("close", int8(), 84, []),
    ("one_pair_on_the_threshold", int8(flipped=1), 84, []),
    ("two_pairs_of_84", int8(flipped=2), 84, ["2 of 84 dev pairs"]),
    ("two_pairs_of_250", int8(flipped=2), 250, []),
    ("five_on_the_threshold_one_off_it", int8(flipped=1, near_threshold=4), 134, []),
    ("two_off_the_threshold", int8(flipped=2, near_threshold=4), 134, ["2 of 134 dev pairs scored 0.01 or more"]),
    ("dynamic_every_matmul", int8(min_cosine=0.95, flipped=0), 84, ["min cosine 0.9500 < 0.99"]),
    ("ap_moved", int8(ap_delta=-0.02), 84, ["dev AP 0.6800 vs torch 0.7000"]),
    ("all_three", int8(min_cosine=0.9, flipped=5, ap_delta=0.05), 84, ["min cosine", "5 of 84", "dev AP"]),
]


@pytest.mark.parametrize("metrics,pairs,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_int8_gate(metrics, pairs, expected):
    failures = engine_gate({**BASE, **metrics}, "int8_x", Gates(), pairs)
    assert len(failures) == len(expected)
    for failure, keyword in zip(failures, expected, strict=True):
        assert keyword in failure and failure.startswith("int8_x")


def test_fp32_and_tokenizer_failures_apply_to_every_engine():
    broken = {**BASE, **int8(), "tokenizer_mismatches": 3.0, "fp32_max_abs_diff": 1e-2}
    for engine in ("fp32", "int8_x"):
        failures = engine_gate(broken, engine, Gates(), 84)
        assert any("tokenizer differs" in f for f in failures) and any("fp32 max abs diff" in f for f in failures)


# (id, --serve, failures per engine, texts/s, chosen)
CHOICES = [
    ("auto_fastest_passing", "auto", {"fp32": [], "a": [], "b": ["x"]}, {"fp32": 50, "a": 110}, "a"),
    ("auto_fp32_when_no_int8_passes", "auto", {"fp32": [], "a": ["x"], "b": ["y"]}, {"fp32": 50}, "fp32"),
    ("auto_nothing_passes", "auto", {"fp32": ["x"], "a": ["x"]}, {}, None),
    ("forced_passing", "a", {"fp32": [], "a": []}, {"fp32": 90, "a": 60}, "a"),
    ("forced_failing", "a", {"fp32": [], "a": ["x"]}, {"fp32": 90, "a": 60}, None),
]


@pytest.mark.parametrize("serve,failures,speeds,chosen", [c[1:] for c in CHOICES], ids=[c[0] for c in CHOICES])
def test_choose_engine(serve, failures, speeds, chosen):
    assert choose_engine(serve, failures, speeds) == chosen
