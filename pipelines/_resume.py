"""Resuming an interrupted ``train`` run: which run to resume, where its checkpoints are, and the configuration a
resume must match (every result-changing option, the data options and the data itself).

The checkpoints themselves (atomic, checksummed) are :mod:`components.training.checkpoint`'s; a refused resume is a
``CheckpointError`` (exit 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
