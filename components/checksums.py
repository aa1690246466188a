"""sha256 listings of a folder's files: a truncated, tampered or swapped artifact is refused by name.

Standard library only, so the torch-free serving code and the training code share it. The listing is a
JSON file ``{"algorithm": "sha256", "files": {relative name: hex digest}}`` written after every other file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

CHECKSUM_FILE = "flipkd_checksums.json"


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: str | Path, names: Iterable[str] | None = None) -> dict[str, str]:
    """List ``names`` (default: every other file below ``folder``) with their sha256; call it last."""
    folder = Path(folder)
    if names is None:
        names = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*"))
                 if p.is_file() and p.name != CHECKSUM_FILE]
    digests = {name: sha256(folder / name) for name in names if (folder / name).is_file()}
    (folder / CHECKSUM_FILE).write_text(json.dumps({"algorithm": "sha256", "files": digests}, indent=2),
                                        encoding="utf-8")
    return digests


def verify_checksums(folder: str | Path, remedy: str, required: Iterable[str] = ()) -> dict[str, str] | None:
    """Refuse (``ValueError`` naming the file) any listed file that is missing, outside ``folder`` or changed,
    and a listing that leaves out a ``required`` name. Returns the listing, or None where there is none (an
    artifact written before listings existed): then nothing is checked. ``remedy`` ends each message."""
    folder = Path(folder)
    listing = folder / CHECKSUM_FILE
    if not listing.is_file():
        return None
    try:
        saved = json.loads(listing.read_text(encoding="utf-8"))
        files = saved["files"]
        if saved.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("not a sha256 listing")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{listing} is damaged ({err}): {remedy}") from None
    root = folder.resolve()
    for name, expected in files.items():
        path = (folder / str(name)).resolve()
        if root not in path.parents or not path.is_file():
            raise ValueError(f"{listing} lists {name!r}, which is not a file of {folder}")
        if sha256(path) != expected:
            raise ValueError(f"{folder / str(name)} does not match its sha256 in {CHECKSUM_FILE}: modified or "
                             f"damaged after it was written; {remedy}")
    unlisted = [name for name in required if name not in files]
    if unlisted:
        raise ValueError(f"{listing} has no sha256 for {', '.join(unlisted)}: {remedy}")
    return files
