"""The quality benchmark's time estimate, printed before a run (and by ``--dry-run``): seconds per dataset from the
built datasets' sizes and estimated tokens per text, against the ``ASSUMED`` throughputs measured on the demo."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from benchmarks._quality_plan import VARIANTS, Plan
from benchmarks.datasets import texts_of
from components.student.lora_encoder import EncoderConfig

CHARS_PER_TOKEN = 4.0  # rough English BPE ratio; +2 tokens per text (EOS / [CLS] [SEP])
TEACHER_MAX_LENGTH = 128


def est_tokens(texts: Sequence[str], cap: int, wrap: str = "") -> float:
    """Mean estimated tokens per text, each capped at ``cap`` (the truncation length), plus the prompt ``wrap``."""
    texts = list(texts)
    if not texts:
        return 0.0
    return float(np.mean([min(len(t) / CHARS_PER_TOKEN + 2, cap) for t in texts])) + len(wrap) / CHARS_PER_TOKEN


def _wrap(encoder: EncoderConfig) -> str:
    return encoder.instruction + encoder.suffix


def reference_tokens() -> dict[str, float]:
    """Estimated tokens per text of the demo data, on which the assumed throughputs were measured."""
    from components.data.demo import demo_pairs

    demo = demo_pairs(0)
    texts = list(dict.fromkeys([*demo["text_a"], *demo["text_b"]]))
    enc = EncoderConfig()
    return {"student": est_tokens(texts, enc.max_length, _wrap(enc)), "teacher": est_tokens(texts, TEACHER_MAX_LENGTH)}


def token_stats(splits: dict, encoder: EncoderConfig) -> dict[str, float]:
    train = sorted(texts_of(splits["train"]))
    evals = sorted(texts_of(splits["dev"]) | texts_of(splits["test"]))
    cap, wrap = encoder.max_length, _wrap(encoder)
    return {"train_student": est_tokens(train, cap, wrap), "eval_student": est_tokens(evals, cap, wrap),
            "teacher": est_tokens(train + evals, TEACHER_MAX_LENGTH)}


def estimate_seconds(sizes: dict[str, dict[str, dict]], plan: Plan) -> dict[str, float]:
    """Seconds per dataset (and ``total``) from the built sizes and the ``ASSUMED`` throughputs.

    The assumed rates hold for the demo data at the default config; they are scaled by each dataset's estimated
    tokens per text against the demo's (never below 0.75): linearly for the student, whose packed batches cost
    what their tokens cost (full run of stop 14: mediqa2019_rqe's runs took 1.6-1.7x banking77's at 1.4x the
    tokens), by the square root for the teacher (padded batches, per-batch overheads).
    """
    a, out = plan.assumed, {}
    ref = reference_tokens()
    trained = any(VARIANTS[v].kind == "trained" for v in plan.variants)
    zeroshot = sum(VARIANTS[v].kind == "zeroshot" for v in plan.variants)
    needs_teacher = trained or "teacher_finetuned" in plan.variants
    for name, size in sizes.items():
        tokens = size.get("tokens", {})
        slow = {key: max(0.75, tokens.get(key, ref[base]) / ref[base]) ** (0.5 if base == "teacher" else 1.0)
                for key, base in (("train_student", "student"), ("eval_student", "student"), ("teacher", "teacher"))}
        train_pairs = size["train"]["pairs"]
        eval_texts = size["dev"]["texts"] + size["test"]["texts"]
        all_texts = eval_texts + size["train"]["texts"] + size.get("pool_texts", 0)
        pairs_seen = (plan.train.max_steps * plan.train.batch_size if plan.train.max_steps
                      else math.ceil(train_pairs * plan.train.epochs))
        evaluate = eval_texts / a["student_texts_per_s"] * slow["eval_student"]
        zeroshot_run = evaluate + a["run_overhead_s"]
        student_runs = 0.0
        for variant in (VARIANTS[v] for v in plan.variants if VARIANTS[v].kind == "trained"):
            factor = a["joint_slowdown"] if variant.joint else 1.0
            seen = pairs_seen * (1 + variant.extra_per_pair)
            student_runs += (factor * (seen / a["train_pairs_per_s"] * slow["train_student"] + evaluate)
                             + a["run_overhead_s"])
        teacher = all_texts / a["teacher_texts_per_s"]  # base-teacher embeddings (banking pools, teacher_base)
        if needs_teacher:
            teacher += (train_pairs * plan.teacher_finetune.epochs / a["teacher_train_pairs_per_s"]
                        + (eval_texts + size["train"]["texts"]) / a["teacher_texts_per_s"])
        out[name] = len(plan.seeds) * (student_runs + zeroshot * zeroshot_run) + teacher * slow["teacher"]
    out["total"] = sum(out.values())
    return out


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
