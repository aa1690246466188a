import click
import numpy as np
import pytest

from benchmarks import headline
from benchmarks._cells import CellStore
from benchmarks.headline import (
    Settings,
    _resamples,
    chosen_teacher,
    f1_at,
    headline_json,
    paired_bootstrap_ap,
    paired_bootstrap_f1,
    plan,
    render,
    resampled_ap,
    summarise,
)
from components.losses.composite_loss import LossConfig
from components.metrics import average_precision
from components.student.lora_encoder import EncoderConfig
from components.training.trainer import TrainConfig


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    labels = rng.random(400) < 0.5
    same = rng.random(400) < 0.5
    assert paired_bootstrap_f1(labels, same, same) == (0.0, 0.0)
    good = np.where(rng.random(400) < 0.9, labels, ~labels)  # right 90% of the time
    poor = np.where(rng.random(400) < 0.6, labels, ~labels)
    low, high = paired_bootstrap_f1(labels, good, poor)
    assert 0 < low < high
    low, high = paired_bootstrap_f1(labels, poor, good)
    assert low < high < 0


def test_paired_bootstrap_ap_interval_reads_the_ranking_and_ignores_any_threshold():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.4
    sharp = labels + 0.8 * rng.standard_normal(300)
    blurred = labels + 3.0 * rng.standard_normal(300)
    assert paired_bootstrap_ap(labels, sharp, sharp) == (0.0, 0.0)
    assert paired_bootstrap_ap(labels, sharp, 10 * sharp - 4) == (0.0, 0.0)  # a monotone map keeps the ranking
    low, high = paired_bootstrap_ap(labels, sharp, blurred)
    assert 0 < low < high
    low, high = paired_bootstrap_ap(labels, blurred, sharp)
    assert low < high < 0


@pytest.mark.parametrize("distinct", [300, 7, 1])  # all scores apart, many ties, one score for every pair
def test_resampled_ap_is_scikit_learns_average_precision_on_each_resample(distinct):
    rng = np.random.default_rng(2)
    labels = rng.random(300) < 0.3
    scores = np.round(labels + rng.standard_normal(300), 6) if distinct == 300 else rng.integers(0, distinct, 300) / 3
    index = np.vstack([_resamples(300, 20, 0), np.full((1, 300), np.flatnonzero(~labels)[0])])
    got = resampled_ap(scores, labels, index)
    want = [average_precision(scores[i], labels[i]) for i in index]
    assert np.isnan(got[-1]) and np.isnan(want[-1])  # a resample of negatives only
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-12)


def fake_store(tmp_path, with_students: bool) -> tuple[CellStore, Settings, dict]:
    rng = np.random.default_rng(1)
    labels = {"dev": rng.random(60) < 0.5, "test": rng.random(80) < 0.5}
    settings = Settings(EncoderConfig(), LossConfig(), TrainConfig(), ())
    store = CellStore(tmp_path / "cells.json")

    def scores(noise: float) -> dict[str, list[float]]:
        return {k: (v + noise * rng.standard_normal(len(v))).tolist() for k, v in labels.items()}

    for _, variant, _, key in plan(["d"], settings, (0, 1), {}):
        if variant.startswith("teacher"):
            noise = {"teacher_base": 1.0, "teacher_ft_e1": 0.8, "teacher_ft_e2": 0.5, "teacher_ft_e4": 0.7}[variant]
            cell = {"scores": scores(noise), "folder": variant}
            cell["dev_ap"] = 1.0 - noise  # e2 is the best on dev
            store.put(key, cell)
    epochs, _ = chosen_teacher(store, "d", settings.teacher)
    if with_students:
        for _, variant, seed, key in plan(["d"], settings, (0, 1), {"d": epochs}):
            if not variant.startswith("teacher") and not (variant == "flip_full" and seed == 1):
                store.put(key, {"scores": scores(0.3 if variant == "flip_full" else 0.6), "brief": variant,
                                "guard_warnings": 0, "seconds": 10.0, "run_id": "r"})
    return store, settings, labels


