"""The stability fix on real data: METHOD.md's settings jump mid-run on MEDIQA, train's defaults stay bounded.

Marked ``slow`` (two 200-step runs of the packaged student on 1,600 real MEDIQA pairs, about 5 minutes with a
fine-tuned teacher cached, more without): ``python -m pytest tests/benchmarks/test_stability.py --run-slow``.
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

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATASET = "mediqa2019_rqe"


@pytest.fixture(scope="module")
def mediqa(tmp_path_factory):
    from benchmarks.datasets import DEFAULT_DATA_ROOT

    if models._package_dir(models.STUDENT_PACKAGE) is None or models._package_dir(models.TEACHER_PACKAGE) is None:
        pytest.skip("needs the packaged student and teacher (requirements-models.txt)")
    if not (DEFAULT_DATA_ROOT / DATASET).is_dir():
        pytest.skip(f"needs the real data in {DEFAULT_DATA_ROOT / DATASET}")
    from benchmarks._real_size import build_real
    from benchmarks.quality import finetune_cached
    from benchmarks.stability import COUNTS, make_settings

    cache = os.environ.get("FLIPKD_TEST_CACHE", str(Path(tempfile.gettempdir()) / "flipkd-integration-cache"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlruns')}/mlflow.db")
    settings = make_settings("teacher", "defaults", (), 1, "auto")
    splits = build_real(DATASET, COUNTS, settings.teacher, cache)
    teacher_dir, _ = finetune_cached(DATASET, splits, settings.teacher, settings.teacher_finetune, cache)
    return splits, teacher_dir, cache


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
