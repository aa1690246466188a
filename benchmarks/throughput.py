"""Training and inference throughput against this machine's own matmul peak, in one run.

    python -m benchmarks.throughput [--steps 30] [--quick] [--parts loop,depth,depth_quality]

Measures: the matmul peak (large ``torch.mm``, fp32; bf16 where the CPU has native bf16), then for the
packaged student at the default config on the demo training split: training pairs/s and model FLOP
utilisation (MFU = 4 x parameters needed x real tokens per second / matmul peak of the precision used;
parameters needed = those of the layers the representation actually passes through), the same for the
``--naive`` loop on the same batches, dev F1 of both after the same number of steps, the same for the
``bf16`` option when the default is fp32 and the CPU has native bf16, teacher texts/s and student
``encode`` texts/s (part ``loop``).

Part ``depth`` (LoRA in the top K blocks, the frozen prefix cached: :mod:`components.student.prefix_cache`): on the same
batches of real pairs (MEDIQA RQE questions, which fill the 64-token limit, and banking77 utterances, which are
short), 3 epochs per configuration from a cold cache, for full depth (today's default) and K = 2, 4, 8, 15: pairs/s
over the first epoch with the cache build, over the later epochs (warm cache), over the whole run; peak RSS (each
configuration runs in a process of its own); cache size on disk per 1,000 texts. Part ``depth_quality``: dev F1 and
AP of ``flip_full`` at the quality benchmark's data and step count (3 seeds) on banking77 and STS-B, per K.
Part ``joint``: the decoder path (``--sup-mode generative`` / ``both``) from the prefix cache against full depth, in
one process on real STS-B pairs at the headline's student (LoRA in the top 16 blocks, readout rank 128): training
pairs/s of L_sup's generative term (forward and backward, batches of 16 pairs; cold cache, then warm) and joint
scoring pairs/s of dev pairs (full depth in input order, as before, against the cache with batches formed by length),
with the largest score gap between the two.

Writes ``benchmarks/results/throughput.json`` (each part replaces its own keys) and its section of
``benchmarks/RESULTS.md``. Absolute times on a shared machine are noisy: compare the ratios.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import time
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks._machine import cpu_flags
from benchmarks._results import write_section
from benchmarks.datasets import DEFAULT_DATA_ROOT, build
from components.data.contract import read_pairs
from components.data.demo import write_demo
from components.losses.composite_loss import FlipKDLoss, LossConfig
from components.losses.sup_loss import SupervisedLoss
from components.metrics import best_f1
from components.model_cache import cache_root
from components.models import load_student, resolve_student
from components.student.lora_encoder import EncoderConfig, LoraEncoder
from components.student.prefix_cache import disk_store
from components.teacher.noise_filter import DualThresholdFilter
from components.teacher.scorer import TeacherScorer
from components.teacher.signal import compute_teacher_signal
from components.training.trainer import PRECISIONS, TrainConfig, Trainer, TrainingPairs, cpu_supports_bf16

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


# ----------------------------------------------------------------------------------------------- train memory

MEMORY_PAIRS = {"max_train": 1524, "max_dev": 600, "max_test": None}  # the size a new user tried (issue 18)


def train_memory(quick: bool) -> dict:
    """Peak RSS and wall time of ``python -m pipelines.train`` on 1,524 real MEDIQA pairs, as a user runs it: the
    defaults (3 epochs), and LoRA in every block for 30 steps (its peak comes in the first steps)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    counts = {"max_train": 64, "max_dev": 32, "max_test": 32} if quick else MEMORY_PAIRS
    splits = build("mediqa2019_rqe", DEFAULT_DATA_ROOT, **counts, seed=0, min_dev=counts["max_dev"])
    timer = shutil.which("time") or "/usr/bin/time"
    out: dict = {"sizes": {k: len(v) for k, v in splits.items()}}
    with tempfile.TemporaryDirectory(prefix="flipkd-memory-") as work:
        files = []
        for name, frame in splits.items():
            frame[["text_a", "text_b", "label"]].to_csv(Path(work) / f"{name}.csv", index=False)
            files += [f"--{name}", str(Path(work) / f"{name}.csv")]
        env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        for label, extra in (("default", []), ("every_block_30_steps", ["--lora-layers", "all", "--max-steps", "30"])):
            started = time.perf_counter()
            done = subprocess.run([timer, "-v", sys.executable, "-m", "pipelines.train", *files, "--no-progress",
                                   "--experiment", "memory", "--output-dir", f"{work}/out", *extra],
                                  cwd=work, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"train ({label}) failed:\n{done.stderr[-3000:]}")
            peak = next(int(line.split()[-1]) for line in done.stderr.splitlines() if "Maximum resident" in line)
            out[label] = {"peak_rss_gb": peak / 1024**2, "wall_s": time.perf_counter() - started,
                          "command": "python -m pipelines.train --train train.csv --dev dev.csv --test test.csv"
                                     + "".join(f" {a}" for a in extra)}
            print(f"[memory] {label}: {out[label]}", flush=True)
    return out