def test_summary_chooses_the_teacher_on_dev_and_names_missing_cells(tmp_path):
    store, settings, labels = fake_store(tmp_path, with_students=True)
    summary = summarise(store, ["d"], settings, (0, 1), {"d": labels})["d"]
    assert summary["teacher_epochs"] == 2
    assert summary["missing"] == ["flip_full/seed1"]
    assert summary["rows"]["sup_only"]["seeds"] == 2 and summary["rows"]["flip_full"]["seeds"] == 1
    assert set(summary["cis"]) == set(summary["ap_cis"]) == {"teacher_finetuned", "sup_only"}
    assert "mix" in summary["rows"]
    text = render({"d": summary}, "python -m benchmarks.headline")
    assert "missing cells: flip_full/seed1" in text and "| `teacher_finetuned` |" in text
    data = headline_json({"d": summary}, settings, "cmd")["d"]
    assert data["flip_variant"] == "flip_full" and len(data["flip_minus_teacher_ci"]) == 2
    assert len(data["flip_minus_teacher_ap_ci"]) == len(data["flip_minus_sup_ap_ci"]) == 2
    assert data["teacher_finetuned_f1"] == pytest.approx(summary["rows"]["teacher_finetuned"]["f1"])


def test_pending_runs_the_chosen_student_variants_that_are_not_stored(tmp_path):
    from benchmarks.headline import pending

    store, settings, _ = fake_store(tmp_path, with_students=True)
    epochs, _ = chosen_teacher(store, "d", settings.teacher)
    order = plan(["d"], settings, (0, 1, 2), {"d": epochs})
    assert [(v, s) for _, v, s, _ in pending(order, store)] == [("flip_full", 1), ("sup_only", 2), ("flip_full", 2)]
    assert [(v, s) for _, v, s, _ in pending(order, store, ("sup_only",))] == [("sup_only", 2)]


BAD_OPTIONS = [(["--variants", "flip_full,nope"], "--variants"), (["--variants", ","], "--variants"),
               (["--datasets", "atec"], "--datasets")]


@pytest.mark.parametrize("argv,hint", BAD_OPTIONS)
def test_unknown_datasets_or_variants_fail_before_any_work(argv, hint, monkeypatch):
    from click.testing import CliRunner

    from benchmarks import headline

    monkeypatch.setattr(headline, "build_real", lambda *a, **k: pytest.fail("built data despite a bad option"))
    result = CliRunner().invoke(headline.cli, argv)
    assert result.exit_code == 2 and hint in result.output and "a comma list of" in result.output


STS_LEVERS = [("stsbenchmark_all", "max_train"),  # every train pair, the same dev and test
              ("stsbenchmark_fulldev", "max_dev")]  # all of sts-dev as dev, the same train and test


@pytest.mark.parametrize("lever,widened", STS_LEVERS)
def test_an_sts_lever_reads_stsbenchmark_with_one_split_whole_and_the_others_as_the_headline(lever, widened,
                                                                                             tmp_path, monkeypatch):
    from click.testing import CliRunner

    from benchmarks import headline

    built = []

    def fake_build(dataset, counts, *args, **kwargs):
        built.append((dataset, counts))
        raise RuntimeError("stop after building")

    monkeypatch.setattr(headline, "build_real", fake_build)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(headline.cli, ["--datasets", lever, "--render"])
    assert isinstance(result.exception, RuntimeError)
    (name, counts), = built
    assert name == "stsbenchmark" and counts[widened] is None
    assert {k: v for k, v in counts.items() if k != widened} == {
        k: v for k, v in headline.COUNTS["stsbenchmark"].items() if k != widened}


