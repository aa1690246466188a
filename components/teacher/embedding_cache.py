"""Persistent cache of teacher embeddings, keyed by (model fingerprint, sha256 of the text).

Layout: ``<folder>/<fingerprint>/shard-*.safetensors``. A shard holds two tensors, ``keys`` (uint8 [n, 32], the
sha256 digests of the texts' UTF-8 bytes) and ``embeddings`` (float32 [n, d]), and in its metadata the row
count, the dimension and a sha256 over both tensors' bytes. There is no separate index: each shard describes
itself, so there is no index to fall out of step with the shards.

- Safe format only: safetensors (no pickle).
- A kill in the middle of a write leaves at most a temporary ``.tmp-*`` file, never a partial shard: a shard is
  written to a temporary file in the same folder, fsynced and ``os.replace``-d into its final name.
  Temporary files older than an hour are removed on load.
- Corruption (unreadable file, wrong shapes, checksum mismatch) is detected when the shard is loaded: the
  shard is deleted with a warning and its texts are simply misses again, so the next ``put_many`` rebuilds
  them.
- Sequential runs share the folder safely; concurrent writers never clobber each other (each shard has a
  unique name), at worst they store a text twice. Shards are merged into one when there are more than
  ``max_shards`` of them (:meth:`EmbeddingCache.compact`).

Lookups load every shard of the fingerprint into memory once (lazily, at the first call); 100k texts of a
384-d teacher take about 150 MB.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

logger = logging.getLogger(__name__)

SHARD_FORMAT = "flipkd-embedding-cache/1"
SHARD_GLOB = "shard-*.safetensors"
STALE_TEMP_SECONDS = 3600.0


def text_key(text: str) -> bytes:
    """The 32-byte sha256 digest of a text's UTF-8 bytes."""
    if not isinstance(text, str):
        raise TypeError(f"texts must be str, got {type(text).__name__}")
    return hashlib.sha256(text.encode("utf-8")).digest()


def _checksum(keys: np.ndarray, embeddings: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(keys).tobytes())
    digest.update(np.ascontiguousarray(embeddings).tobytes())
    return digest.hexdigest()


