"""Fine-tune the teacher encoder on the training pairs with CoSENT (METHOD.md, "Roles": fine-tuned first, then frozen).

Mean pooling and L2 normalisation as :class:`components.teacher.scorer.TeacherScorer`; AdamW with linear warmup then
linear decay to 0; seeded (shuffling and dropout). The result is saved as a normal
Hugging Face model folder (safetensors + tokenizer), written atomically with a ``flipkd_checksum.json`` so its
fingerprint is exact; the sentence-transformers side files of the base folder (``modules.json``, pooling
config) are copied along, so the folder also loads in sentence-transformers.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from components.losses.cosent_loss import CoSENTLoss
from components.model_cache import write_folder_atomically
from components.models import load_teacher, model_fingerprint, resolve_teacher
from components.teacher.scorer import TEACHER_POOLING, embed_batch

SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                               "1_Pooling", "2_Normalize")
FINETUNE_SIDECAR = "flipkd_teacher.json"


@dataclass
class TeacherFinetuneConfig:
    """Teacher fine-tuning options (defaults: RECIPES.md, "Speed facts": CoSENT, batch 32, lr 2e-5)."""

    epochs: int = 1  # passes over the training pairs
    learning_rate: float = 2e-5  # AdamW peak learning rate
    batch_size: int = 32  # pairs per step
    max_length: int = 128  # tokens per text
    warmup_ratio: float = 0.1  # share of the steps with a linear warmup from 0
    seed: int = 0  # shuffling and dropout
    scale: float = 20.0  # CoSENT scale (multiplies the cosine differences)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradient norm clipping; 0 turns it off

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.max_length < 2:
            raise ValueError("epochs must be >= 1, batch_size >= 2 (CoSENT compares pairs), max_length >= 2")
        if self.learning_rate <= 0 or not 0.0 <= self.warmup_ratio < 1.0 or self.scale <= 0:
            raise ValueError("learning_rate and scale must be > 0 and warmup_ratio in [0, 1)")


def _check_train(train: pd.DataFrame) -> pd.DataFrame:
    missing = {"text_a", "text_b", "label"} - set(train.columns)
    if missing:
        raise ValueError(f"train needs columns text_a, text_b, label; missing {sorted(missing)}")
    if len(train) < 2:
        raise ValueError("train needs at least 2 pairs")
    labels = train["label"].astype(float)
    if labels.isna().any() or labels.min() < 0.0 or labels.max() > 1.0:
        raise ValueError("labels must be numbers in [0, 1]")
    return pd.DataFrame({"text_a": train["text_a"].astype(str).tolist(), "text_b": train["text_b"].astype(str).tolist(),
                         "label": labels.to_numpy()})


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def finetune_teacher(model_path: str | Path, train: pd.DataFrame, out_dir: str | Path,
                     config: TeacherFinetuneConfig | None = None, show_progress: bool = True,
                     log_fn: Callable[[int, dict[str, float]], None] | None = None, *, overwrite: bool = False) -> Path:
    """Fine-tune the teacher at ``model_path`` on ``train`` (text_a, text_b, label in [0, 1]) into ``out_dir``.

    Args:
        model_path: a teacher spec (folder or packaged name).
        train: the training pairs.
        out_dir: the new model folder; must not exist unless ``overwrite`` (then it is replaced atomically).
        config: :class:`TeacherFinetuneConfig`.
        show_progress: tqdm bar over the steps.
        log_fn: called after every step as ``log_fn(step, {"loss": ..., "lr": ...})`` (step counts from 1).

    Returns:
        ``out_dir``, a folder that :func:`components.models.resolve_teacher` and ``TeacherScorer`` load.
    """
    from transformers import get_linear_schedule_with_warmup

    config = config or TeacherFinetuneConfig()
    data = _check_train(train)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    source = resolve_teacher(str(model_path))
    _seed_everything(config.seed)
    model, tokenizer = load_teacher(source)
    model.train()

    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    loss_fn = CoSENTLoss(scale=config.scale)
    generator = np.random.default_rng(config.seed)

    step = 0
    losses: list[float] = []
    with tqdm(total=total_steps, desc="teacher fine-tune", unit="step", disable=not show_progress) as bar:
        for _ in range(config.epochs):
            order = generator.permutation(len(data))
            for start in range(0, len(data), config.batch_size):
                batch = data.iloc[order[start:start + config.batch_size]]
                if len(batch) < 2:  # a lone last pair has nothing to be ranked against
                    continue
                emb = embed_batch(model, tokenizer, batch["text_a"].tolist() + batch["text_b"].tolist(),
                                  config.max_length)
                labels = torch.tensor(batch["label"].to_numpy(), dtype=emb.dtype)
                loss = loss_fn(emb[: len(batch)], emb[len(batch):], labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                lr = float(scheduler.get_last_lr()[0])
                scheduler.step()
                step += 1
                losses.append(float(loss.detach()))
                if log_fn is not None:
                    log_fn(step, {"loss": losses[-1], "lr": lr})
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()

    sidecar = {"base_model": str(source), "base_fingerprint": model_fingerprint(source), "pooling": TEACHER_POOLING,
               "normalize": True, "loss": "CoSENT", "steps": step, "train_pairs": len(data),
               "final_loss": losses[-1] if losses else None, "config": asdict(config)}

    def build(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        for name in SENTENCE_TRANSFORMERS_FILES:
            item = source / name
            if item.is_dir():
                shutil.copytree(item, folder / name)
            elif item.is_file():
                shutil.copy2(item, folder / name)
        (folder / FINETUNE_SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")

    return write_folder_atomically(out_dir, build, source={"finetuned_from": sidecar["base_fingerprint"]},
                                   replace=overwrite)
