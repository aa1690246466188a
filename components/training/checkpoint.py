"""Crash-safe training checkpoints: atomic, checksummed, safe formats only (safetensors + JSON, no pickle).

A checkpoint is one folder ``<root>/step-<8 digits>/`` holding :meth:`components.training.trainer.Trainer.state_dict`:

    parameters.safetensors  the trained parameters (LoRA adapter ``encoder.*``, loss scalars ``loss.*``)
    optimizer.safetensors   AdamW state tensors (``state.<i>.exp_avg``, ``.exp_avg_sq``, ``.step``)
    optimizer.json          index: parameter names in optimiser order, param groups, non-tensor state
    scheduler.json          the LR scheduler state (last_epoch, base_lrs, ...)
    rng.safetensors         torch's global CPU RNG state (uint8)
    rng.json                python ``random`` and numpy global RNG states
    trainer.json            format, step (the data position), schedule length, timing, early stopping, config and
                            its fingerprint
    best.safetensors        with early stopping only: the best parameters so far (``encoder.*``, ``loss.*``)
    checksums.json          sha256 of every file above

Writing: every file goes into a temporary ``.tmp-*`` folder beside the target and is fsynced, then the folder
is renamed into place (``os.replace``) and the parent fsynced. A reader lists ``step-*`` folders only, so it
never sees a half-written checkpoint; a write killed midway leaves a ``.tmp-*`` folder that the next save
removes, and the previous checkpoint intact. The last ``keep`` (default 2) checkpoints are kept.

Reading: every file is checked against ``checksums.json`` (a truncated or modified file is refused, by name),
and, given the current config, its fingerprint must equal the one saved (a resume with other options or
data is refused, naming what differs). Errors are :class:`CheckpointError` (a ``ValueError``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

FORMAT = 1
CHECKSUMS = "checksums.json"
FILES = ("parameters.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng.safetensors",
         "rng.json", "trainer.json")
OPTIONAL_FILES = ("best.safetensors",)
_NAME = re.compile(r"step-(\d{8})")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, incomplete, damaged, or made with other options or data."""


class TrainingPaused(Exception):  # noqa: N818 - a planned stop, not an error
    """Training stopped on purpose right after the checkpoint of ``step``, out of time: resume from it."""

    resumable = True  # an MLflow run ended by it is KILLED, not FAILED (pipelines._mlflow.run)

    def __init__(self, step: int, folder: Path) -> None:
        super().__init__(f"training paused after the checkpoint of step {step} under {folder}: out of time")
        self.step, self.folder = step, folder


@dataclass
class Checkpoint:
    """A verified checkpoint: ``state`` goes to :meth:`Trainer.load_state_dict`."""

    path: Path
    step: int
    fingerprint: str
    config: dict[str, Any]
    state: dict[str, Any]