def render_memory(r: dict) -> list[str]:
    m = r["train_memory"]
    sizes = "/".join(str(m["sizes"][k]) for k in ("train", "dev", "test"))
    return ["", f"**Memory of `train` on real data** (`python -m benchmarks.throughput --parts train_memory`: MEDIQA "
                f"pairs train/dev/test {sizes}, each run `/usr/bin/time -v`):", "",
            "| run | peak RSS GB | wall |", "|---|---|---|",
            *[f"| `{m[k]['command']}` | {m[k]['peak_rss_gb']:.2f} | {m[k]['wall_s']:.0f} s |"
              for k in ("default", "every_block_30_steps") if k in m],
            "", "Where the memory went with LoRA in every block: the backward pass keeps every block's activations "
                "for every token of the step (30 blocks x 32 texts x up to 64 tokens, attention scores included); "
                "with the frozen prefix cached only the top blocks keep theirs."]


# ----------------------------------------------------------------------------------------------- LoRA depth

DEPTHS = (0, 2, 4, 8, 15)  # LoRA blocks at the top; 0: every block (today's default)
DEPTH_DATA = {"mediqa2019_rqe": 192, "banking77": 192}  # train pairs per dataset: 12 steps an epoch
DEPTH_EPOCHS = 3


def _depth_name(k: int) -> str:
    return "all" if k == 0 else str(k)


