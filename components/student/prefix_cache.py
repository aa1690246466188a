"""The frozen bottom of the student, computed once per text and cached (METHOD.md, "LoRA depth").

With LoRA only in the top K blocks ending at the representation block (``EncoderConfig.lora_layers``), every
block below them is frozen and reads one text alone: the hidden state entering the first tuned block is a function
of (base model, token ids) and nothing else. :class:`FrozenPrefix` computes that state once per distinct token
sequence (the text inside its prompt, truncated to the maximum length; for the decoder path, the pair inside the
pair prompt) and keeps it; training and evaluation then run only the blocks from the first tuned one
(:meth:`FrozenPrefix.top_only`) from the cached states. Seeds, variants, epochs and dev/test evaluation over the
same texts share one cache.

Storage (:class:`PrefixStore`): in memory for the run, and on disk under ``<folder>/<fingerprint>/`` where the
fingerprint names the model weights, the start block and the storage precision (:func:`prefix_fingerprint`). Keys
are the sha256 of a text's real token ids, so the prompt and maximum length are part of the key. A shard is a
safetensors file (no pickle) holding ``keys`` (uint8 [n, 32]), ``lengths`` (int64 [n]), ``digests`` (uint8 [n, 32],
the sha256 of each entry's float32 bytes) and ``states`` (float32 [sum of lengths, d]); it is written to a
temporary file and renamed, so a kill leaves no partial shard. Entries are read lazily, one slice at a time, and
checked against their digest: a damaged shard is deleted with a warning and its texts are computed again.
``max_bytes`` bounds the disk space of the whole store root; when a write would pass it, a warning names the
folder, its size and the bound, and further states are kept in memory only for the rest of the run.

The states are always computed in float32 outside autocast, so bf16 and fp32 runs share one cache, and a run
from cached states gives the same loss and LoRA gradients as the uncached forward (fp32, 1e-5: tested).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from components.teacher.embedding_cache import clean_stale_temps, write_shard

logger = logging.getLogger(__name__)

SHARD_FORMAT = "flipkd-prefix-cache/1"
SHARD_GLOB = "shard-*.safetensors"
DEFAULT_MAX_BYTES = 10 * 1024**3


class _StopBottom(Exception):
    """Raised by the capture hook once the first tuned block's input is known."""


def token_key(ids: Sequence[int]) -> bytes:
    """The 32-byte sha256 of a text's real token ids (int64, little-endian)."""
    return hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).digest()


def _digest(states: torch.Tensor) -> bytes:
    return hashlib.sha256(states.contiguous().numpy().tobytes()).digest()


def prefix_fingerprint(model_fingerprint: str, start: int) -> str:
    """Folder name of one model's cached states entering block ``start`` (float32)."""
    import transformers

    settings = f"start={start};dtype=float32;transformers={transformers.__version__}"
    return f"{model_fingerprint[:32]}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


class PrefixCacheFull(UserWarning):
    """The disk bound of the prefix cache was reached: new states stay in memory for this run."""