def test_a_lever_fine_tunes_its_teacher_under_the_name_of_the_data_it_reads(tmp_path, monkeypatch):
    from benchmarks import _quality_runs, headline

    named = []

    def fake_finetune(dataset, splits, teacher, config, cache_dir):
        named.append(dataset)
        raise RuntimeError("stop after naming")

    monkeypatch.setattr(_quality_runs, "finetune_cached", fake_finetune)
    settings = headline.make_settings((), ())
    for dataset in ("stsbenchmark_fulldev", "banking77"):
        with pytest.raises(RuntimeError, match="stop after naming"):
            headline.teacher_cell(dataset, {}, settings, 2, str(tmp_path))
    assert named == ["stsbenchmark", "banking77"]


def test_students_wait_for_every_teacher_epoch(tmp_path):
    store, settings, labels = fake_store(tmp_path, with_students=False)
    del store.cells[next(k for k in store.cells if "teacher_ft_e4" in k)]
    assert chosen_teacher(store, "d", settings.teacher) == (None, None)
    summary = summarise(store, ["d"], settings, (0,), {"d": labels})["d"]
    assert "teacher_ft_e4/seed0" in summary["missing"] and "flip_full" not in summary["rows"]


def test_settings_tried_lists_every_student_setting_by_dev_ap(tmp_path):
    from benchmarks.headline import render_tried, settings_tried

    store, _, labels = fake_store(tmp_path, with_students=True)
    tried = settings_tried(store, {"d": labels})
    assert set(tried) == {"flip: flip_full", "sup_only: sup_only"}
    assert len(tried["flip: flip_full"]["d"]) == 1 and len(tried["sup_only: sup_only"]["d"]) == 2
    assert "| flip: flip_full | " in render_tried(tried)


def test_seeds_of_one_settings_hash_are_one_setting_whatever_their_brief(tmp_path):
    from benchmarks.headline import settings_tried

    store = CellStore(tmp_path / "cells.json")
    labels = {d: {"dev": np.array([True, False, True]), "test": np.zeros(3, bool)} for d in ("d", "e")}
    for seed, brief in [(0, "blocks 16; best: lora_layers=16"), (1, "blocks 16"), (2, "blocks 16")]:
        store.put(f"d/flip_best/seed{seed}/h16", {"scores": {"dev": [0.9, 0.1, 0.8]}, "brief": brief, "run_id": seed})
    store.put("d/flip_best/seed0/h8", {"scores": {"dev": [0.1, 0.9, 0.8]}, "brief": "blocks 8", "run_id": 9})
    # the same settings on another dataset, run later with another brief: the same row
    store.put("e/flip_best/seed0/h16", {"scores": {"dev": [0.9, 0.1, 0.8]}, "brief": "16, later", "run_id": 5})
    tried = settings_tried(store, labels)
    assert {k: {d: len(v) for d, v in per.items()} for k, per in tried.items()} == {
        "flip: blocks 16; best: lora_layers=16": {"d": 3, "e": 1}, "flip: blocks 8": {"d": 1}}


def test_a_cell_with_the_same_settings_under_another_variant_is_reused(tmp_path):
    from benchmarks._quality_plan import apply_overrides
    from benchmarks.headline import twin

    store, _, _ = fake_store(tmp_path, with_students=True)
    epochs, _ = chosen_teacher(store, "d", "x")  # any teacher: only the student keys matter here
    ran = Settings(EncoderConfig(), LossConfig(), TrainConfig(), ("epochs=3",))
    later = Settings(EncoderConfig(), LossConfig(), TrainConfig(), ())
    apply_overrides({"train": later.train}, ["epochs=3"])  # what --set epochs=3 does
    best = next(k for _, v, s, k in plan(["d"], ran, (0,), {"d": epochs}) if v == "flip_best")
    store.put(best, {"scores": {"dev": [0.1, 0.9, 0.5]}, "brief": "b", "run_id": "r1"})
    full = next(k for _, v, s, k in plan(["d"], later, (0,), {"d": epochs}) if v == "flip_full")
    sup = next(k for _, v, s, k in plan(["d"], later, (0,), {"d": epochs}) if v == "sup_only")
    assert full != best and twin(store, full) == store.get(best)
    assert twin(store, sup) is None  # other loss parts: another run
    other_seed = next(k for _, v, s, k in plan(["d"], later, (1,), {"d": epochs}) if v == "flip_full")
    assert twin(store, other_seed) is None
    store.put(full, twin(store, full))
    assert tried_count(store, "b") == 1  # the reused cell is one run in "settings tried"