def depth_pairs(name: str, count: int, cache_dir: str | None = None) -> TrainingPairs:
    """Real training pairs with their teacher signal and the noise filter's mask (the base teacher)."""
    scorer = TeacherScorer("all-minilm-l6-v2", cache=cache_root(cache_dir) / "teacher_embeddings",
                           show_progress=False)
    splits = build(name, DEFAULT_DATA_ROOT, max_train=count, max_dev=16, max_test=16, seed=0, embed=scorer.encode)
    signal = compute_teacher_signal(scorer, splits)
    train = splits["train"]
    keep, _ = DualThresholdFilter()(signal.scores("train"), train["match"].to_numpy())
    return TrainingPairs(list(train["text_a"]), list(train["text_b"]), train["label"].to_numpy(np.float64),
                         signal.splits["train"].emb_a, signal.splits["train"].emb_b, signal.calibrator, keep)


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: a spawned child inherits the parent's peak
    there, through fork and exec."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def depth_cell(pairs: TrainingPairs, k: int, seed: int, store_root: str, results) -> None:
    """One configuration, from a cold cache, in a process of its own (its peak RSS is its own)."""
    torch.manual_seed(seed)
    student = resolve_student()
    model, tokenizer = load_student(student)
    encoder = LoraEncoder(model, tokenizer, EncoderConfig(lora_layers=k))
    texts = sorted({*pairs.text_a, *pairs.text_b})
    started = time.perf_counter()
    disk = 0
    if encoder.prefix is not None:
        store = disk_store(store_root, student, encoder.prefix_start)
        encoder.use_prefix_store(store)
        encoder.fill_prefix(texts)
        disk = store.disk_bytes()
    build_s = time.perf_counter() - started
    stamps: list[float] = []
    trainer = Trainer(encoder, FlipKDLoss(LossConfig()), pairs, TrainConfig(epochs=DEPTH_EPOCHS, seed=seed),
                      on_step=lambda step, metrics: stamps.append(time.perf_counter()), show_progress=False)
    begin = time.perf_counter()
    trainer.train()
    per_epoch = trainer.steps_per_epoch
    first, later = stamps[per_epoch - 1] - begin, stamps[-1] - stamps[per_epoch - 1]
    n = len(pairs)
    results[k] = {"build_s": build_s, "first_epoch_s": first, "later_epochs_s": later,
                  "first_epoch_pairs_per_s": n / (build_s + first),
                  "warm_pairs_per_s": n * (DEPTH_EPOCHS - 1) / later,
                  "cold_run_pairs_per_s": n * DEPTH_EPOCHS / (build_s + first + later),
                  "peak_rss_gb": peak_rss_bytes() / 1024**3,
                  "cache_mb_per_1000_texts": disk / 1e6 / len(texts) * 1000, "texts": len(texts),
                  "tuned_blocks": k or len(encoder.model.get_base_model().get_decoder().layers)}


def measure_depth(seed: int, quick: bool) -> dict:
    """Pairs/s, peak memory and cache size per LoRA depth, on the same batches, per dataset."""
    import tempfile

    out: dict = {}
    context = multiprocessing.get_context("spawn")
    for name, count in DEPTH_DATA.items():
        pairs = depth_pairs(name, 48 if quick else count)
        rows = {}
        with context.Manager() as manager:
            results = manager.dict()
            for k in DEPTHS:
                with tempfile.TemporaryDirectory(prefix="flipkd-prefix-") as root:
                    worker = context.Process(target=depth_cell, args=(pairs, k, seed, root, results))
                    worker.start()
                    worker.join()
                    if worker.exitcode != 0:
                        raise RuntimeError(f"the depth cell K={_depth_name(k)} on {name} failed "
                                           f"(exit code {worker.exitcode})")
                rows[_depth_name(k)] = dict(results[k])
                print(f"[depth] {name} K={_depth_name(k)}: {rows[_depth_name(k)]}", flush=True)
        full = rows["all"]
        for row in rows.values():
            for key in ("first_epoch", "warm", "cold_run"):
                row[f"{key}_speedup"] = row[f"{key}_pairs_per_s"] / full[f"{key}_pairs_per_s"]
        out[name] = {"train_pairs": len(pairs), "epochs": DEPTH_EPOCHS, "rows": rows}
    return out


def measure_depth_quality(seed_count: int, quick: bool) -> dict:
    """flip_full dev F1 / AP per LoRA depth, at the quality benchmark's data, steps and settings."""
    from benchmarks import quality

    out: dict = {}
    for k in DEPTHS:
        folder = Path("outputs") / "bench_throughput" / f"quality_k{_depth_name(k)}"
        args = ["--datasets", "banking77,stsbenchmark", "--variants", "flip_full", "--seeds", str(seed_count),
                "--out", str(folder), "--set", f"lora_layers={k}"]
        if quick:
            args += ["--max-train", "32", "--max-dev", "32", "--max-test", "16"]
        results = quality.main(args)
        for dataset, cell in results["datasets"].items():
            entry = cell["variants"]["flip_full"]
            out.setdefault(dataset, {})[_depth_name(k)] = {
                key: entry.get(key) for key in ("dev_f1_mean", "dev_f1_std", "dev_ap_mean", "dev_ap_std",
                                                "f1_mean", "ap_mean", "train_pairs_per_s_mean")}
            out[dataset]["sizes"] = {split: cell["sizes"][split]["pairs"] for split in ("train", "dev", "test")}
    out["command"] = results["settings"]["command"]
    return out