def write_shard(folder: Path, save: Callable[[Path], None]) -> Path:
    """A new uniquely named shard in ``folder``, written by ``save(temporary path)``, fsynced and renamed into
    place: a kill leaves at most a ``.tmp-*`` file, never a partial shard (shared by the prefix cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.safetensors"
    temp = folder / f".tmp-{os.getpid()}-{name}"
    try:
        save(temp)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, folder / name)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return folder / name


def clean_stale_temps(folder: Path) -> None:
    """Remove temporary files of writes killed more than an hour ago."""
    now = time.time()
    for temp in folder.glob(".tmp-*"):
        try:
            if now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                temp.unlink()
        except OSError:
            pass


class CorruptShardError(ValueError):
    """A shard file failed its format, shape or checksum check."""


class EmbeddingCache:
    """Teacher embeddings on disk for one model fingerprint.

    Args:
        folder: the cache root; the shards go in ``folder/<model_fingerprint>/``.
        model_fingerprint: the id of the model (and of anything else that changes its embeddings, such as the
            maximum length): see :attr:`components.teacher.scorer.TeacherScorer.fingerprint`.
        max_shards: merge all shards into one when a write leaves more than this many.

    Attributes:
        hits, misses: how many texts :meth:`get_many` found / did not find since construction.

    Example:
        >>> cache = EmbeddingCache(folder, "abc123")                        # doctest: +SKIP
        >>> cache.put_many(["a", "b"], np.ones((2, 4), np.float32))        # doctest: +SKIP
        >>> cache.get_many(["b", "c"])                                      # doctest: +SKIP
        {0: array([1., 1., 1., 1.], dtype=float32)}
    """

    def __init__(self, folder: str | Path, model_fingerprint: str, *, max_shards: int = 64) -> None:
        if not model_fingerprint or any(c in model_fingerprint for c in "/\\:") or model_fingerprint.startswith("."):
            raise ValueError(f"model_fingerprint must be a plain non-empty name, got {model_fingerprint!r}")
        if max_shards < 1:
            raise ValueError(f"max_shards must be >= 1, got {max_shards}")
        self.root = Path(folder)
        self.model_fingerprint = model_fingerprint
        self.folder = self.root / model_fingerprint
        self.max_shards = max_shards
        self.hits = 0
        self.misses = 0
        self._rows: dict[bytes, np.ndarray] | None = None
        self._shards: list[Path] = []
        self.dim: int | None = None

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.folder)!r}, hits={self.hits}, misses={self.misses})"

    def __len__(self) -> int:
        return len(self._load())

    # ------------------------------------------------------------------------------------------- reading

    def _read_shard(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with safe_open(path, framework="numpy") as handle:
                meta = handle.metadata() or {}
                if meta.get("format") != SHARD_FORMAT or set(handle.keys()) != {"keys", "embeddings"}:
                    raise CorruptShardError("not a flipkd embedding shard")
                keys, embeddings = handle.get_tensor("keys"), handle.get_tensor("embeddings")
                rows = int(meta.get("rows", "-1"))
        except CorruptShardError:
            raise
        except Exception as error:  # safetensors raises several types on truncated or garbled files
            raise CorruptShardError(f"unreadable ({type(error).__name__}: {error})") from error
        if keys.dtype != np.uint8 or keys.shape != (rows, 32) or embeddings.dtype != np.float32 \
                or embeddings.ndim != 2 or embeddings.shape[0] != rows:
            raise CorruptShardError(f"unexpected shapes {keys.shape} {embeddings.shape} for {rows} rows")
        if meta.get("checksum") != _checksum(keys, embeddings):
            raise CorruptShardError("checksum mismatch")
        return keys, embeddings

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._rows is not None:
            return self._rows
        self._rows, self._shards = {}, []
        if not self.folder.is_dir():
            return self._rows
        clean_stale_temps(self.folder)
        for path in sorted(self.folder.glob(SHARD_GLOB)):
            try:
                keys, embeddings = self._read_shard(path)
                if self.dim is not None and embeddings.shape[1] != self.dim:
                    raise CorruptShardError(f"dimension {embeddings.shape[1]}, other shards have {self.dim}")
            except CorruptShardError as error:
                logger.warning("embedding cache: discarding corrupt shard %s (%s); its texts will be re-encoded",
                               path, error)
                path.unlink(missing_ok=True)
                continue
            if len(keys):
                self.dim = embeddings.shape[1]
            for key, row in zip(keys, embeddings, strict=True):
                self._rows[key.tobytes()] = row
            self._shards.append(path)
        return self._rows


    def get_many(self, texts: Sequence[str]) -> dict[int, np.ndarray]:
        """Look texts up. Returns ``{position in texts: float32 [d] embedding}`` for the hits only.

        Every position counts once in :attr:`hits` or :attr:`misses` (repeat texts are counted each time).
        """
        rows = self._load()
        found: dict[int, np.ndarray] = {}
        for position, text in enumerate(texts):
            row = rows.get(text_key(text))
            if row is not None:
                found[position] = row
        self.hits += len(found)
        self.misses += len(texts) - len(found)
        return found

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._load()

    # ------------------------------------------------------------------------------------------- writing

    def put_many(self, texts: Sequence[str], embeddings: np.ndarray) -> None:
        """Store ``embeddings`` (float [len(texts), d]) for ``texts``; texts already cached are skipped.

        The new rows are written as one new shard, atomically; a failed write leaves the cache as it was.
        """
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
            raise ValueError(f"embeddings must be [len(texts)={len(texts)}, d], got {embeddings.shape}")
        if not np.isfinite(embeddings).all():
            raise ValueError("embeddings contain NaN or inf; refusing to cache them")
        rows = self._load()
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise ValueError(f"embedding dimension {embeddings.shape[1]} != cached dimension {self.dim}")
        new: dict[bytes, np.ndarray] = {}
        for text, row in zip(texts, embeddings.astype(np.float32, copy=False), strict=True):
            key = text_key(text)
            if key not in rows and key not in new:
                new[key] = row
        if not new:
            return
        keys = np.frombuffer(b"".join(new), dtype=np.uint8).reshape(len(new), 32)
        block = np.ascontiguousarray(np.stack(list(new.values())), dtype=np.float32)
        path = self._write_shard(keys, block)
        for key, row in zip(new, block, strict=True):
            rows[key] = row
        self._shards.append(path)
        self.dim = block.shape[1]
        if len(self._shards) > self.max_shards:
            self.compact()

    def _write_shard(self, keys: np.ndarray, embeddings: np.ndarray) -> Path:
        meta = {"format": SHARD_FORMAT, "rows": str(len(keys)), "dim": str(embeddings.shape[1]),
                "model_fingerprint": self.model_fingerprint, "checksum": _checksum(keys, embeddings)}
        return write_shard(self.folder, lambda temp: save_file({"keys": keys, "embeddings": embeddings}, temp,
                                                               metadata=meta))

    def compact(self) -> None:
        """Merge every shard into one (the new shard is written before the old ones are deleted)."""
        rows = self._load()
        if len(self._shards) <= 1:
            return
        old = list(self._shards)
        keys = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), 32)
        merged = self._write_shard(keys, np.ascontiguousarray(np.stack(list(rows.values())), dtype=np.float32))
        for path in old:
            path.unlink(missing_ok=True)
        self._shards = [merged]
