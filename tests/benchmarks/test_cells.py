import json

import pytest

from benchmarks._cells import Budget, CellStore, PausedCell, cell_key, parse_budget


@pytest.mark.parametrize("text,seconds", [("150m", 9000), ("2h", 7200), ("2h30m", 9000), ("90s", 90), ("45", 2700),
                                          ("1.5h", 5400)])
def test_budgets(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "h"])
def test_bad_budgets(text):
    with pytest.raises(ValueError, match="a budget such as"):
        parse_budget(text)


def test_cells_are_stored_at_once_and_read_back(tmp_path):
    path = tmp_path / "cells.json"
    store = CellStore(path)
    key = cell_key("banking77", "flip", 1, "abc")
    assert key == "banking77/flip/seed1/abc" and key not in store
    store.put(key, {"dev_ap": 0.7})
    assert json.loads(path.read_text())["cells"][key] == {"dev_ap": 0.7}  # on disk before anything else runs
    again = CellStore(path)
    assert key in again and again.get(key) == {"dev_ap": 0.7}
    assert not list(tmp_path.glob(".*.tmp"))
    again.put(cell_key("banking77", "flip", 2, "abc"), {"scores": {"dev": [0.1, 0.2]}})
    assert len(path.read_text().splitlines()) == 4  # one line per cell between the braces
    assert CellStore(path).cells == again.cells


def test_a_sharded_store_keeps_one_file_per_dataset_variant_and_setting(tmp_path):
    store = CellStore(tmp_path / "cells", shard=True)
    store.put(cell_key("banking77", "flip", 0, "abc"), {"dev_ap": 0.7})
    store.put(cell_key("stsbenchmark", "flip", 0, "abc"), {"dev_ap": 0.5})
    store.put(cell_key("banking77", "sup", 0, "abc"), {"dev_ap": 0.6})
    store.put(cell_key("banking77", "flip", 1, "abc"), {"dev_ap": 0.8})
    store.put(cell_key("banking77", "flip", 0, "def"), {"dev_ap": 0.9})
    files = {str(p.relative_to(tmp_path / "cells")): json.loads(p.read_text())["cells"]
             for p in (tmp_path / "cells").glob("*/*.json")}
    assert files == {"banking77/flip-abc.json": {"banking77/flip/seed0/abc": {"dev_ap": 0.7},
                                                 "banking77/flip/seed1/abc": {"dev_ap": 0.8}},
                     "banking77/flip-def.json": {"banking77/flip/seed0/def": {"dev_ap": 0.9}},
                     "banking77/sup-abc.json": {"banking77/sup/seed0/abc": {"dev_ap": 0.6}},
                     "stsbenchmark/flip-abc.json": {"stsbenchmark/flip/seed0/abc": {"dev_ap": 0.5}}}
    assert CellStore(tmp_path / "cells", shard=True).cells == store.cells


def test_budget_allows_what_fits():
    assert Budget(None).allows(1e9)
    clock = Budget(60)
    assert clock.allows(30) and not clock.allows(61)


def test_stability_summary_and_render():
    from benchmarks._real_size import deciles
    from benchmarks.stability import render, summarise

    assert deciles(list(range(20))) == [0.5 + 2 * i for i in range(10)]
    cells = []
    for variant, ap in (("flip", 0.8), ("sup", 0.7)):
        for seed in (0, 1):
            cells.append({"dataset": "d", "variant": variant, "seed": seed, "labels": ["defaults"],
                          "dev_ap": ap + seed / 10, "dev_f1": 0.5, "dev_roc_auc": 0.6, "guard_warnings": seed,
                          "settings_brief": "lr 1",
                          "steps": 200, "teacher_dev_ap": 0.75,
                          "curves": {"loss/mcl": [1.0] * 10, "grad_norm": [float(seed)] * 10}})
    summary = summarise(cells)["defaults"]["d"]
    assert summary["flip_dev_ap"] == pytest.approx(0.85) and summary["sup_dev_ap"] == pytest.approx(0.75)
    assert summary["flip_dev_ap_std"] == pytest.approx(0.0707, abs=1e-4) and summary["guard_warnings"] == 2
    assert summary["flip_curves"]["grad_norm"] == [0.5] * 10 and summary["flip_seeds"] == [0, 1]
    text = render(summarise(cells), {"d": {"train": 1600, "dev": 600}}, "python -m benchmarks.stability")
    assert "| d | 0.500 ± 0.000 | 0.850 ± 0.071 | 0.500 ± 0.000 | 0.750 ± 0.071 | 0.750 | 2 |" in text
    assert "| d | loss/mcl | 1 | 1 |" in text and "d 1600/600" in text


def test_sup_cells_are_shared_by_trials_that_change_only_the_teacher_terms():
    from benchmarks.stability import make_settings

    plain = make_settings("a", "defaults", (), 200, "auto")
    warmer = make_settings("b", "defaults", ("temperature=0.1", "teacher_warmup_ratio=0.3", "w_dist=2"), 200, "auto")
    faster = make_settings("c", "defaults", ("train.learning_rate=3e-4",), 200, "auto")
    assert plain.hash("sup") == warmer.hash("sup") and plain.hash("flip") != warmer.hash("flip")
    assert plain.hash("sup") != faster.hash("sup")  # the learning rate moves L_sup alone too


def test_the_before_preset_pins_the_old_settings():
    from benchmarks.stability import make_settings

    before = make_settings("before", "before", (), 200, "auto")
    assert (before.train.learning_rate, before.train.clip_mode, before.loss.w_dist) == (1e-3, "value", 1.0)


def test_a_paused_cell_adds_up_its_sittings_and_reads_back(tmp_path):
    folder = tmp_path / "checkpoints" / "cell"
    assert PausedCell(folder).run_id is None and PausedCell(folder).seconds == 0.0  # never paused: nothing
    first = PausedCell(folder)
    first.pause("run-a", 25, 100.0, 1)
    again = PausedCell(folder)
    again.pause("run-a", 50, 40.5, 0)
    back = PausedCell(folder)
    assert (back.run_id, back.seconds, back.paused_at, back.guard_warnings) == ("run-a", 140.5, [25, 50], 1)
    assert [p.name for p in folder.iterdir()] == ["cell.json"]  # written atomically: no temporary file left


def test_a_budget_has_a_deadline_only_when_given():
    assert Budget(None).deadline() is None
    budget = Budget(90.0)
    assert budget.deadline() == pytest.approx(budget.started + 90.0)
