"""The stability benchmark: re-judging stored runs with today's guard, and the fix on real data (METHOD.md's
settings jump mid-run on MEDIQA, train's defaults stay bounded).

The real-data test is marked ``slow`` (two 200-step runs of the packaged student on 1,600 real MEDIQA pairs, about
5 minutes with a fine-tuned teacher cached, more without):
``python -m pytest tests/benchmarks/test_stability.py --run-slow``.
It trains exactly as ``python -m benchmarks.stability`` does (same data, sizes, seed 0 and presets), so a failure
here and a changed row in benchmarks/RESULTS.md (stability) tell the same story.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import pytest

from components import models

DATASET = "mediqa2019_rqe"


@pytest.fixture(scope="module")
def mediqa(tmp_path_factory):
    from benchmarks.datasets import DEFAULT_DATA_ROOT

    if models._package_dir(models.STUDENT_PACKAGE) is None or models._package_dir(models.TEACHER_PACKAGE) is None:
        pytest.skip("needs the packaged student and teacher (requirements-models.txt)")
    if not (DEFAULT_DATA_ROOT / DATASET).is_dir():
        pytest.skip(f"needs the real data in {DEFAULT_DATA_ROOT / DATASET}")
    from benchmarks._quality_runs import finetune_cached
    from benchmarks._real_size import build_real
    from benchmarks.stability import COUNTS, make_settings

    cache = os.environ.get("FLIPKD_TEST_CACHE", str(Path(tempfile.gettempdir()) / "flipkd-integration-cache"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlruns')}/mlflow.db")
    settings = make_settings("teacher", "defaults", (), 1, "auto")
    splits = build_real(DATASET, COUNTS, settings.teacher, cache)
    with mlflow.start_run():  # fine-tuning logs its curve
        teacher_dir, _ = finetune_cached(DATASET, splits, settings.teacher, settings.teacher_finetune, cache)
    return splits, teacher_dir, cache


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("preset, jumps", [("before", True), ("defaults", False)])
def test_the_old_settings_jump_and_the_defaults_stay_bounded(mediqa, preset, jumps):
    from benchmarks.stability import STEPS, make_settings, run_cell

    splits, teacher_dir, cache = mediqa
    settings = make_settings(preset, preset, (), STEPS, "auto")
    with mlflow.start_run():
        cell = run_cell(DATASET, splits, "flip", 0, settings, teacher_dir, cache)
    assert (cell["guard_warnings"] > 0) is jumps, cell["guard"]
    mcl = cell["curves"]["loss/mcl"]
    if not jumps:  # after the first tenth, no tenth of the run climbs back to where L_MCL started
        assert max(mcl[1:]) < mcl[0], mcl
    assert cell["dev_ap"] > 0.85  # both learn: the fix is about the path, and this data is easy for both


def _cell(run_id: str, warnings: int) -> dict:
    return {"run_id": run_id, "guard_warnings": warnings, "dataset": "d", "variant": "flip", "seed": 0}


@pytest.mark.parametrize("jump, expected", [(False, 0), (True, 1)])
def test_rejudge_replays_a_stored_run_through_todays_guard(mlflow_env, tmp_path, jump, expected):
    from benchmarks import stability
    from benchmarks._cells import CellStore

    mlflow.set_experiment("rejudge")  # not whatever experiment an earlier test left active
    with mlflow.start_run() as run:
        for step in range(1, 121):
            mcl = 4.0 if jump and 80 <= step < 95 else 0.5 + 0.01 * (step % 3)
            mlflow.log_metrics({"loss/mcl": mcl, "loss/total": 9.0, "lr": 1.0}, step=step)
    store = CellStore(tmp_path / "cells.json")
    store.put("k", _cell(run.info.run_id, 7))
    store.put("elsewhere", _cell("0" * 32, 2))  # a run this tracking store does not hold: left as it was
    assert stability.rejudge(store) == 1
    judged = CellStore(tmp_path / "cells.json").get("k")["guard_now"]
    assert judged["warnings"] == expected and len(judged["messages"]) == expected
    assert "guard_now" not in store.get("elsewhere")
    assert stability.guard_count([store.get("k")]) == f"7 → {expected}"
    assert stability.guard_count([store.get("k"), store.get("elsewhere")]) == "9"  # not all replayed: as run
