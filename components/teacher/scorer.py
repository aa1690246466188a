"""The teacher as a scorer: texts -> mean-pooled, L2-normalised embeddings -> cosines (METHOD.md, "Teacher signal").

``TeacherScorer.encode`` deduplicates the texts of a call, looks them up in an optional persistent
:class:`~components.teacher.embedding_cache.EmbeddingCache`, encodes only the misses under ``torch.inference_mode`` and
stores them back.

A text's vector must not depend on which other texts were encoded with it, or a run would depend on what the
cache already held (measured with MiniLM: the same text in batches of another size or padded to another
length differs by up to 2e-7, enough to change a training trajectory). So every text is padded to its own
length rounded up to a multiple of ``PAD_MULTIPLE`` and encoded only with texts of that padded length, in
batches of exactly ``batch_size`` rows (a short batch is filled with copies of its last row): the shapes a text
meets are then a function of the text alone, and its vector is the same bits in any company, on one CPU kind
and thread count. The teacher's raw
cosines are turned into scores in [0, 1] by :class:`components.teacher.calibration.PlattCalibrator`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from components.models import load_teacher, model_fingerprint, resolve_teacher
from components.pooling import pool_normalized
from components.teacher.embedding_cache import EmbeddingCache

TEACHER_POOLING = "mean"
PAD_MULTIPLE = 8


def fixed_shape_batches(lengths: Sequence[int], rows: int, max_length: int,
                        multiple: int = PAD_MULTIPLE) -> list[tuple[int, list[int]]]:
    """``(padded length, positions)`` batches of at most ``rows`` positions whose padded length is their own.

    A text of ``n`` tokens is padded to ``min(ceil(n / multiple) * multiple, max_length)`` and batched only with
    texts padded to the same length, in the order given.
    """
    groups: dict[int, list[int]] = {}
    for position, n in enumerate(lengths):
        groups.setdefault(min(-(-n // multiple) * multiple, max_length), []).append(position)
    return [(length, members[start:start + rows]) for length, members in sorted(groups.items())
            for start in range(0, len(members), rows)]


def embed_batch(model: torch.nn.Module, tokenizer, texts: Sequence[str], max_length: int,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Mean-pooled, L2-normalised float32 [len(texts), d] embeddings of one batch (gradients follow the mode)."""
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    encoded = {name: tensor.to(device) for name, tensor in encoded.items()}
    hidden = model(**encoded).last_hidden_state
    return pool_normalized(hidden, encoded["attention_mask"], TEACHER_POOLING)


