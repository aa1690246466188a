"""MLflow plumbing shared by the entry points: tracking URI, runs, params, tags, clean failures.

Under ``mlflow run`` MLflow creates the run and passes its id in ``MLFLOW_RUN_ID``; ``mlflow.start_run()``
then resumes that run, so an entry point never makes a second one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import mlflow

# MLflow's dataset lineage warns about integer columns and ambiguous local sources: noise for our frames.
warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
warnings.filterwarnings("ignore", message=".*dataset source can be interpreted in multiple ways.*")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "flipkd"
PACKAGES = ("torch", "transformers", "peft", "mlflow", "numpy", "onnxruntime", "tokenizers")


class UsageError(click.UsageError):
    """A bad option value or input: one clear message, exit code 2."""


def setup_tracking(experiment: str | None = None) -> None:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db`` in the working folder; and ``experiment``.

    A file store (``file:...`` or a plain folder) is refused in one line: MLflow 3 raises a long traceback for it.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)
    elif uri.startswith(("file:", "/", ".", "~")) and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() \
            not in ("1", "true"):
        beside = Path(uri.removeprefix("file://").removeprefix("file:") or ".").expanduser().resolve().parent
        raise ValueError(f"MLFLOW_TRACKING_URI={uri} is a file store, which MLflow 3 no longer writes to: use a "
                         f"database, e.g. MLFLOW_TRACKING_URI=sqlite:///{beside}/mlflow.db (or a tracking server, "
                         f"http://HOST:PORT)")
    if experiment:
        choose_experiment(experiment)


def choose_experiment(experiment: str | None) -> None:
    """Where a new run is filed, the same rule under ``mlflow run`` and ``python -m``, as MLflow's own CLI has it.

    Under ``mlflow run`` MLflow has already filed the run (its ``--experiment-name``, else
    ``$MLFLOW_EXPERIMENT_NAME``, else its 'Default'): it cannot move, so ``--experiment`` is not used there.
    Otherwise ``--experiment``, else ``$MLFLOW_EXPERIMENT_NAME``, else ``flipkd``. Summaries name the
    experiment the run is in (:func:`experiment_name`), never the option.
    """
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)


def experiment_name(active: mlflow.ActiveRun) -> str:
    """The experiment a run was filed in: what a summary names, so the user finds the run there."""
    return mlflow.get_experiment(active.info.experiment_id).name


@contextlib.contextmanager
def run(name: str, experiment: str | None = None, nested: bool = False,
        run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, resume) a run; a failure marks it FAILED, never left RUNNING.

    Inside an active run (the ``main`` chain) the new run is a nested child of it. ``run_id`` reopens that
    existing run (status back to RUNNING; it keeps its name and experiment). ``experiment``: see
    :func:`choose_experiment`.
    """
    nested = nested or mlflow.active_run() is not None
    if not nested:
        setup_tracking()
        if not run_id:
            choose_experiment(experiment)
        else:  # the run fixes the experiment
            mlflow.set_experiment(experiment_id=mlflow.get_run(run_id).info.experiment_id)
    reopened = run_id or (os.environ.get("MLFLOW_RUN_ID") and not nested)
    active = mlflow.start_run(run_id=run_id, run_name=None if reopened else name, nested=nested)
    try:
        mlflow.set_tags(base_tags())
        yield active
    except BaseException as error:  # a pause at a checkpoint (TrainingPaused) is resumable: KILLED, not FAILED
        mlflow.end_run(status="KILLED" if getattr(error, "resumable", False) else "FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("-dirty" if dirty and commit != "unknown" else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def base_tags() -> dict[str, str]:
    tags = {"flipkd.git_commit": git_commit(), "flipkd.python": sys.version.split()[0]}
    tags.update({f"flipkd.version.{k}": v for k, v in package_versions().items()})
    return tags


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return out


def log_params(config: dict[str, Any], prefix: str = "") -> None:
    """The full resolved config as params (values cut to MLflow's 6,000-character limit)."""
    params = {k: v[:6000] for k, v in flatten(config, prefix).items()}
    items = list(params.items())
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))


def log_json(data: Any, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(data, indent=2, default=str), artifact_file)


def log_metrics(metrics: dict[str, float], step: int | None = None, prefix: str = "") -> None:
    """Log finite values only (NaN, e.g. ROC-AUC of a one-class split, is skipped)."""
    clean = {f"{prefix}{k}": float(v) for k, v in metrics.items() if v is not None and v == v}
    mlflow.log_metrics(clean, step=step)


def log_folder(folder: str | Path, artifact_path: str) -> None:
    mlflow.log_artifacts(str(folder), artifact_path)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="flipkd-") as tmp:
        yield Path(tmp)


def clean_errors(func: Callable) -> Callable:
    """Turn expected failures into one clear line on stderr and exit code 2 (no traceback).

    Expected: bad data (``DataError``), unloadable models (``ModelLoadError``), bad option values
    (``ValueError`` raised by config validation), missing files. Set ``FLIPKD_DEBUG=1`` for the traceback.
    """
    from components.data.contract import DataError
    from components.model_cache import ModelLoadError
    from pipelines._console import setup_console

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_console()
        try:
            return func(*args, **kwargs)
        except (DataError, ModelLoadError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
            if mlflow.active_run() is not None:
                mlflow.end_run(status="FAILED")
            if os.environ.get("FLIPKD_DEBUG"):
                traceback.print_exc()
            click.echo(f"error: {err}", err=True)
            sys.exit(2)

    return wrapper
