"""Resuming an interrupted ``train`` run: which run to resume, where its checkpoints are, and the configuration a
resume must match (every result-changing option, the data options and the data itself).

The checkpoints themselves (atomic, checksummed) are :mod:`components.training.checkpoint`'s; a refused resume is a
``CheckpointError`` (exit 2).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.model_cache import cache_root
from components.training.checkpoint import Checkpoint, CheckpointError, latest_checkpoint
from pipelines import _mlflow
from pipelines._data import data_fingerprint

# options that do not change the result: a resume may give other values
NOT_FINGERPRINTED = ("experiment", "progress", "cache_dir", "checkpoint_every", "resume", "prefix_cache_gb",
                     "output_dir")


@dataclass
class Checkpointing:
    """Checkpoints of one run: where they go, the config a resume must match, and the one to resume from."""

    folder: Path
    config: dict
    resume: Checkpoint | None = None
    logged_step: int = 0  # steps the interrupted run already logged: not logged twice
    # time.monotonic() by which training must have stopped, at a checkpoint (a budgeted benchmark): None, never
    deadline: float | None = None
    _since: tuple[int, float] | None = field(default=None, repr=False)

    def start(self, step: int) -> None:
        """Training (re)starts at ``step``: the pace the deadline is judged by is measured from here."""
        self._since = (step, time.monotonic())

    def out_of_time(self, step: int, next_step: int, last_step: int, eval_seconds: float, after_training: float
                    ) -> bool:
        """At the checkpoint of ``step``: would the steps to the next checkpoint (``next_step``) end past the
        deadline? They take this sitting's pace so far, plus ``eval_seconds`` (a dev evaluation among them, 0 if
        none falls there), plus ``after_training`` (the scoring after the last step) when ``next_step`` is
        ``last_step``."""
        if self.deadline is None or step >= last_step:
            return False
        begun, when = self._since or (0, time.monotonic())
        now = time.monotonic()
        pace = (now - when) / max(step - begun, 1)
        need = pace * (next_step - step) + eval_seconds + (after_training if next_step >= last_step else 0.0)
        return now + need > self.deadline


def checkpoint_folder(cache_dir: str | None, run_id: str) -> Path:
    return cache_root(cache_dir) / "checkpoints" / run_id


def _absolute(value):
    """A path that exists, absolute: the same folder given from another working folder is the same option."""
    if isinstance(value, str | Path) and str(value) and Path(value).exists():
        return str(Path(value).resolve())
    return value


def fingerprint_config(o: dict, data_args, splits: dict[str, pd.DataFrame]) -> dict:
    """What a resume must match: every result-changing option, the data options and the data itself."""
    return {"options": {k: _absolute(v) for k, v in o.items() if k not in NOT_FINGERPRINTED},
            "data": {k: _absolute(v) for k, v in data_args.__dict__.items()},
            "data_fingerprint": data_fingerprint(splits)}


def resume_target(requested: str | None, cache_dir: str | None) -> str | None:
    """The run to resume: ``--resume``, or under ``mlflow run --run-id`` a run that has a checkpoint; else None.

    Refuses (``CheckpointError``, exit 2) a run that is unknown, finished, or has no checkpoint.
    """
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if mlflow.active_run() is not None:  # a step of `main`: always a new child run
        if requested:
            raise CheckpointError("--resume continues a train run on its own, not inside another run (main)")
        return None
    if requested and env_run and requested != env_run:
        raise CheckpointError(f"under `mlflow run` (run {env_run}), resume with `mlflow run ... --run-id {requested}` "
                              f"instead of --resume {requested}")
    if not requested:
        if env_run and latest_checkpoint(checkpoint_folder(cache_dir, env_run)) is not None:
            return env_run
        return None
    _mlflow.setup_tracking()
    try:
        status = MlflowClient().get_run(requested).info.status
    except MlflowException:
        raise CheckpointError(f"--resume {requested}: no such run in the tracking store {mlflow.get_tracking_uri()} "
                              f"(set MLFLOW_TRACKING_URI to the store of the interrupted run)") from None
    if status == "FINISHED":
        raise CheckpointError(f"--resume {requested}: the run has finished; there is nothing to resume")
    folder = checkpoint_folder(cache_dir, requested)
    if latest_checkpoint(folder) is None:
        raise CheckpointError(f"--resume {requested}: no checkpoint under {folder} (the run stopped before its first "
                              f"checkpoint, had --checkpoint-every 0, or used another --cache-dir); start a new run")
    return requested


def last_logged_step(run_id: str) -> int:
    return max((m.step for m in MlflowClient().get_metric_history(run_id, "loss/total")), default=0)