class PrefixStore:
    """Hidden states by token key, in memory and (with ``folder``) on disk.

    Args:
        folder: the store root (``None``: memory only); shards go in ``folder/<fingerprint>/``.
        fingerprint: see :func:`prefix_fingerprint`.
        max_bytes: bound on the disk space of every fingerprint under ``folder`` together.

    Attributes:
        hits, misses: lookups answered from memory or disk / not found, since construction.
    """

    def __init__(self, folder: str | Path | None, fingerprint: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if not fingerprint or any(c in fingerprint for c in "/\\:") or fingerprint.startswith("."):
            raise ValueError(f"fingerprint must be a plain non-empty name, got {fingerprint!r}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.root = Path(folder) if folder is not None else None
        self.folder = self.root / fingerprint if self.root is not None else None
        self.fingerprint, self.max_bytes = fingerprint, max_bytes
        self.hits = self.misses = 0
        self._memory: dict[bytes, torch.Tensor] = {}
        self._pending: dict[bytes, torch.Tensor] = {}
        self._index: dict[bytes, tuple[Path, int, int, bytes]] | None = None  # key -> (shard, offset, length, digest)
        self._full_warned = False

    def __repr__(self) -> str:
        return f"PrefixStore({str(self.folder)!r}, hits={self.hits}, misses={self.misses})"

    @property
    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._memory.values())

    def refresh(self) -> None:
        """Forget the disk index: the next lookup sees shards other processes wrote meanwhile."""
        self._index = None

    def disk_bytes(self) -> int:
        """Bytes of every shard under the store root (all fingerprints)."""
        if self.root is None or not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.glob(f"*/{SHARD_GLOB}"))

    # ------------------------------------------------------------------------------------------- reading
    def _load_index(self) -> dict[bytes, tuple[Path, int, int, bytes]]:
        if self._index is not None:
            return self._index
        self._index = {}
        if self.folder is None or not self.folder.is_dir():
            return self._index
        clean_stale_temps(self.folder)
        for path in sorted(self.folder.glob(SHARD_GLOB)):
            try:
                with safe_open(str(path), framework="pt") as handle:
                    meta = handle.metadata() or {}
                    if meta.get("format") != SHARD_FORMAT:
                        raise ValueError("not a flipkd prefix-cache shard")
                    keys, lengths, digests = (handle.get_tensor(n) for n in ("keys", "lengths", "digests"))
                    rows = handle.get_slice("states").get_shape()[0]
                if int(lengths.sum()) != rows or len(keys) != len(lengths) or len(digests) != len(keys):
                    raise ValueError(f"{len(keys)} keys, {len(lengths)} lengths for {rows} state rows")
            except Exception as error:  # safetensors raises several types on truncated or garbled files
                self._discard(path, f"{type(error).__name__}: {error}")
                continue
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
            for key, offset, length, digest in zip(keys, offsets.tolist(), lengths.tolist(), digests, strict=True):
                self._index[key.numpy().tobytes()] = (path, offset, length, digest.numpy().tobytes())
        return self._index

    def _discard(self, path: Path, why: str) -> None:
        logger.warning("prefix cache: discarding damaged shard %s (%s); its texts will be computed again", path, why)
        path.unlink(missing_ok=True)
        if self._index is not None:
            self._index = {k: v for k, v in self._index.items() if v[0] != path}

    def get_many(self, keys: Sequence[bytes]) -> list[torch.Tensor | None]:
        """The cached states [length, d] of each key, or None for a miss."""
        out: list[torch.Tensor | None] = []
        for key in keys:
            found = self._memory.get(key)
            if found is None:
                entry = self._load_index().get(key)
                if entry is not None:
                    found = self._read(key, *entry)
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
            out.append(found)
        return out

    def _read(self, key: bytes, path: Path, offset: int, length: int, digest: bytes) -> torch.Tensor | None:
        try:
            with safe_open(str(path), framework="pt") as handle:
                states = handle.get_slice("states")[offset:offset + length].clone()
        except Exception as error:
            self._discard(path, f"{type(error).__name__}: {error}")
            return None
        if states.dtype != torch.float32 or _digest(states) != digest:
            self._discard(path, "an entry does not match its sha256")
            return None
        self._memory[key] = states
        return states

    # ------------------------------------------------------------------------------------------- writing
    def put_many(self, keys: Sequence[bytes], states: Sequence[torch.Tensor]) -> None:
        """Keep ``states`` in memory now; :meth:`flush` writes the new ones to disk as one shard."""
        for key, value in zip(keys, states, strict=True):
            if key not in self._memory:
                value = value.detach().to(torch.float32).contiguous()
                self._memory[key] = value
                if self.folder is not None and key not in self._load_index():
                    self._pending[key] = value

    def flush(self) -> Path | None:
        """Write the states added since the last flush as one shard (atomically); None when nothing was written."""
        if not self._pending or self.folder is None:
            return None
        pending, self._pending = self._pending, {}
        states = torch.cat(list(pending.values()))
        size = states.numel() * 4 + len(pending) * (64 + 8)
        used = self.disk_bytes()
        if used + size > self.max_bytes:
            if not self._full_warned:
                self._full_warned = True
                import warnings

                warnings.warn(f"prefix cache {self.root} holds {used / 1e9:.2f} GB and its bound is "
                              f"{self.max_bytes / 1e9:.2f} GB: new states are kept in memory for this run only. "
                              f"Delete old folders under {self.root} (each is rebuilt on demand) or raise the bound "
                              "(--prefix-cache-gb).", PrefixCacheFull, stacklevel=2)
            return None
        keys = torch.frombuffer(bytearray(b"".join(pending)), dtype=torch.uint8).view(len(pending), 32)
        digests = torch.frombuffer(bytearray(b"".join(_digest(v) for v in pending.values())),
                                   dtype=torch.uint8).view(len(pending), 32)
        lengths = torch.tensor([len(v) for v in pending.values()], dtype=torch.int64)
        meta = {"format": SHARD_FORMAT, "rows": str(len(pending)), "dim": str(states.shape[1]),
                "fingerprint": self.fingerprint}
        tensors = {"keys": keys, "lengths": lengths, "digests": digests, "states": states}
        path = write_shard(self.folder, lambda temp: save_file(tensors, str(temp), metadata=meta))
        index = self._load_index()
        offset = 0
        for key, value, digest in zip(pending, pending.values(), digests, strict=True):
            index[key] = (path, offset, len(value), digest.numpy().tobytes())
            offset += len(value)
        return path


