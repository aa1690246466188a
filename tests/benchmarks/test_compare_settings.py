import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from benchmarks import compare_settings
from benchmarks._cells import CellStore
from benchmarks.compare_settings import SettingNotStored, compare, seed_scores
from components.metrics import average_precision

RNG = np.random.default_rng(0)
DEV_Y, TEST_Y = RNG.random(300) < 0.4, RNG.random(200) < 0.4


def noisy(labels: np.ndarray, noise: float, seed: int) -> list[float]:
    return (labels + noise * np.random.default_rng(seed).standard_normal(len(labels))).tolist()


def store_with(tmp_path) -> CellStore:
    store = CellStore(tmp_path / "cells", shard=True)
    for seed in (0, 1, 2):  # a sharp setting with three seeds, a blurred one with two
        store.put(f"d/flip_best/seed{seed}/aaa", {"scores": {"dev": noisy(DEV_Y, 0.5, seed),
                                                             "test": noisy(TEST_Y, 0.5, 10 + seed)}})
    for seed in (0, 1):
        store.put(f"d/flip_best/seed{seed}/bbb", {"scores": {"dev": noisy(DEV_Y, 3.0, seed),
                                                             "test": noisy(TEST_Y, 3.0, 10 + seed)}})
    store.put("e/flip_best/seed0/bbb", {"scores": {"dev": [0.0], "test": [0.0]}})  # another dataset: never read
    return store


def test_seed_scores_average_the_named_settings_seeds_on_its_dataset_only(tmp_path):
    store = store_with(tmp_path)
    dev, test, seeds = seed_scores(store, "d", "flip_best-bbb")
    assert seeds == [0, 1]
    np.testing.assert_allclose(dev, (np.array(noisy(DEV_Y, 3.0, 0)) + noisy(DEV_Y, 3.0, 1)) / 2)
    np.testing.assert_allclose(test, (np.array(noisy(TEST_Y, 3.0, 10)) + noisy(TEST_Y, 3.0, 11)) / 2)
    dev, _, seeds = seed_scores(store, "d", "flip_best-aaa", {1})
    assert seeds == [1] and np.allclose(dev, noisy(DEV_Y, 0.5, 1))


@pytest.mark.parametrize("setting, seeds, names", [
    ("flip_best-ccc", None, "flip_best-aaa, flip_best-bbb"),   # unknown hash: the stored ones are listed
    ("sup_only-aaa", None, "flip_best-aaa"),                     # the hash of another variant
    ("flip_best-bbb", {2}, "at seeds [2]"),                      # stored, but not at these seeds
])
def test_a_setting_not_stored_is_one_clear_error(tmp_path, setting, seeds, names):
    with pytest.raises(SettingNotStored, match=f"no stored cell of '{setting}' on 'd'.*{re.escape(names)}"):
        seed_scores(store_with(tmp_path), "d", setting, seeds)


def test_compare_reads_the_sharper_setting_as_better_and_a_setting_against_itself_as_no_gap(tmp_path):
    store = store_with(tmp_path)
    sharp, blurred = seed_scores(store, "d", "flip_best-aaa")[:2], seed_scores(store, "d", "flip_best-bbb")[:2]
    result = compare(DEV_Y, TEST_Y, sharp, blurred)
    assert result["first"]["dev_ap"] > result["second"]["dev_ap"]
    for ci in ("dev_ap_ci", "ap_ci", "f1_ci"):
        assert 0 < result[ci][0] < result[ci][1], ci
    same = compare(DEV_Y, TEST_Y, sharp, sharp)
    assert all(same[ci] == (0.0, 0.0) for ci in ("dev_ap_ci", "ap_ci", "f1_ci"))


def run_cli(tmp_path, monkeypatch, *args: str, dev_y: np.ndarray = DEV_Y):
    """The command on cells stored under a real dataset's name, its pairs' labels stubbed (no data is read)."""
    store = CellStore(tmp_path / "cells", shard=True)
    for key, cell in store_with(tmp_path / "made").cells.items():
        store.put(key.replace("d/", "stsbenchmark/", 1), cell)
    splits = {"dev": pd.DataFrame({"match": dev_y}), "test": pd.DataFrame({"match": TEST_Y})}
    monkeypatch.setattr("benchmarks._real_size.build_real", lambda *a, **k: splits)
    return CliRunner().invoke(compare_settings.cli, ["--dataset", "stsbenchmark", "--cells", str(tmp_path / "cells"),
                                                     *args])