# ----------------------------------------------------------------- config fingerprint
def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b": JSON value}; tuples become lists, other objects their ``str``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.loads(json.dumps(value, default=str))
    return out


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """sha256 (16 hex digits) of the canonical JSON of the flattened config."""
    canonical = json.dumps(flat_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ----------------------------------------------------------------- listing
def step_of(path: Path) -> int:
    match = _NAME.fullmatch(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint folder (step-<8 digits>)")
    return int(match.group(1))


def list_checkpoints(root: str | Path) -> list[Path]:
    """Published checkpoints under ``root``, oldest first (temporary folders are never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)), key=step_of)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


# ----------------------------------------------------------------- writing
def _write(folder: Path, name: str, data: bytes) -> str:
    with open(folder / name, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=1, allow_nan=False).encode()


def _tensor(value: torch.Tensor) -> torch.Tensor:
    return value.detach().cpu().contiguous().clone()


def _encode(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, bytes]:
    """Trainer state -> {file name: bytes}, safetensors and JSON only."""
    names = list(state["parameter_names"])
    optimizer = state["optimizer"]
    opt_tensors, opt_state = {}, {}
    for index, values in optimizer["state"].items():
        entry: dict[str, Any] = {"tensors": [], "values": {}}
        for key, value in values.items():
            if torch.is_tensor(value):
                opt_tensors[f"state.{int(index)}.{key}"] = _tensor(value)
                entry["tensors"].append(key)
            else:
                entry["values"][key] = value
        opt_state[str(int(index))] = entry
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
              for group in optimizer["param_groups"]]
    python_rng = state["rng"]["python"]
    numpy_rng = state["rng"]["numpy"]
    flat = flat_config(config)
    best = state.get("best_parameters")
    return {**({"best.safetensors": save_tensors({n: _tensor(v) for n, v in best.items()})} if best else {}),
        "parameters.safetensors": save_tensors({n: _tensor(state["parameters"][n]) for n in names}),
        "optimizer.safetensors": save_tensors(opt_tensors),
        "optimizer.json": _json({"parameter_names": names, "param_groups": groups, "state": opt_state}),
        "scheduler.json": _json(state["scheduler"]),
        "rng.safetensors": save_tensors({"torch_cpu": _tensor(state["rng"]["torch"]).to(torch.uint8)}),
        "rng.json": _json({"python": [python_rng[0], list(python_rng[1]), python_rng[2]],
                           "numpy": [numpy_rng[0], np.asarray(numpy_rng[1]).tolist(), int(numpy_rng[2]),
                                     int(numpy_rng[3]), float(numpy_rng[4])]}),
        "trainer.json": _json({"format": FORMAT, "step": int(state["step"]), "total_steps": int(state["total_steps"]),
                               "timing": state["timing"], "early_stopping": state.get("early_stopping"),
                               "fingerprint": config_fingerprint(config), "config": flat,
                               "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}),
    }


def _remove(path: Path) -> None:
    """Take ``path`` out of the listing atomically (rename), then delete it."""
    if not path.exists():
        return
    trash = path.with_name(f".old-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> None:
    """The atomic step: the complete temporary folder becomes ``final``."""
    if final.exists():  # the same step saved again (a resumed run): the older copies stay listed meanwhile
        _remove(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def save_checkpoint(root: str | Path, state: Mapping[str, Any], config: Mapping[str, Any], keep: int = 2) -> Path:
    """Write ``state`` (:meth:`Trainer.state_dict`) atomically as ``<root>/step-<step>``; keep the last ``keep``.

    ``config`` is what a resume must match (options, data fingerprint): it is stored with its fingerprint.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a write that was killed: never published, never read
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(".old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{int(state['step']):08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        files = _encode(state, config)
        digests = {name: _write(tmp, name, data) for name, data in files.items()}
        _write(tmp, CHECKSUMS, _json({"algorithm": "sha256", "files": digests}))
        _fsync_dir(tmp)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep]:
        _remove(old)
    return final


# ----------------------------------------------------------------- reading
def _damaged(path: Path, problem: str) -> CheckpointError:
    older = ([p for p in list_checkpoints(path.parent) if step_of(p) < step_of(path)]
             if _NAME.fullmatch(path.name) else [])
    hint = (f"delete {path} to resume from {older[-1]} (step {step_of(older[-1])})" if older
            else "there is no earlier checkpoint: start the run again")
    return CheckpointError(f"checkpoint {path} is damaged: {problem}; {hint}")


def _read_verified(path: Path) -> dict[str, bytes]:
    try:
        listing = json.loads((path / CHECKSUMS).read_bytes())
        expected = listing["files"]
        if listing.get("algorithm") != "sha256" or not isinstance(expected, dict):
            raise ValueError("unknown checksum algorithm")
    except FileNotFoundError:
        raise _damaged(path, f"{CHECKSUMS} is missing") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise _damaged(path, f"{CHECKSUMS} is unreadable (truncated or modified)") from None
    missing = [name for name in FILES if name not in expected]
    if missing:
        raise _damaged(path, f"{CHECKSUMS} does not list {', '.join(missing)}")
    data = {}
    for name in (*FILES, *(n for n in OPTIONAL_FILES if n in expected)):
        try:
            blob = (path / name).read_bytes()
        except FileNotFoundError:
            raise _damaged(path, f"{name} is missing") from None
        if hashlib.sha256(blob).hexdigest() != expected[name]:
            raise _damaged(path, f"{name} does not match its sha256 in {CHECKSUMS} (truncated or modified)")
        data[name] = blob
    return data


def _describe_difference(saved: Mapping[str, Any], current: Mapping[str, Any], limit: int = 6) -> str:
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k, "<unset>") != current.get(k, "<unset>"))
    shown = [f"{k}: {json.dumps(saved.get(k, '<unset>'))} -> {json.dumps(current.get(k, '<unset>'))}"
             for k in keys[:limit]]
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(shown) + more if shown else "(no readable difference)"


def load_checkpoint(path: str | Path, config: Mapping[str, Any] | None = None) -> Checkpoint:
    """Verify checksums (and, given ``config``, the fingerprint), then decode ``path`` into a :class:`Checkpoint`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}")
    data = _read_verified(path)
    meta = json.loads(data["trainer.json"])
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}; this flipkd reads {FORMAT}")
    if config is not None and config_fingerprint(config) != meta["fingerprint"]:
        raise CheckpointError(f"checkpoint {path} was made with other options or data, so it cannot be resumed "
                              f"with these; give the options of the interrupted run. Differences (saved -> now): "
                              f"{_describe_difference(meta['config'], flat_config(config))}")
    index = json.loads(data["optimizer.json"])
    opt_tensors = load_tensors(data["optimizer.safetensors"])
    opt_state = {}
    for key, entry in index["state"].items():
        values = dict(entry["values"])
        values.update({name: opt_tensors[f"state.{key}.{name}"] for name in entry["tensors"]})
        opt_state[int(key)] = values
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
              for group in index["param_groups"]]
    rng = json.loads(data["rng.json"])
    python_rng = (rng["python"][0], tuple(rng["python"][1]), rng["python"][2])
    numpy_rng = (rng["numpy"][0], np.asarray(rng["numpy"][1], dtype=np.uint32), *rng["numpy"][2:])
    state = {"step": meta["step"], "total_steps": meta["total_steps"], "timing": meta["timing"],
             "parameters": load_tensors(data["parameters.safetensors"]),
             "parameter_names": index["parameter_names"],
             "optimizer": {"state": opt_state, "param_groups": groups},
             "scheduler": json.loads(data["scheduler.json"]),
             "rng": {"torch": load_tensors(data["rng.safetensors"])["torch_cpu"], "python": python_rng,
                     "numpy": numpy_rng},
             "early_stopping": meta.get("early_stopping"),
             "best_parameters": load_tensors(data["best.safetensors"]) if "best.safetensors" in data else None}
    if _NAME.fullmatch(path.name) and step_of(path) != state["step"]:
        raise _damaged(path, f"its folder name says step {step_of(path)} but trainer.json says {state['step']}")
    return Checkpoint(path, int(meta["step"]), meta["fingerprint"], meta["config"], state)
