"""The student training loop (METHOD.md, "Training defaults"), free of MLflow: callbacks report progress.

Per step: a batch of N labelled pairs is encoded in one forward over the 2N texts (dynamic padding,
forward stopped at the representation layer), the teacher matrix T is rebuilt from cached teacher
embeddings (T_ij = calibrate(cos(teacher(a_i), teacher(b_j))), so its diagonal is the pair's teacher
score), and the composite loss of :mod:`components.losses.composite_loss` is minimised with AdamW, linear
warmup over ``warmup_ratio`` of the steps then linear decay, and gradient clipping by value.

Batches are length-bucketed (pairs of similar length share a batch) and their texts packed into rows
(:mod:`components.student.packing`), so little padding is computed; batch order is still random. Training runs
inside :func:`fast_training_path` (eager attention, norm outputs cast once under autocast).
With LoRA in the top blocks only (``EncoderConfig.lora_layers``), each step runs those blocks from the frozen
prefix's cached states (:mod:`components.student.prefix_cache`). ``naive=True`` turns the speed choices off (full-length
padding, no packing, no prefix cache, full-depth forward, fp32, the model's own attention kernel) but keeps the
same batches, so its results match the default loop's and the
throughput benchmark can show the ratio alone.

One concept in a little over 500 lines: the loop, its config and the small pieces that serve it (precision, the fast
path, length-bucketed batches, the schedule, early stopping), none of them used by another component.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from tqdm.auto import tqdm

from components.losses.composite_loss import FlipKDLoss
from components.student.lora_encoder import LoraEncoder
from components.training.distributed import DistributedContext

PRECISIONS = ("auto", "fp32", "bf16")
CLIP_MODES = ("value", "norm")
EVAL_METRICS = ("ap", "roc_auc", "f1")


@dataclass
class TrainConfig:
    # METHOD.md (PAPER) says 3e-5; measured here, it does not move the LoRA weights in a few hundred steps
    # (demo dev F1 0.667 = all-positive, AP 0.45); 1e-3 reached dev F1 0.741, AP 0.680 (README, "Defaults").
    learning_rate: float = 1e-3
    scalar_learning_rate: float = 1e-2
    weight_decay: float = 0.1
    warmup_ratio: float = 0.05
    # METHOD.md clips by value to [-1, 1]; "norm" rescales the whole gradient to at most clip_value instead
    clip_mode: str = "value"
    clip_value: float = 1.0
    # the teacher-driven parts (L_dist, L_MCL) ramp in linearly over this share of the steps (0: full from step 1)
    teacher_warmup_ratio: float = 0.0
    batch_size: int = 16
    epochs: float = 1.0
    max_steps: int = 0
    seed: int = 0
    # fp32: the same model on every machine, and the exact result of the naive loop (benchmarks/RESULTS.md,
    # throughput). "bf16" / "auto" (bf16 where the CPU has native bf16) train about 1.5x faster there but part
    # from the fp32 trajectory: dev F1 0.667 against 0.700 after 30 demo steps (README, "Defaults").
    precision: str = "fp32"
    bucket_batches: int = 50
    # texts of a step packed into rows of about this many tokens (components.student.packing); 0: padded batches
    pack_capacity: int = 256
    naive: bool = False
    log_every: int = 1
    checkpoint_every: int = 0
    # Early stopping (off by default): every ``eval_every`` steps the trainer's ``evaluate`` callback scores dev
    # (higher is better); the best parameters are kept and restored at the end; ``patience`` evaluations
    # without improvement end training early (0: never stop early, still keep the best).
    eval_every: int = 0
    patience: int = 0
    # what the pipeline's evaluate callback scores on dev: "ap", "roc_auc" or "f1" (F1 at the best dev threshold
    # overfitted a small dev split in stop 16, so the threshold-free AP is the default)
    eval_metric: str = "ap"

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("epochs must be > 0 (or give max_steps)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.clip_value <= 0:
            raise ValueError(f"clip_value must be > 0, got {self.clip_value}")
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {self.clip_mode!r}")
        if not 0 <= self.teacher_warmup_ratio <= 1:
            raise ValueError(f"teacher_warmup_ratio must be in [0, 1], got {self.teacher_warmup_ratio}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: off), got {self.checkpoint_every}")
        if self.eval_every < 0 or self.patience < 0:
            raise ValueError(f"eval_every and patience must be >= 0, got {self.eval_every} and {self.patience}")
        if self.pack_capacity < 0:
            raise ValueError(f"pack_capacity must be >= 0 (0: off), got {self.pack_capacity}")
        if self.eval_metric not in EVAL_METRICS:
            raise ValueError(f"eval_metric must be one of {EVAL_METRICS}, got {self.eval_metric!r}")
        if self.patience and not self.eval_every:
            raise ValueError("patience needs eval_every > 0 (how often dev is evaluated)")

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matmul (AVX512-BF16 or AMX); elsewhere bf16 autocast is slow."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return precision


@contextlib.contextmanager
def fast_training_path(model: torch.nn.Module) -> Iterator[None]:
    """Training-only speed settings for a transformers model; numerics unchanged; undone on exit.

    - Eager attention: on CPU the backward of SDPA's flash-attention kernel took 17% of a training step on
      short texts (32 x ~20 tokens, SmolLM2-135M, bf16), several times eager attention's. Inference keeps
      the model's own implementation (the same outputs; ONNX export traces it).
    - Pre-norm outputs cast to the autocast dtype once: every consumer of a block's attention and MLP input
      norms is a linear that autocast would cast to bf16 anyway, one copy per module (q, k, v and their LoRA
      A read the same tensor), and PEFT's cast of each LoRA input back to fp32 is off. Outside autocast the
      hook does nothing and every input is fp32 already.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = getattr(base.config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(base, "set_attn_implementation")
    if switch:
        base.set_attn_implementation("eager")

    def cast(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu") and output.dtype == torch.float32:
            return output.to(torch.get_autocast_dtype("cpu"))
        return output

    norms = []
    for layer in base.modules():
        if hasattr(layer, "input_layernorm"):  # a pre-norm decoder block
            # Gemma applies post_attention_layernorm to the attention output (before the residual add), and
            # pre_feedforward_layernorm feeds the MLP; Llama-style blocks feed the MLP from post_attention_layernorm
            mlp_norm = getattr(layer, "pre_feedforward_layernorm", None) or getattr(layer, "post_attention_layernorm",
                                                                                  None)
            norms += [n for n in (layer.input_layernorm, mlp_norm) if n is not None]
    hooks = [n.register_forward_hook(cast) for n in norms]
    # PEFT casts each LoRA module's input to the adapter's dtype (fp32) before dropout and A: under autocast
    # that undoes the cast above and autocast casts it back for A, two copies per module; A's matmul runs in
    # bf16 either way
    lora_layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    casting = [getattr(m, "cast_input_dtype_enabled", True) for m in lora_layers]
    for m in lora_layers:
        m.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for m, flag in zip(lora_layers, casting, strict=True):
            m.cast_input_dtype_enabled = flag
        if switch:
            base.set_attn_implementation(before)


@dataclass
class TrainingPairs:
    """What a training step needs, aligned row by row.

    ``teacher_a``/``teacher_b`` are the teacher's L2-normalised embeddings of each side; ``calibrate``
    maps teacher cosines to scores in [0, 1]; ``keep`` is the noise filter's mask.
    """

    text_a: list[str]
    text_b: list[str]
    labels: np.ndarray
    teacher_a: np.ndarray
    teacher_b: np.ndarray
    calibrate: Callable[[np.ndarray], np.ndarray]
    keep: np.ndarray
    labelled: np.ndarray | None = None  # False for teacher-labelled extra pairs (no gold label: no L_sup)

    def __len__(self) -> int:
        return len(self.text_a)

    def teacher_cosine_matrix(self, index: list[int]) -> torch.Tensor:
        """The teacher's raw in-batch cosines (L_dist's ``cosine`` form)."""
        return torch.from_numpy(np.asarray(self.teacher_a[index] @ self.teacher_b[index].T, dtype=np.float32))

    def teacher_matrix(self, index: list[int]) -> torch.Tensor:
        """T: the calibrated in-batch teacher scores in [0, 1]."""
        return torch.from_numpy(np.asarray(self.calibrate(self.teacher_a[index] @ self.teacher_b[index].T),
                                           dtype=np.float32))


def bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, bucket_batches: int) -> list[list[int]]:
    """Shuffle, sort by length inside windows of ``bucket_batches`` batches, cut, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = max(1, bucket_batches) * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def warmup_linear(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


StepCallback = Callable[[int, dict[str, float]], None]
CheckpointCallback = Callable[[int], None]
EvaluateCallback = Callable[[int], float]


@dataclass
class EarlyStopping:
    """The best dev score so far, its step and parameters, and the evaluations since it last improved."""

    best_score: float = -math.inf
    best_step: int = 0
    bad_evals: int = 0
    best_parameters: dict[str, torch.Tensor] | None = None
    stopped: bool = False

    def to_json(self) -> dict:
        return {"best_score": None if self.best_score == -math.inf else self.best_score, "best_step": self.best_step,
                "bad_evals": self.bad_evals, "stopped": self.stopped}

    @classmethod
    def from_json(cls, data: dict, best_parameters: dict[str, torch.Tensor] | None) -> EarlyStopping:
        score = data.get("best_score")
        return cls(-math.inf if score is None else float(score), int(data["best_step"]), int(data["bad_evals"]),
                   best_parameters, bool(data.get("stopped", False)))


class Trainer:
    """Trains ``encoder`` with ``loss`` on ``pairs``; ``on_step(step, metrics)`` receives every logged step.

    ``on_checkpoint(step)`` is called every ``config.checkpoint_every`` steps and after the last step (never
    when ``checkpoint_every`` is 0), right after ``on_step``; it typically saves :meth:`state_dict`.

    ``evaluate(step) -> score`` (higher is better, e.g. dev F1), with ``config.eval_every > 0``: called every
    ``eval_every`` steps and after the last one; the best parameters are kept and restored when training ends,
    and ``config.patience`` evaluations without improvement stop training early.

    ``distributed`` (a :class:`~components.training.distributed.DistributedContext` with ``world_size > 1``): the
    encoder runs in DistributedDataParallel, each rank encodes its slice of every global batch of
    ``config.batch_size`` pairs, and the loss is computed on the all-gathered representations, so a step
    equals the single-process step on the same global batch. Pass the callbacks on rank 0 only.
    """

    def __init__(self, encoder: LoraEncoder, loss: FlipKDLoss, pairs: TrainingPairs, config: TrainConfig,
                 on_step: StepCallback | None = None, show_progress: bool = True,
                 on_checkpoint: CheckpointCallback | None = None,
                 distributed: DistributedContext | None = None, evaluate: EvaluateCallback | None = None) -> None:
        if len(pairs) == 0:
            raise ValueError("no training pairs left (did the noise filter drop them all?)")
        self.distributed = distributed or DistributedContext()
        if self.distributed.enabled and loss.config.sup_mode != "representation":
            raise ValueError(f"sup_mode {loss.config.sup_mode!r} is not supported in multi-process training yet; "
                             "use sup_mode 'representation' or one process")
        self._forward = self.distributed.wrap(encoder)
        self.encoder, self.loss, self.pairs, self.config = encoder, loss, pairs, config
        self.on_step, self.show_progress, self.on_checkpoint = on_step, show_progress, on_checkpoint
        self.evaluate = evaluate
        self.early = EarlyStopping()
        self.precision = "fp32" if config.naive else resolve_precision(config.precision)
        self.steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
        self.total_steps = config.max_steps or max(1, round(self.steps_per_epoch * config.epochs))
        groups = [{"params": list(encoder.trainable_parameters()), "lr": config.learning_rate,
                   "weight_decay": config.weight_decay},
                  {"params": list(loss.parameters()), "lr": config.scalar_learning_rate, "weight_decay": 0.0}]
        # fused: one kernel per parameter group instead of a dozen small ops per tensor (4% of a CPU step)
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           warmup_linear(self.total_steps, config.warmup_ratio))
        self.step = 0
        self.data_seconds = 0.0
        self.compute_seconds = 0.0
        self.eval_seconds = 0.0  # the last dev evaluation's: what scoring dev once costs (a pause's time guess)
        self._lengths = [max(len(a), len(b)) for a, b in zip(pairs.text_a, pairs.text_b, strict=True)]

    # ----------------------------------------------------------------- resumable state
    def trained_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Every parameter the optimiser updates, in optimiser order: ``encoder.<name>``, ``loss.<name>``."""
        names = {id(p): f"encoder.{n}" for n, p in self.encoder.model.named_parameters() if p.requires_grad}
        names.update({id(p): f"loss.{n}" for n, p in self.loss.named_parameters()})
        return {names[id(p)]: p for group in self.optimizer.param_groups for p in group["params"]}

    def state_dict(self) -> dict:
        """A snapshot (tensors are copies) of everything the next step depends on.

        Keys: ``step`` (data position), ``parameters`` {name: tensor}, ``parameter_names`` (optimiser order),
        ``optimizer`` and ``scheduler`` (their torch state dicts), ``rng`` (global ``torch`` CPU state,
        ``python`` and ``numpy`` states: LoRA dropout draws from torch's), ``timing``.
        """
        params = self.trained_parameters()
        optimizer = self.optimizer.state_dict()
        optimizer = {"state": {i: {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in s.items()}
                               for i, s in optimizer["state"].items()},
                     "param_groups": copy.deepcopy(optimizer["param_groups"])}
        return {"step": self.step, "total_steps": self.total_steps,
                "parameters": {name: p.detach().clone() for name, p in params.items()},
                "parameter_names": list(params), "optimizer": optimizer,
                "scheduler": copy.deepcopy(self.scheduler.state_dict()),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
                "timing": {"data_seconds": self.data_seconds, "compute_seconds": self.compute_seconds},
                "early_stopping": self.early.to_json(),
                "best_parameters": ({k: v.clone() for k, v in self.early.best_parameters.items()}
                                    if self.early.best_parameters is not None else None)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output: the next :meth:`train` continues exactly where it stopped."""
        params = self.trained_parameters()
        if list(state["parameter_names"]) != list(params):
            missing = sorted(set(params) - set(state["parameter_names"]))
            extra = sorted(set(state["parameter_names"]) - set(params))
            raise ValueError(f"the saved training state is for other trainable parameters (model or LoRA settings "
                             f"differ): {len(missing)} missing, e.g. {missing[:2]}; {len(extra)} unknown, "
                             f"e.g. {extra[:2]}")
        if int(state["total_steps"]) != self.total_steps:
            raise ValueError(f"the saved training state is for a {state['total_steps']}-step schedule, "
                             f"this trainer runs {self.total_steps} steps")
        with torch.no_grad():
            for name, p in params.items():
                value = state["parameters"][name]
                if value.shape != p.shape:
                    raise ValueError(f"saved parameter {name} has shape {tuple(value.shape)}, "
                                     f"expected {tuple(p.shape)}")
                p.copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        self.step = int(state["step"])
        self.data_seconds = float(state["timing"]["data_seconds"])
        self.compute_seconds = float(state["timing"]["compute_seconds"])
        if state.get("early_stopping") is not None:
            best = state.get("best_parameters")
            self.early = EarlyStopping.from_json(state["early_stopping"],
                                                 {k: v.clone() for k, v in best.items()} if best else None)

    # ----------------------------------------------------------------- training
    def batches(self) -> Iterator[list[int]]:
        """Endless stream of batches, epoch after epoch, seeded."""
        epoch = 0
        while True:
            rng = random.Random(self.config.seed * 1_000_003 + epoch)
            yield from bucketed_batches(self._lengths, self.config.batch_size, rng, self.config.bucket_batches)
            epoch += 1

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.encoder.tokenize(texts)
        if self.config.naive:  # full-length padding, as a naive loop would do
            width = self.encoder.config.max_length
            pad = width - batch["input_ids"].shape[1]
            if pad > 0:
                batch = {"input_ids": torch.nn.functional.pad(batch["input_ids"], (0, pad),
                                                              value=self.encoder.tokenizer.pad_token_id),
                         "attention_mask": torch.nn.functional.pad(batch["attention_mask"], (0, pad), value=0)}
        return batch

    def train_step(self, index: list[int]) -> dict[str, float]:
        t0 = time.perf_counter()
        p = self.pairs
        local = self.distributed.local_slice(index) if self.distributed.enabled else index
        rows = local or index[:1]  # a rank with no pair this step still runs the forward DDP expects
        texts = [p.text_a[i] for i in rows] + [p.text_b[i] for i in rows]
        batch = self._tokenize(texts)
        teacher = p.teacher_matrix(index)
        teacher_cosine = p.teacher_cosine_matrix(index) if self.loss.config.distill_mode == "cosine" else None
        labels = torch.as_tensor(p.labels[index], dtype=torch.float32)
        keep = torch.as_tensor(p.keep[index], dtype=torch.bool)
        t1 = time.perf_counter()
        self.encoder.train()
        self.encoder._stop_early = not self.config.naive
        label_logprobs = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            z = self._forward(**batch, pack_capacity=0 if self.config.naive else self.config.pack_capacity,
                              use_prefix=not self.config.naive)
            gold = index if p.labelled is None else [i for i in index if p.labelled[i]]
            if self.loss.config.sup_mode != "representation" and gold:  # L_sup through the decoder path
                label_logprobs = self.encoder.label_logprobs(**self.encoder.tokenize_pairs(
                    [p.text_a[i] for i in gold], [p.text_b[i] for i in gold]), use_prefix=not self.config.naive)
        z = z.float()
        if self.distributed.enabled:  # the global batch, in batch order, differentiable
            pieces = self.distributed.all_gather_with_grad(z if local else z[:0])
            z_a = torch.cat([q[: len(q) // 2] for q in pieces])
            z_b = torch.cat([q[len(q) // 2:] for q in pieces])
        else:
            z_a, z_b = z[: len(index)], z[len(index):]
        labelled = None if p.labelled is None else torch.as_tensor(p.labelled[index], dtype=torch.bool)
        parts = self.loss(z_a, z_b, teacher, labels, keep, label_logprobs=label_logprobs, labelled=labelled,
                          teacher_weight=self.teacher_weight(), teacher_cosine=teacher_cosine)
        self.optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        params = [q for group in self.optimizer.param_groups for q in group["params"]]
        if self.config.clip_mode == "norm":
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.clip_value))
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, float("inf")))
            torch.nn.utils.clip_grad_value_(params, self.config.clip_value)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.encoder._stop_early = True
        t2 = time.perf_counter()
        self.data_seconds += t1 - t0
        self.compute_seconds += t2 - t1
        out = {f"loss/{k}": float(v.detach()) for k, v in parts.items()}
        out.update({"lr": lr, "grad_norm": grad_norm, "pairs_per_s": len(index) / (t2 - t0),
                    "tokens": float(batch["attention_mask"].sum()),
                    "padded_tokens": float(self.encoder.computed_tokens)})
        return out

    def teacher_weight(self) -> float:
        """Factor of the teacher-driven loss weights at this step: a linear ramp over ``teacher_warmup_ratio``."""
        ramp = self.config.teacher_warmup_ratio * self.total_steps
        return 1.0 if ramp <= 0 else min(1.0, (self.step + 1) / ramp)

    def train(self, until_step: int | None = None) -> dict[str, float]:
        """Run to ``total_steps`` (or ``until_step``); returns the last step's metrics plus totals."""
        end = min(self.total_steps, until_step or self.total_steps)
        stream = self.batches()
        for _ in range(self.step):  # resume at the same data position
            next(stream)
        last: dict[str, float] = {}
        start = time.perf_counter()
        pairs_seen = 0
        with contextlib.ExitStack() as speed, tqdm(total=end, initial=self.step, desc="train", unit="step",
                                                   disable=not self.show_progress) as bar:
            speed.enter_context(self._speed())
            while self.step < end and not self.early.stopped:
                index = next(stream)
                last = self.train_step(index)
                self.step += 1
                pairs_seen += len(index)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss/total']:.4f}")
                if self.on_step and (self.step % self.config.log_every == 0 or self.step == end):
                    self.on_step(self.step, last)
                if self._evaluating and (self.step % self.config.eval_every == 0 or self.step == self.total_steps):
                    speed.close()  # dev is scored exactly as the final evaluation scores it, outside the fast path
                    self._evaluate()
                    speed.enter_context(self._speed())
                every = self.config.checkpoint_every
                if self.on_checkpoint and every and (self.step % every == 0 or self.step == self.total_steps
                                                     or self.early.stopped):
                    self.on_checkpoint(self.step)
                if self.early.stopped:
                    break
        elapsed = time.perf_counter() - start
        last["train_seconds"] = elapsed
        last["train_pairs_per_s"] = pairs_seen / elapsed if elapsed > 0 else 0.0
        total = self.data_seconds + self.compute_seconds
        last["data_share"] = self.data_seconds / total if total else 0.0
        if self._evaluating and (self.step >= self.total_steps or self.early.stopped):
            self._restore_best()
            last.update({"best_dev_score": self.early.best_score, "best_step": float(self.early.best_step),
                         "stopped_at_step": float(self.step), "stopped_early": float(self.early.stopped)})
        return last

    def _speed(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.config.naive else fast_training_path(self.encoder.model)

    @property
    def _evaluating(self) -> bool:
        """Early stopping is on: an ``evaluate`` callback and ``config.eval_every > 0``."""
        return self.evaluate is not None and self.config.eval_every > 0

    def _evaluate(self) -> None:
        """Score dev; keep the parameters if they are the best so far; stop after ``patience`` misses."""
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # evaluation must not change the training's random stream
            score = float(self.evaluate(self.step))
        self.eval_seconds = time.perf_counter() - started
        self.encoder.train()
        if score > self.early.best_score:
            self.early.best_score, self.early.best_step, self.early.bad_evals = score, self.step, 0
            self.early.best_parameters = {k: p.detach().clone() for k, p in self.trained_parameters().items()}
            return
        self.early.bad_evals += 1
        if self.config.patience and self.early.bad_evals >= self.config.patience and self.step < self.total_steps:
            self.early.stopped = True

    def _restore_best(self) -> None:
        if self.early.best_parameters is None or self.early.best_step == self.step:
            return
        with torch.no_grad():
            for name, p in self.trained_parameters().items():
                p.copy_(self.early.best_parameters[name])