def tried_count(store: CellStore, brief: str) -> int:
    from benchmarks.headline import settings_tried

    labels = {"d": {"dev": np.zeros(3, bool), "test": np.zeros(3, bool)}}
    tried = settings_tried(store, labels)
    return sum(len(v) for k, per in tried.items() if k.endswith(f": {brief}") for v in per.values())


def test_extra_pairs_reach_the_flip_variants_only_and_change_their_key_only_when_used():
    plain = Settings(EncoderConfig(), LossConfig(), TrainConfig(), ())
    unused = Settings(EncoderConfig(), LossConfig(), TrainConfig(), ("per_pair=0",))
    grown = Settings(EncoderConfig(), LossConfig(), TrainConfig(), ("per_pair=1", "neighbour_share=1"))
    assert plain.extra_pairs("flip_best") is None and unused.extra_pairs("flip_best") is None
    augment = grown.extra_pairs("flip_best")
    assert augment is not None and (augment.per_pair, augment.neighbour_share) == (1.0, 1.0)
    assert "extra pairs 1 per pair (100% neighbours)" in grown.brief("flip_best")
    assert grown.extra_pairs("sup_only") is None and grown.extra_pairs("flip_full") is None  # --best: flip_best only
    # a stored cell keeps its key when the option is not used; using it makes another run
    assert unused.student_hash("flip_best", 2) == plain.student_hash("flip_best", 2)
    assert grown.student_hash("flip_best", 2) != plain.student_hash("flip_best", 2)
    assert grown.student_hash("sup_only", 2) == plain.student_hash("sup_only", 2)
    with pytest.raises(Exception, match="per_pair"):
        Settings(EncoderConfig(), LossConfig(), TrainConfig(), ("per_pair=-1",)).student("flip_best")


def test_the_student_llm_is_a_setting_of_every_variant_or_of_flip_best_alone():
    table = ("delta_pos=0", "delta_neg=1"), ("epochs=5", "eval_every=125", "readout_rank=128", "lora_layers=16")
    plain = headline.make_settings(*table)
    named_default = headline.make_settings(table[0], (*table[1], "student=smollm2-135m"))
    best = headline.make_settings((*table[0], "student=gemma3-270m"), table[1])
    every = headline.make_settings(table[0], (*table[1], "student=gemma3-270m"))
    assert plain.student_of("flip_best") == plain.student_of("sup_only") == "smollm2-135m"
    assert best.student_of("flip_best") == "gemma3-270m" and best.student_of("sup_only") == "smollm2-135m"
    assert {every.student_of(v) for v in headline.STUDENTS} == {"gemma3-270m"}
    # the cells stored before this setting keep their keys (the headline table's, as stored); another student is
    # another run, of flip_best alone when it is a --best
    assert plain.student_hash("flip_best", 4) == named_default.student_hash("flip_best", 4) == "367397542719"
    assert best.student_hash("flip_best", 4) != plain.student_hash("flip_best", 4)
    assert best.student_hash("flip_best", 4) == "8725dd799d2e"  # the stored Gemma cells' key on banking77
    assert best.student_hash("sup_only", 4) == plain.student_hash("sup_only", 4)
    assert every.student_hash("sup_only", 4) != plain.student_hash("sup_only", 4)
    # a --best like any other: a Settings built directly with it trains the same flip_best
    assert best.best == (*table[0], "student=gemma3-270m")
    direct = Settings(plain.encoder, plain.loss, plain.train, best.best)
    assert direct.student_hash("flip_best", 4) == best.student_hash("flip_best", 4)
    assert "student gemma3-270m" in best.brief("flip_best") and "student" not in plain.brief("flip_best")
    for best_items, set_items in ((("student= ",), ()), ((), ("student= ",))):
        with pytest.raises(click.BadParameter, match="name a student"):
            headline.make_settings(best_items, set_items)