def _decoder(model: nn.Module) -> nn.Module:
    """The transformer stack (``.layers``) of a causal LM, under peft or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder() if hasattr(base, "get_decoder") else base.model


class FrozenPrefix:
    """Blocks ``0 .. start-1`` of ``model`` (no LoRA there) as a cached function of the token ids.

    ``states(input_ids, attention_mask)`` returns the hidden states entering block ``start`` at every real token
    of the batch, in the padded batch's row-major order, from the store where it can and computing the rest.
    ``top_only()`` is a context in which the model's forward runs blocks ``start ..`` only, taking those states as
    ``inputs_embeds`` (the model's own forward: masks, positions and rotary embeddings are built as usual).
    """

    def __init__(self, model: nn.Module, start: int, store: PrefixStore) -> None:
        layers = _decoder(model).layers
        if not 0 < start < len(layers):
            raise ValueError(f"the frozen prefix must end inside the model: start {start}, {len(layers)} layers")
        lora = [n for n, _ in layers[:start].named_parameters() if "lora_" in n]
        if lora:
            raise ValueError(f"blocks below {start} hold LoRA weights (e.g. {lora[0]}): they are not frozen")
        self.model, self.start, self.store = model, start, store
        self.computed_texts = 0  # texts whose bottom this object ran

    def keys(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[bytes]:
        real = attention_mask.bool()
        return [token_key(row[mask].tolist()) for row, mask in zip(input_ids, real, strict=True)]

    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[real tokens of the batch, d], float32, row-major (rows in order, each row's real tokens in order)."""
        keys = self.keys(input_ids, attention_mask)
        found = self.store.get_many(keys)
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            computed = self._compute(input_ids[missing], attention_mask[missing])
            self.store.put_many([keys[i] for i in missing], computed)
            for i, value in zip(missing, computed, strict=True):
                found[i] = value
        return torch.cat(found)

    def inputs_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      layout: tuple[int, int] | None = None,
                      where: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The batch's states laid out as the top blocks' ``inputs_embeds``: [*layout, d], zero elsewhere.

        By default the padded batch's own layout (its real positions); a packed layout gives its shape and the
        (row, column) of each real token in the padded batch's order."""
        states = self.states(input_ids, attention_mask)
        embeds = states.new_zeros((*(input_ids.shape if layout is None else layout), states.shape[-1]))
        embeds[attention_mask.bool() if where is None else where] = states
        return embeds

    @torch.no_grad()
    def _compute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Run blocks below ``start`` in float32 and return each row's real-token states."""
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _StopBottom

        handle = _decoder(self.model).layers[self.start].register_forward_pre_hook(hook, with_kwargs=True)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        try:
            with torch.autocast("cpu", enabled=False):
                self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False)
        except _StopBottom:
            pass
        finally:
            handle.remove()
        hidden = captured[0].float()
        self.computed_texts += len(input_ids)
        return [hidden[i][mask].clone() for i, mask in enumerate(attention_mask.bool())]

    def fill(self, batches: Iterator[dict[str, torch.Tensor]], total: int, show_progress: bool = False) -> None:
        """Compute and store the states of every text in ``batches`` (tokenized), then write them to disk."""
        with tqdm(total=total, desc="prefix cache", unit="text", disable=not show_progress) as bar:
            for batch in batches:
                self.states(batch["input_ids"], batch["attention_mask"])
                bar.update(len(batch["input_ids"]))
                if len(self.store._pending) >= 1024:
                    self.store.flush()
        self.store.flush()

    @contextlib.contextmanager
    def top_only(self) -> Iterator[None]:
        """Within: the model's forward runs blocks ``start ..`` only (its input: the cached states)."""
        decoder = _decoder(self.model)
        full = decoder.layers
        decoder.layers = nn.ModuleList(list(full)[self.start:])
        try:
            yield
        finally:
            decoder.layers = full


def disk_store(cache_root: str | Path, model_path: str | Path, start: int,
               max_bytes: int = DEFAULT_MAX_BYTES) -> PrefixStore:
    """The shared on-disk store of a student folder's states entering block ``start``."""
    from components.models import model_fingerprint

    return PrefixStore(Path(cache_root) / "prefix_states", prefix_fingerprint(model_fingerprint(model_path), start),
                       max_bytes)