def embed_fixed_batch(model: torch.nn.Module, tokenizer, texts: Sequence[str], length: int, rows: int,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """Vectors of ``texts`` (each at most ``length`` tokens) padded to ``length``, in a batch of exactly ``rows``."""
    filled = list(texts) + [texts[-1]] * (rows - len(texts))
    encoded = tokenizer(filled, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    encoded = {name: tensor.to(device) for name, tensor in encoded.items()}
    hidden = model(**encoded).last_hidden_state
    return pool_normalized(hidden, encoded["attention_mask"], TEACHER_POOLING)[: len(texts)]


class TeacherScorer:
    """Encode texts with the teacher and score pairs by cosine.

    Args:
        model_path: a teacher spec (see :func:`components.models.resolve_teacher`): a folder or a packaged name.
        batch_size: texts per forward pass.
        max_length: tokens per text (longer texts are truncated).
        cache: an :class:`EmbeddingCache` (its fingerprint must be :attr:`fingerprint`), a cache root folder
            (the cache is made for this scorer), or None for no cache.
        show_progress: a tqdm bar over the batches encoded.
        device: torch device.

    Attributes:
        fingerprint: id of the embeddings this scorer makes: the model fingerprint plus pooling, max length and
            batch shape (two scorers with the same fingerprint produce the same vectors, so they may share a cache).
        dim: embedding size.
        cache_hits, cache_misses: the cache's counters (0 without a cache). ``encode`` deduplicates first, so
            they count distinct texts per call.
    """

    def __init__(self, model_path: str | Path, *, batch_size: int = 64, max_length: int = 128,
                 cache: EmbeddingCache | str | Path | None = None, show_progress: bool = True,
                 device: str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.model_path = resolve_teacher(str(model_path))
        self.batch_size, self.max_length = batch_size, max_length
        self.show_progress, self.device = show_progress, device
        self.model, self.tokenizer = load_teacher(self.model_path)
        self.model.to(device)
        self.dim = int(self.model.config.hidden_size)
        weights = model_fingerprint(self.model_path)
        settings = f"pooling={TEACHER_POOLING};max_length={max_length};rows={batch_size};pad={PAD_MULTIPLE}"
        self.fingerprint = f"{weights[:32]}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"
        if cache is None or isinstance(cache, EmbeddingCache):
            self.cache = cache
        else:
            self.cache = EmbeddingCache(cache, self.fingerprint)
        if self.cache is not None and self.cache.model_fingerprint != self.fingerprint:
            raise ValueError(f"the cache holds embeddings of {self.cache.model_fingerprint}, this teacher makes "
                             f"{self.fingerprint}; pass the cache folder instead and the scorer picks its own")

    @property
    def cache_hits(self) -> int:
        return self.cache.hits if self.cache is not None else 0

    @property
    def cache_misses(self) -> int:
        return self.cache.misses if self.cache is not None else 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), d], unit-norm rows, in the order of ``texts``."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        texts = list(texts)
        unique = list(dict.fromkeys(texts))
        vectors = np.zeros((len(unique), self.dim), dtype=np.float32)
        found = self.cache.get_many(unique) if self.cache is not None else {}
        for position, row in found.items():
            vectors[position] = row
        todo = [i for i in range(len(unique)) if i not in found]
        if todo:
            lengths = [len(ids) for ids in self.tokenizer([unique[i] for i in todo], truncation=True,
                                                          max_length=self.max_length)["input_ids"]]
            batches = fixed_shape_batches(lengths, self.batch_size, self.max_length)
            was_training = self.model.training
            self.model.eval()
            with torch.inference_mode():
                for length, batch in tqdm(batches, desc="teacher encode", unit="batch", disable=not self.show_progress):
                    rows = [todo[i] for i in batch]
                    vectors[rows] = embed_fixed_batch(self.model, self.tokenizer, [unique[i] for i in rows], length,
                                                      self.batch_size, self.device).cpu().numpy()
            self.model.train(was_training)
            if self.cache is not None:
                self.cache.put_many([unique[i] for i in todo], vectors[todo])
        index = {text: i for i, text in enumerate(unique)}
        return vectors[[index[text] for text in texts]] if texts else vectors

    def _encode_pairs(self, text_a: Sequence[str], text_b: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        text_a, text_b = list(text_a), list(text_b)
        both = self.encode(text_a + text_b)  # one call: texts shared by both sides are encoded once
        return both[: len(text_a)], both[len(text_a):]

    def pair_cosine(self, text_a: Sequence[str], text_b: Sequence[str]) -> np.ndarray:
        """float32 [N]: cos(a_i, b_i)."""
        if len(text_a) != len(text_b):
            raise ValueError(f"text_a and text_b must have the same length, got {len(text_a)} and {len(text_b)}")
        emb_a, emb_b = self._encode_pairs(text_a, text_b)
        return np.clip((emb_a * emb_b).sum(axis=1), -1.0, 1.0)

    def cosine_matrix(self, text_a: Sequence[str], text_b: Sequence[str]) -> np.ndarray:
        """float32 [len(text_a), len(text_b)]: T_ij = cos(a_i, b_j) (in-batch teacher scores before calibration)."""
        emb_a, emb_b = self._encode_pairs(text_a, text_b)
        return np.clip(emb_a @ emb_b.T, -1.0, 1.0)