def test_the_command_prints_each_comparison_on_the_first_settings_seeds_when_asked(tmp_path, monkeypatch):
    result = run_cli(tmp_path, monkeypatch, "--setting", "flip_best-bbb", "--against", "flip_best-aaa",
                     "--same-seeds")
    assert result.exit_code == 0, result.output
    assert "stsbenchmark flip_best-bbb (seeds 0,1, scores averaged)" in result.output
    line = next(x for x in result.output.splitlines() if x.startswith("vs flip_best-aaa"))
    assert line.startswith("vs flip_best-aaa (seeds 0,1): dev AP ")
    low, high = (float(x) for x in line.split("dev AP ")[1].split("[")[1].split("]")[0].split(","))
    assert low < high < 0  # the blurred setting minus the sharp one


def test_the_command_refuses_unknown_settings_and_cells_of_other_data(tmp_path, monkeypatch):
    result = run_cli(tmp_path / "a", monkeypatch, "--setting", "flip_best-zzz", "--against", "flip_best-aaa")
    assert result.exit_code == 1 and "no stored cell of 'flip_best-zzz'" in result.output
    # the data now has one dev pair fewer than the cells were scored on
    result = run_cli(tmp_path / "b", monkeypatch, "--setting", "flip_best-aaa", "--against", "flip_best-bbb",
                     dev_y=DEV_Y[:-1])
    assert result.exit_code == 1 and "300 dev / 200 test scores, the data 299 / 200 pairs" in result.output


@pytest.mark.parametrize("args, first_seeds, second_seeds", [
    (["--seeds", "1,"], [1], [1]),                        # every student setting read on the named seeds only
    (["--seeds", "2"], [0, 1], [0, 1]),                   # a count, as the headline's --seeds: seeds 0..N-1
    (["--seeds", "0,2"], [0, 2], [0]),                    # a setting without seed 2 reads the named seeds it has
    (["--seeds", "1", "--same-seeds"], [0], [0]),         # --same-seeds follows the seeds read under --seeds
    ([], [0, 1, 2], [0, 1]),                              # without --seeds every stored seed: the earlier behaviour
])
def test_seeds_restricts_what_each_setting_reads(tmp_path, monkeypatch, args, first_seeds, second_seeds):
    result = run_cli(tmp_path, monkeypatch, "--setting", "flip_best-aaa", "--against", "flip_best-bbb", *args)
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()[:2]
    assert first.startswith(f"stsbenchmark flip_best-aaa (seeds {','.join(map(str, first_seeds))}, scores averaged)")
    assert second.startswith(f"vs flip_best-bbb (seeds {','.join(map(str, second_seeds))}): dev AP ")
    made = CellStore(tmp_path / "made" / "cells", shard=True)
    own = average_precision(seed_scores(made, "d", "flip_best-aaa", set(first_seeds))[0], DEV_Y)
    other = average_precision(seed_scores(made, "d", "flip_best-bbb", set(second_seeds))[0], DEV_Y)
    assert f"dev AP {own:.3f}," in first and f"dev AP {own:.3f} vs {other:.3f} [" in second


@pytest.mark.parametrize("value, message", [
    ("5,", "no stored cell of 'flip_best-aaa' on 'stsbenchmark' at seeds [5]"),
    ("x", "a count N >= 1 (seeds 0..N-1) or a comma list of seeds; got 'x'"),
    ("-1,", "a count N >= 1"),
    ("0", "a count N >= 1"),
])
def test_seeds_that_are_not_stored_or_not_seeds_are_refused(tmp_path, monkeypatch, value, message):
    result = run_cli(tmp_path, monkeypatch, "--setting", "flip_best-aaa", "--against", "flip_best-bbb",
                     "--seeds", value)
    assert result.exit_code != 0 and message in result.output, result.output