def measure_loop(steps: int, seed: int, precision: str) -> dict:
    """The default loop against ``--naive`` (and the bf16 option) on the demo, with MFU; encode speeds."""
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
    }
    if bf16 is not None:
        results.update({"bf16_train_pairs_per_s": bf16["pairs_per_s"], "bf16_dev_f1": bf16["dev_f1"],
                        "bf16_mfu": flops_per_token * bf16["tokens_per_s"] / (peak["bf16"] * 1e9)})
    return results


def render_loop(r: dict) -> list[str]:
    steps, peak = r["steps"], r["matmul_peak_gflops"]
    return [
        f"Command: `{r.get('loop_command', 'python -m benchmarks.throughput')}` (packaged SmolLM2-135M student, "
        f"default config, demo train split, {steps} steps per loop, {r['threads']} threads, precision "
        f"{r['precision']}).",
        "",
        "| figure | value |", "|---|---|",
        f"| matmul peak, GFLOP/s | {', '.join(f'{k} {v:.0f}' for k, v in peak.items())} |",
        f"| training pairs/s, default loop | {r['train_pairs_per_s']:.2f} |",
        f"| training pairs/s, `--naive` loop | {r['naive_train_pairs_per_s']:.2f} |",
        f"| speed-up vs naive | {r['speedup_vs_naive']:.2f}x |",
        f"| MFU, default loop (naive) | {100 * r['mfu']:.1f}% ({100 * r['naive_mfu']:.1f}%) |",
        f"| data loader share of step time | {100 * r['data_share']:.1f}% |",
        f"| dev F1 after {steps} steps, default (naive) | {r['dev_f1']:.3f} ({r['naive_dev_f1']:.3f}) |",
        *([f"| `--precision bf16` option: pairs/s (x default), MFU (bf16 peak), dev F1 | "
           f"{r['bf16_train_pairs_per_s']:.2f} ({r['bf16_train_pairs_per_s'] / r['train_pairs_per_s']:.2f}x), "
           f"{100 * r['bf16_mfu']:.1f}%, {r['bf16_dev_f1']:.3f} |"] if "bf16_train_pairs_per_s" in r else []),
        f"| teacher texts/s | {r['teacher_texts_per_s']:.0f} |",
        f"| student `encode` texts/s (batch 32) | {r['student_encode_texts_per_s']:.1f} |",
    ]


def render_depth(r: dict) -> list[str]:
    depth = r["depth"]
    lines = ["", f"**LoRA depth and the prefix cache** (`{r['depth_command']}`, fp32, {r['threads']} threads, CPU "
             f"flags {', '.join(r.get('cpu_flags', [])) or 'unknown'}): {DEPTH_EPOCHS} epochs from a cold cache on "
             "the same batches per configuration, each in a process of its own. Speed-ups against full depth "
             "(LoRA in every block: METHOD.md's reading, the default before the prefix cache).", "",
             "| data | K | cache build s | pairs/s 1st epoch (with build) | pairs/s later epochs (warm) | "
             "pairs/s whole run (cold) | peak RSS GB | cache MB / 1,000 texts |",
             "|---|---|---|---|---|---|---|---|"]
    for name, cell in depth.items():
        for k, row in cell["rows"].items():
            lines.append(f"| {name} ({cell['train_pairs']} pairs) | {k} | {row['build_s']:.1f} | "
                         f"{row['first_epoch_pairs_per_s']:.2f} ({row['first_epoch_speedup']:.2f}x) | "
                         f"{row['warm_pairs_per_s']:.2f} ({row['warm_speedup']:.2f}x) | "
                         f"{row['cold_run_pairs_per_s']:.2f} ({row['cold_run_speedup']:.2f}x) | "
                         f"{row['peak_rss_gb']:.2f} | {row['cache_mb_per_1000_texts']:.0f} |")
    return lines


