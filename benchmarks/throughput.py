"""Training and inference throughput against this machine's own matmul peak, in one run.

    python -m benchmarks.throughput [--steps 30] [--quick]

Measures: the matmul peak (large ``torch.mm``, fp32; bf16 where the CPU has native bf16), then for the
packaged student at the default config on the demo training split: training pairs/s and model FLOP
utilisation (MFU = 4 x parameters needed x real tokens per second / matmul peak of the precision used;
parameters needed = those of the layers the representation actually passes through), the same for the
``--naive`` loop on the same batches, dev F1 of both after the same number of steps, the same for the
``bf16`` option when the default is fp32 and the CPU has native bf16, teacher texts/s and student
``encode`` texts/s. Writes ``benchmarks/results/throughput.json`` and its section of
``benchmarks/RESULTS.md``. Absolute times on a shared machine are noisy: compare the ratios.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks._results import write_section
from components.composite_loss import FlipKDLoss, LossConfig
from components.data import read_pairs
from components.demo_data import write_demo
from components.lora_encoder import EncoderConfig, LoraEncoder
from components.metrics import best_f1
from components.models import load_student, resolve_student
from components.noise_filter import DualThresholdFilter
from components.teacher import TeacherScorer
from components.teacher_signal import compute_teacher_signal
from components.trainer import PRECISIONS, TrainConfig, Trainer, TrainingPairs, cpu_supports_bf16

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"


def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return best


def needed_parameters(encoder: LoraEncoder) -> int:
    """Parameters of the blocks before the representation layer plus its input norm and module (no embeddings)."""
    base = encoder.model.get_base_model()
    layers = base.get_decoder().layers
    count = sum(p.numel() for layer in layers[: encoder.layer_index] for n, p in layer.named_parameters()
                if "lora_" not in n)
    last = layers[encoder.layer_index]
    count += sum(p.numel() for n, p in last.named_parameters() if "input_layernorm" in n
                 or (encoder.config.module in n and "lora_" not in n))
    return count


def train_run(pairs: TrainingPairs, dev, naive: bool, steps: int, seed: int,
              encoder_config: EncoderConfig | None = None, precision: str = TrainConfig.precision) -> dict:
    torch.manual_seed(seed)
    model, tokenizer = load_student(resolve_student())
    encoder = LoraEncoder(model, tokenizer, encoder_config or EncoderConfig())
    tokens, times = [], []

    def on_step(step: int, metrics: dict) -> None:
        tokens.append(metrics["tokens"])
        times.append(time.perf_counter())

    trainer = Trainer(encoder, FlipKDLoss(LossConfig()), pairs,
                      TrainConfig(max_steps=steps, naive=naive, seed=seed, precision=precision), on_step=on_step,
                      show_progress=True)
    start = time.perf_counter()
    summary = trainer.train()
    # skip the first step (allocator warm-up) in the rate
    elapsed = times[-1] - times[0]
    pairs_per_s = (steps - 1) * trainer.config.batch_size / elapsed
    tokens_per_s = sum(tokens[1:]) / elapsed
    scores = encoder.score_pairs(list(dev["text_a"]), list(dev["text_b"])).numpy()
    f1 = best_f1(scores, dev["match"].to_numpy())
    return {"pairs_per_s": pairs_per_s, "tokens_per_s": tokens_per_s, "precision": trainer.precision,
            "wall_s": time.perf_counter() - start, "dev_f1": f1, "data_share": summary["data_share"],
            "needed_params": needed_parameters(encoder)}


@click.command()
@click.option("--steps", type=click.IntRange(min=3), default=30, show_default=True, help="Training steps per loop.")
@click.option("--quick", is_flag=True, help="A short check (8 steps); figures are not representative.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default=TrainConfig.precision, show_default=True,
              help="Precision of the default loop (the naive loop is always fp32).")
def main(steps: int, quick: bool, seed: int, precision: str) -> None:
    """Measure training/inference throughput and MFU; write RESULTS.md and results/throughput.json."""
    steps = 8 if quick else steps
    peak = {"fp32": matmul_peak_gflops(torch.float32)}
    if cpu_supports_bf16():
        peak["bf16"] = matmul_peak_gflops(torch.bfloat16)
    print(f"matmul peak GFLOP/s: {peak}")

    work = Path("outputs") / "bench_throughput"
    splits = {k: read_pairs(v) for k, v in write_demo(work / "demo").items()}
    scorer = TeacherScorer("all-minilm-l6-v2", cache=None, show_progress=False)
    texts = list(dict.fromkeys([*splits["train"]["text_a"], *splits["train"]["text_b"]]))
    t0 = time.perf_counter()
    scorer.encode(texts)
    teacher_tps = len(texts) / (time.perf_counter() - t0)
    signal = compute_teacher_signal(scorer, splits)
    train = splits["train"]
    keep, _ = DualThresholdFilter()(signal.scores("train"), train["match"].to_numpy())
    pairs = TrainingPairs(list(train["text_a"]), list(train["text_b"]), train["label"].to_numpy(np.float64),
                          signal.splits["train"].emb_a, signal.splits["train"].emb_b, signal.calibrator, keep)

    fast = train_run(pairs, splits["dev"], naive=False, steps=steps, seed=seed, precision=precision)
    naive = train_run(pairs, splits["dev"], naive=True, steps=steps, seed=seed)
    flops_per_token = 4 * fast["needed_params"]
    mfu = flops_per_token * fast["tokens_per_s"] / (peak[fast["precision"]] * 1e9)
    naive_mfu = flops_per_token * naive["tokens_per_s"] / (peak[naive["precision"]] * 1e9)
    # the bf16 option beside an fp32 default, same batches: what it buys and how far it parts from fp32
    bf16 = (train_run(pairs, splits["dev"], naive=False, steps=steps, seed=seed, precision="bf16")
            if fast["precision"] == "fp32" and "bf16" in peak else None)

    model, tokenizer = load_student(resolve_student())
    encoder = LoraEncoder(model, tokenizer, EncoderConfig())
    sample = (texts * 4)[:256]
    encoder.encode(sample[:32])
    t0 = time.perf_counter()
    encoder.encode(sample, batch_size=32)
    student_tps = len(sample) / (time.perf_counter() - t0)

    results = {
        "matmul_peak_gflops": peak, "precision": fast["precision"], "steps": steps,
        "train_pairs_per_s": fast["pairs_per_s"], "naive_train_pairs_per_s": naive["pairs_per_s"],
        "speedup_vs_naive": fast["pairs_per_s"] / naive["pairs_per_s"], "mfu": mfu, "naive_mfu": naive_mfu,
        "train_real_tokens_per_s": fast["tokens_per_s"], "needed_params": fast["needed_params"],
        "data_share": fast["data_share"], "dev_f1": fast["dev_f1"], "naive_dev_f1": naive["dev_f1"],
        "teacher_texts_per_s": teacher_tps, "student_encode_texts_per_s": student_tps,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "quick": quick,
    }
    if bf16 is not None:
        results.update({"bf16_train_pairs_per_s": bf16["pairs_per_s"], "bf16_dev_f1": bf16["dev_f1"],
                        "bf16_mfu": flops_per_token * bf16["tokens_per_s"] / (peak["bf16"] * 1e9)})
    print(json.dumps(results, indent=2))
    if quick:
        print("--quick: results not written")
        return
    command = "python -m benchmarks.throughput" + (f" --steps {steps}" if steps != 30 else "") + (
        f" --precision {precision}" if precision != TrainConfig.precision else "")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_section("throughput", "\n".join([
        f"Command: `{command}` (packaged SmolLM2-135M student, default config, demo train "
        f"split, {steps} steps per loop, {results['threads']} threads, precision {results['precision']}).",
        "",
        "| figure | value |", "|---|---|",
        f"| matmul peak, GFLOP/s | {', '.join(f'{k} {v:.0f}' for k, v in peak.items())} |",
        f"| training pairs/s, default loop | {fast['pairs_per_s']:.2f} |",
        f"| training pairs/s, `--naive` loop | {naive['pairs_per_s']:.2f} |",
        f"| speed-up vs naive | {results['speedup_vs_naive']:.2f}x |",
        f"| MFU, default loop (naive) | {100 * mfu:.1f}% ({100 * naive_mfu:.1f}%) |",
        f"| data loader share of step time | {100 * fast['data_share']:.1f}% |",
        f"| dev F1 after {steps} steps, default (naive) | {fast['dev_f1']:.3f} ({naive['dev_f1']:.3f}) |",
        *([f"| `--precision bf16` option: pairs/s (x default), MFU (bf16 peak), dev F1 | "
           f"{bf16['pairs_per_s']:.2f} ({bf16['pairs_per_s'] / fast['pairs_per_s']:.2f}x), "
           f"{100 * results['bf16_mfu']:.1f}%, {bf16['dev_f1']:.3f} |"] if bf16 else []),
        f"| teacher texts/s | {teacher_tps:.0f} |",
        f"| student `encode` texts/s (batch 32) | {student_tps:.1f} |",
    ]))


if __name__ == "__main__":
    main()