def test_the_decoder_path_can_be_the_flip_setting_but_a_variant_keeps_its_loss_parts():
    plain = Settings(EncoderConfig(), LossConfig(), TrainConfig(), ())
    joint = Settings(EncoderConfig(), LossConfig(), TrainConfig(), ("sup_mode=generative",))
    assert joint.student("flip_best")[1].sup_mode == "generative"
    assert joint.student("flip_full")[1].sup_mode == "representation"
    assert joint.student_hash("flip_best", 2) != plain.student_hash("flip_best", 2)
    assert joint.student_hash("sup_only", 2) == plain.student_hash("sup_only", 2)
    assert "best: sup_mode=generative" in joint.brief("flip_best")
    for fixed in ("parts=sup", "train.seed=3"):
        with pytest.raises(Exception, match="set by each variant"):
            Settings(EncoderConfig(), LossConfig(), TrainConfig(), (fixed,)).student("flip_best")


def test_the_brief_names_a_checkpoint_choice_set_with_set_as_well_as_with_best():
    plain = Settings(EncoderConfig(), LossConfig(), TrainConfig(epochs=3), ())
    chosen = Settings(EncoderConfig(), LossConfig(), TrainConfig(epochs=3, eval_every=125), ())
    assert "best of every" not in plain.brief("sup_only")
    assert "3 epochs (best of every 125 steps on dev)" in chosen.brief("sup_only")


@pytest.mark.parametrize("rebuilt_ap, fails", [(0.801, False), (0.79, True)])
def test_a_teacher_missing_on_this_machine_is_rebuilt_and_checked_against_its_cell(tmp_path, monkeypatch,
                                                                                   rebuilt_ap, fails):
    stored = {"folder": str(tmp_path / "gone"), "dev_ap": 0.8, "scores": {"dev": [0.1, 0.9]}}
    calls = []

    def rebuild(dataset, splits, settings, epochs, cache_dir):
        calls.append(epochs)
        return {"folder": str(tmp_path / "new"), "dev_ap": rebuilt_ap, "scores": {"dev": [0.1, 0.9 + 1e-3]}}

    monkeypatch.setattr(headline, "teacher_cell", rebuild)
    settings = Settings(EncoderConfig(), LossConfig(), TrainConfig(), ())
    if fails:
        with pytest.raises(click.ClickException, match="not the stored one"):
            headline.rebuild_teacher("d", {}, settings, 2, stored, None)
        return
    folder, check = headline.rebuild_teacher("d", {}, settings, 2, stored, None)
    assert folder == str(tmp_path / "new") and calls == [2]
    assert check["max_abs_dev_score_gap"] == pytest.approx(1e-3) and check["stored_dev_ap"] == 0.8


AVX512 = ["avx2", "avx512f"]


@pytest.mark.parametrize("cells, expected", [
    ({}, headline.ASSUMED_SECONDS["student"]),  # nothing stored
    ({"d/flip_best/seed0/other": (100.0, None), "d/sup_only/seed0/other2": (300.0, None)}, 200.0),  # dataset mean
    ({"d/flip_best/seed0/h": (900.0, None), "d/flip_best/seed1/h": (1500.0, AVX512),
      "d/flip_best/seed0/other": (100.0, None)}, 1500.0),  # the slowest of the setting on any CPU
    ({"d/flip_best/seed0/h": (900.0, ["avx2"]), "d/flip_best/seed1/h": (1500.0, AVX512),
      "d/flip_best/seed2/h": (1700.0, ["avx2"]), "e/flip_best/seed0/h": (5.0, ["avx2"])}, 1300.0),  # this CPU's
])
def test_the_budget_guesses_a_cells_time_from_its_setting_on_this_cpu_first(tmp_path, cells, expected):
    store = CellStore(tmp_path / "cells.json")
    for key, (seconds, flags) in cells.items():
        store.put(key, {"seconds": seconds, "run_id": "r", **({"cpu_flags": flags} if flags else {})})
    store.put("d/teacher_ft_e1/seed0/t", {"seconds": 1e6, "folder": "t"})  # a teacher cell is not a student run
    assert headline.expected_seconds(store, "d", "h", ["avx2"]) == pytest.approx(expected)