def render_prefix_summary(r: dict) -> list[str]:
    if "prefix_cache_speedup_warm" not in r:
        return []
    k = r["prefix_cache_k"]
    deltas = ", ".join(f"{d} {v:+.3f}" for d, v in r.get("prefix_cache_dev_f1_delta", {}).items())
    return ["", f"**Default K = {k}** (chosen on dev: the best mean dev F1 over both datasets among the depths within "
                "one seed std of full depth on each, and the fastest of them): against full depth, "
                f"{r['prefix_cache_speedup_warm']:.1f}x the pairs/s over epochs on a warm cache, "
                f"{r['prefix_cache_speedup_cold']:.1f}x over a whole 3-epoch run from a cold cache (build included), "
                f"the smaller figure of the two datasets; dev F1 minus full depth's: {deltas}."]


def render_depth_quality(r: dict) -> list[str]:
    quality = r["depth_quality"]
    datasets = [d for d in quality if d != "command"]
    sizes = "; ".join(f"{d} {'/'.join(str(v) for v in quality[d]['sizes'].values())}" for d in datasets)
    lines = ["", f"**Quality per LoRA depth**: `flip_full` at the quality benchmark's settings (`{quality['command']}` "
             f"once per K; train/dev/test pairs {sizes}), dev F1 and dev AP, mean ± std over 3 seeds.", "",
             "| K | " + " | ".join(f"{d} dev F1 | {d} dev AP" for d in datasets) + " |",
             "|---|" + "---|---|" * len(datasets)]
    for k in (_depth_name(k) for k in DEPTHS):
        cells = []
        for d in datasets:
            e = quality[d].get(k, {})
            cells += [f"{e['dev_f1_mean']:.3f} ± {e['dev_f1_std']:.3f}" if e.get("dev_f1_mean") is not None else "-",
                      f"{e['dev_ap_mean']:.3f} ± {e['dev_ap_std']:.3f}" if e.get("dev_ap_mean") is not None else "-"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


JOINT_PAIRS = {"train": 64, "dev": 192}  # STS-B pairs: 4 training batches of 16, one dev scoring pass
JOINT_BATCH = 16
JOINT_ENCODER = {"lora_layers": 16, "readout_rank": 128}  # the headline's student


def measure_joint(seed: int, quick: bool) -> dict:
    """Pairs/s of the decoder path with and without the frozen prefix's cache, on the same batches, one process."""
    import tempfile

    counts = {"train": 32, "dev": 32} if quick else JOINT_PAIRS
    splits = build("stsbenchmark", DEFAULT_DATA_ROOT, max_train=counts["train"], max_dev=counts["dev"], max_test=16,
                   seed=0)
    torch.manual_seed(seed)
    student = resolve_student()
    model, tokenizer = load_student(student)
    encoder = LoraEncoder(model, tokenizer, EncoderConfig(**JOINT_ENCODER))
    sup = SupervisedLoss("generative")
    train, dev = splits["train"], splits["dev"]
    a, b, y = list(train["text_a"]), list(train["text_b"]), torch.as_tensor(train["match"].to_numpy(np.float32))
    batches = [(encoder.tokenize_pairs(a[i:i + JOINT_BATCH], b[i:i + JOINT_BATCH]), y[i:i + JOINT_BATCH])
               for i in range(0, len(a), JOINT_BATCH)]

    def train_pass(use_prefix: bool) -> float:
        encoder.train()
        start = time.perf_counter()
        for batch, labels in batches:
            sup(labels, label_logprobs=encoder.label_logprobs(**batch, use_prefix=use_prefix)).backward()
        seconds = time.perf_counter() - start
        encoder.model.zero_grad(set_to_none=True)
        return len(a) / seconds

    da, db = list(dev["text_a"]), list(dev["text_b"])

    @torch.inference_mode()
    def full_depth_scores() -> torch.Tensor:  # joint scoring before the cache: input order, every block
        encoder.eval()
        return torch.cat([torch.softmax(encoder.label_logprobs(**encoder.tokenize_pairs(
            da[i:i + JOINT_BATCH], db[i:i + JOINT_BATCH]), use_prefix=False), -1)[:, 1]
            for i in range(0, len(da), JOINT_BATCH)])

    def timed(score) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        scores = score()
        return len(da) / (time.perf_counter() - start), scores

    with tempfile.TemporaryDirectory(prefix="flipkd-prefix-") as root:
        encoder.use_prefix_store(disk_store(root, student, encoder.prefix_start))
        # alternated, so drift in the machine's speed falls on both
        full = [train_pass(False)]
        cold = train_pass(True)
        warm = [train_pass(True)]
        full.append(train_pass(False))
        warm.append(train_pass(True))
        score_full, reference = timed(full_depth_scores)
        score_cold, _ = timed(lambda: encoder.joint_scores(da, db, batch_size=JOINT_BATCH))
        score_warm, cached = timed(lambda: encoder.joint_scores(da, db, batch_size=JOINT_BATCH))
    out = {"dataset": "stsbenchmark", "train_pairs": len(a), "dev_pairs": len(da), "batch": JOINT_BATCH,
           "encoder": JOINT_ENCODER, "prefix_start": encoder.prefix_start,
           "train_full_pairs_per_s": float(np.mean(full)), "train_cold_pairs_per_s": cold,
           "train_warm_pairs_per_s": float(np.mean(warm)),
           "score_full_pairs_per_s": score_full, "score_cold_pairs_per_s": score_cold,
           "score_warm_pairs_per_s": score_warm,
           "max_score_gap": float((cached - reference).abs().max())}
    for part in ("train", "score"):
        for key in ("cold", "warm"):
            out[f"{part}_{key}_speedup"] = out[f"{part}_{key}_pairs_per_s"] / out[f"{part}_full_pairs_per_s"]
    print(f"[joint] {out}", flush=True)
    return out


def render_joint(r: dict) -> list[str]:
    j = r["joint"]
    return ["", f"**The decoder path from the prefix cache** (`{r['joint_command']}`, fp32, {j['threads']} threads, "
                f"CPU flags {', '.join(j['cpu_flags']) or 'unknown'}; `--sup-mode generative` / `both`): "
                f"{j['dataset']}, LoRA in the top {j['encoder']['lora_layers']} blocks (blocks below "
                f"{j['prefix_start']} from the cache), readout rank {j['encoder']['readout_rank']}, batches of "
                f"{j['batch']} pairs, in one process. Against full depth (the decoder path before it read the cache; "
                "its scoring in input order):", "",
            "| | full depth pairs/s | cache cold pairs/s | cache warm pairs/s |", "|---|---|---|---|",
            f"| training, L_sup's generative term, forward and backward ({j['train_pairs']} pairs) | "
            f"{j['train_full_pairs_per_s']:.2f} | {j['train_cold_pairs_per_s']:.2f} ({j['train_cold_speedup']:.2f}x) | "
            f"{j['train_warm_pairs_per_s']:.2f} ({j['train_warm_speedup']:.2f}x) |",
            f"| joint scoring, batches by length ({j['dev_pairs']} dev pairs) | {j['score_full_pairs_per_s']:.2f} | "
            f"{j['score_cold_pairs_per_s']:.2f} ({j['score_cold_speedup']:.2f}x) | "
            f"{j['score_warm_pairs_per_s']:.2f} ({j['score_warm_speedup']:.2f}x) |", "",
            f"Largest gap between the two paths' scores: {j['max_score_gap']:.1e}."]


PARTS = ("loop", "depth", "depth_quality", "train_memory", "joint")


def prefix_cache_summary(r: dict) -> dict:
    """The default K against full depth: the smallest speed-up over the datasets measured, and dev F1 deltas."""
    k = _depth_name(EncoderConfig().lora_layers)
    out: dict = {"prefix_cache_k": EncoderConfig().lora_layers}
    if "depth" in r and all(k in cell["rows"] for cell in r["depth"].values()):
        for key, name in (("warm_speedup", "prefix_cache_speedup_warm"),
                          ("cold_run_speedup", "prefix_cache_speedup_cold"),
                          ("first_epoch_speedup", "prefix_cache_speedup_first_epoch")):
            by_dataset = {d: cell["rows"][k][key] for d, cell in r["depth"].items()}
            out[name], out[f"{name}_by_dataset"] = min(by_dataset.values()), by_dataset
    quality = r.get("depth_quality", {})
    deltas = {d: q[k]["dev_f1_mean"] - q["all"]["dev_f1_mean"] for d, q in quality.items()
              if d != "command" and k in q and "all" in q}
    if deltas:
        out["prefix_cache_dev_f1_delta"] = deltas
    return out


@click.command()
@click.option("--steps", type=click.IntRange(min=3), default=30, show_default=True, help="Training steps per loop.")
@click.option("--quick", is_flag=True, help="A short check (8 steps, few pairs); figures are not representative "
                                             "and nothing is written.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default=TrainConfig.precision, show_default=True,
              help="Precision of the default loop (the naive loop is always fp32).")
@click.option("--parts", default=",".join(PARTS), show_default=True,
              help="Comma list of parts to measure: loop (default loop vs --naive), depth (LoRA depth and the prefix "
                   "cache: speed, memory, cache size), depth_quality (dev F1/AP per depth; about 30 student runs), "
                   "train_memory (peak RSS of train on 1,524 real pairs), joint (the decoder path from the "
                   "prefix cache against full depth: training and scoring pairs/s); "
                   "'none' only rewrites RESULTS.md from the stored JSON.")
def main(steps: int, quick: bool, seed: int, precision: str, parts: str) -> None:
    """Measure training/inference throughput and MFU; write RESULTS.md and results/throughput.json."""
    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    if parts.strip() == "none":  # rewrite the section (and the summary keys) from the stored JSON
        chosen = []
    elif not chosen or set(chosen) - set(PARTS):
        raise click.BadParameter(f"a comma list of {', '.join(PARTS)}, got {parts!r}", param_hint="--parts")
    steps = 8 if quick else steps
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() and not quick else {}
    machine = {"cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
               "threads": torch.get_num_threads(), "quick": quick}
    if set(chosen) - {"joint"}:  # the machine of the other parts' figures (joint keeps its own)
        results.update(machine)
    if "loop" in chosen:
        results.update(measure_loop(steps, seed, precision))
        results["loop_command"] = "python -m benchmarks.throughput" + (f" --steps {steps}" if steps != 30 else "") + (
            f" --precision {precision}" if precision != TrainConfig.precision else "")
    if "depth" in chosen:
        results["depth"] = measure_depth(seed, quick)
        results["depth_command"] = "python -m benchmarks.throughput --parts depth"
    if "depth_quality" in chosen:
        results["depth_quality"] = measure_depth_quality(2 if quick else 3, quick)
    if "train_memory" in chosen:
        results["train_memory"] = train_memory(quick)
    if "joint" in chosen:
        results["joint"] = {**measure_joint(seed, quick), **machine}
        results["joint_command"] = "python -m benchmarks.throughput --parts joint"
    results.update(prefix_cache_summary(results))
    print(json.dumps(results, indent=2))
    if quick:
        print("--quick: results not written")
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = render_loop(results) if "train_pairs_per_s" in results else []
    lines += render_depth(results) if "depth" in results else []
    lines += render_depth_quality(results) if "depth_quality" in results else []
    lines += render_prefix_summary(results)
    lines += render_memory(results) if "train_memory" in results else []
    lines += render_joint(results) if "joint" in results else []
    write_section("throughput", "\n".join(lines))


if __name__ == "__main__":
    main()
