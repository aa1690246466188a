"""flipkd's model cache: where it is, and folders in it built atomically, checksummed and checked before use.

A converted model (and a fine-tuned teacher) is a folder written by :func:`write_folder_atomically`: built in a
temporary sibling, given a manifest ``flipkd_checksum.json`` (size and sha256 of every file, and the ``source``
it was built from) and renamed into place, so the folder either does not exist or is complete.
:func:`build_cached` returns a valid folder or builds it once under a file lock (POSIX ``flock``), removing
what a killed build left behind. :class:`ModelLoadError` is the one error of model folders, resolving and
loading alike (:mod:`components.models` raises it too).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

try:  # POSIX only; without it concurrent conversions are not serialised (still atomic).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

CHECKSUM_FILE = "flipkd_checksum.json"
CHECKSUM_FORMAT = "flipkd-checksum/1"

Verify = Literal["size", "full"]


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved or loaded; the message says what to do."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """flipkd's cache folder: ``cache_dir`` > ``$FLIPKD_CACHE_DIR`` > ``$XDG_CACHE_HOME/flipkd`` > ``~/.cache/flipkd``.

    The folder is not created here.
    """
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    if os.environ.get("FLIPKD_CACHE_DIR"):
        return Path(os.environ["FLIPKD_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "flipkd"


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE)


def write_checksum_manifest(folder: str | Path, source: dict[str, Any] | None = None) -> Path:
    """Write ``flipkd_checksum.json`` (size and sha256 of every file, plus ``source``) into ``folder``."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256_file(p)}
             for p in _folder_files(folder)}
    manifest = {"format": CHECKSUM_FORMAT, "source": source or {}, "files": files}
    path = folder / CHECKSUM_FILE
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def read_checksum_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of ``folder``, or None when it is missing or unreadable."""
    try:
        manifest = json.loads((Path(folder) / CHECKSUM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKSUM_FORMAT:
        return None
    if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        return None
    return manifest


def verify_folder(folder: str | Path, level: Verify = "size", source: dict[str, Any] | None = None) -> str | None:
    """Check ``folder`` against its manifest. Returns None when it is valid, else the reason it is not.

    ``level="size"`` compares file sizes (cheap; catches truncated and missing files); ``"full"`` also
    recomputes every sha256. When ``source`` is given it must equal the recorded source (a new package
    version, for example, invalidates a converted folder). Files not listed in the manifest are ignored.
    """
    if level not in ("size", "full"):
        raise ValueError(f"verify must be 'size' or 'full', got {level!r}")
    folder = Path(folder)
    manifest = read_checksum_manifest(folder)
    if manifest is None:
        return f"{CHECKSUM_FILE} is missing or unreadable"
    if source is not None and manifest.get("source") != source:
        return f"it was built from {manifest.get('source')}, not {source}"
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry.get("size"):
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry.get('size')}"
        if level == "full" and _sha256_file(path) != entry.get("sha256"):
            return f"{name} does not match its sha256"
    return None


def _temp_sibling(target: Path, tag: str = "tmp") -> Path:
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _temp_siblings(target: Path) -> list[Path]:
    return [p for tag in ("tmp", "old") for p in target.parent.glob(f".{target.name}.{tag}-*") if p.is_dir()]


def _clean_temp_siblings(target: Path) -> None:
    """Remove temporary folders a killed build left beside ``target`` (call with the build lock held)."""
    for stale in _temp_siblings(target):
        logger.warning("removing %s, left by an interrupted build", stale)
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(target.parent / f".{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_folder(folder: Path) -> None:
    """Rename aside first (one atomic step), then delete: a kill never leaves a half-deleted ``folder``."""
    aside = _temp_sibling(folder, "old")
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def write_folder_atomically(target: str | Path, build_fn: Callable[[Path], None], *,
                            source: dict[str, Any] | None = None, replace: bool = False) -> Path:
    """Run ``build_fn(tmp)`` in a temporary sibling of ``target``, checksum it, rename it to ``target``.

    ``target`` either does not exist afterwards (the build failed or was killed) or is complete with its
    ``flipkd_checksum.json``. An existing ``target`` raises ``FileExistsError`` unless ``replace=True``; then
    the old folder is renamed aside and deleted just before the new one is renamed in (a kill between the two
    renames leaves no ``target``, never a mixed one).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists; choose another folder or allow replacing it")
    tmp = _temp_sibling(target)
    tmp.mkdir()
    try:
        build_fn(tmp)
        if not any(tmp.iterdir()):
            raise RuntimeError(f"building {target.name} wrote no file")
        write_checksum_manifest(tmp, source)
        if target.exists():
            _remove_folder(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return target


def build_cached(target: str | Path, build_fn: Callable[[Path], None], *, source: dict[str, Any] | None = None,
                 verify: Verify = "size") -> Path:
    """Return ``target`` once it holds a valid build, building it with ``build_fn`` only when needed.

    Fast path: ``target`` exists and passes :func:`verify_folder` at ``verify`` level -> returned as is.
    Otherwise, under a file lock: stale temporary siblings are removed, an invalid ``target`` is removed
    with a warning, and the folder is built by :func:`write_folder_atomically`. Whoever holds the lock is the
    only builder (on this host), so any temporary sibling seen under the lock is stale.
    """
    target = Path(target)
    if target.is_dir() and verify_folder(target, verify, source) is None:
        if _temp_siblings(target):
            with _build_lock(target):
                _clean_temp_siblings(target)
        return target
    with _build_lock(target):
        if target.is_dir():  # another process may have built it while we waited for the lock
            reason = verify_folder(target, verify, source)
            if reason is None:
                return target
            logger.warning("rebuilding %s because %s", target, reason)
            _remove_folder(target)
        elif target.exists():
            raise ModelLoadError(f"{target} exists and is not a folder; remove it")
        _clean_temp_siblings(target)
        return write_folder_atomically(target, build_fn, source=source)