def test_the_table_gives_the_all_match_floor_and_each_rows_hindsight_f1(tmp_path):
    store, settings, labels = fake_store(tmp_path, with_students=True)
    summary = summarise(store, ["d"], settings, (0, 1), {"d": labels})["d"]
    rate = labels["test"].mean()
    assert summary["all_match_f1"] == pytest.approx(2 * rate / (1 + rate))
    assert summary["all_match_f1"] == pytest.approx(f1_at(np.ones(len(labels["test"])), labels["test"], 0.5))
    assert summary["match_rate"] == pytest.approx({"dev": labels["dev"].mean(), "test": rate})
    for row in summary["rows"].values():
        assert row["f1"] <= row["hindsight_f1"] + 1e-12  # the dev threshold cannot beat test's own best
    assert any(row["f1"] < row["hindsight_f1"] for row in summary["rows"].values())
    text = render({"d": summary}, "cmd")
    assert f"calling every test pair a match scores test F1 {summary['all_match_f1']:.3f}" in text
    data = headline_json({"d": summary}, settings, "cmd")["d"]
    assert set(data["hindsight_f1"]) == set(summary["rows"]) and data["all_match_f1"] == summary["all_match_f1"]


def test_a_student_cell_keeps_its_checkpoints_when_paused_and_drops_them_once_stored(tmp_path, monkeypatch):
    from components.training.checkpoint import TrainingPaused

    calls = []

    def fake_cell(name, splits, encoder, loss, train, teacher_dir, cache_dir, experiment, tags, augment, student,
                  checkpointing, paused):
        assert student == "smollm2-135m"
        calls.append((train.checkpoint_every, checkpointing.deadline, checkpointing.resume))
        checkpointing.folder.mkdir(parents=True, exist_ok=True)
        if len(calls) == 1:
            paused.pause("run", 25, 10.0, 0)
            raise TrainingPaused(25, checkpointing.folder)
        return {"scores": {"dev": np.array([0.5])}, "metrics": {}}

    monkeypatch.setattr(headline, "train_cell", fake_cell)
    splits = {}  # the fake cell reads no data
    settings = Settings(EncoderConfig(), LossConfig(), TrainConfig(), ())
    key = "d/flip_best/seed0/h"
    folder = tmp_path / "checkpoints" / "headline" / key
    stored = []

    class Store(CellStore):
        def put(self, key, record):
            stored.append((key, folder.is_dir()))  # the checkpoints are still there while the cell is stored
            super().put(key, record)

    store = Store(tmp_path / "cells", shard=True)
    args = ("d", splits, settings, "flip_best", 0, "teacher", str(tmp_path), key, store)
    assert headline.student_cell(*args, 5.0) is None
    assert folder.is_dir() and calls[0] == (headline.CHECKPOINT_EVERY, 5.0, None) and stored == []
    cell = headline.student_cell(*args, None, {"stored_dev_ap": 0.8})
    assert cell["scores"] == {"dev": [0.5]} and "cpu_flags" in cell and cell["teacher_rebuilt"]["stored_dev_ap"] == 0.8
    assert stored == [(key, True)] and CellStore(tmp_path / "cells", shard=True).get(key) == cell
    assert not folder.exists()  # stored: nothing left to continue
