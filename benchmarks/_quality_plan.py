"""What a quality run runs: the variants, the benchmark's own defaults and budgets, and the :class:`Plan` its
options build (``--set`` overrides included). ``benchmarks.quality`` is the command."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from components.losses.composite_loss import LossConfig
from components.student.lora_encoder import PROMPTS, EncoderConfig
from components.teacher.finetune import TeacherFinetuneConfig
from components.training.trainer import TrainConfig

# Default budget: the full benchmark (3 datasets, the 7 trained variants of DEFAULT_VARIANTS x 3 seeds) must fit
# 2 hours here. Stop 14's counts (192/64/96, 12 steps, with the joint variants: 1h57m) left 11 of STS-B's 64 dev
# pairs positive and the seed stds at 0.04-0.10, mostly from where the dev threshold fell; 320/128/160 (20 steps)
# estimates 1h44m without the joint variants (RESULTS.md, settings tried, stop 15).
DEFAULT_COUNTS = {"max_train": 320, "max_dev": 128, "max_test": 160}
# Student learning rate for the benchmark's few steps: on dev, banking77 and STS-B, one seed, 12 steps,
# flip_full 0.715 / 0.618 at 3e-3 against 0.712 / 0.522 at 1e-3 (benchmarks/RESULTS.md, settings tried, stop 14).
LEARNING_RATE = 3e-3
# L_dist's weight for the benchmark's 20 steps (METHOD.md: weights are OURS; train keeps 1): on dev, 3 seeds,
# flip_full MEDIQA 0.734 / STS-B 0.602 at 4 against 0.728 / 0.585 at 1 (RESULTS.md, settings tried, stop 15).
W_DIST = 4.0
QUICK_COUNTS = {"max_train": 96, "max_dev": 64, "max_test": 96}
QUICK_DATASET = "mediqa2019_rqe"
BUDGET_SECONDS, QUICK_BUDGET_SECONDS = 2 * 3600, 15 * 60

# Throughput assumptions of the time estimate (2 shared CPU cores, default config).
ASSUMED = {
    # student training, default config (PromptEOL prompt, bf16 where native): 6.6-7.4 measured in 12-step
    # banking77 and STS-B runs of this benchmark (192 pairs, warm-up included; 11-12 before the prompt); with it
    # the estimate of stop 14's full run is 1h59m, against 1h57m measured
    "train_pairs_per_s": 7.0,
    "teacher_texts_per_s": 60.0,  # teacher inference (MiniLM, brief: ~60 texts/s)
    "teacher_train_pairs_per_s": 10.0,  # teacher fine-tuning: 2 texts per pair, forward+backward ~3 forwards
    "student_texts_per_s": 24.0,  # student encode: training does 8 texts/s at ~3 forwards each
    "run_overhead_s": 6.0,  # per student run: load + LoRA wrap, plots, adapter artifact, MLflow
    "joint_slowdown": 2.6,  # generative L_sup: full-depth forward of the pair prompt, and joint scoring at eval
}


JOINT_AUG_PER_PAIR = 1.0
ALL = "all"


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "teacher", "zeroshot" or "trained"
    parts: tuple[str, ...] = ()
    margin_rule: str = "aware"
    no_filter: bool = False
    description: str = ""
    sup_mode: str = "representation"  # "generative": L_sup on the label word, scored jointly (decoder path)
    extra_per_pair: float = 0.0  # teacher-labelled extra pairs per labelled pair (components.data.augment)

    @property
    def joint(self) -> bool:
        return self.sup_mode == "generative"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("teacher_base", "teacher", description="off-the-shelf teacher cosine"),
    Variant("teacher_finetuned", "teacher", description="teacher fine-tuned on train (CoSENT); the students' teacher"),
    Variant("student_zeroshot", "zeroshot", description="student LoRA A-encoder untrained (A random, B zero)"),
    Variant("sup_only", "trained", ("sup",), description="L_sup only"),
    Variant("arccse", "trained", ("sup", "mcl"), "fixed", description="L_sup + L_MCL, one fixed margin (ArcCSE)"),
    Variant("infonce", "trained", ("sup", "mcl"), "none", description="L_sup + L_MCL without margin (InfoNCE)"),
    Variant("flip_full", "trained", ("sup", "dist", "mcl"), "aware", description="flipped KD: all parts, filter"),
    Variant("flip_no_mcl", "trained", ("sup", "dist"), "aware", description="flip_full without L_MCL"),
    Variant("flip_no_dist", "trained", ("sup", "mcl"), "aware", description="flip_full without L_dist"),
    Variant("flip_no_filter", "trained", ("sup", "dist", "mcl"), "aware", True,
            description="flip_full without the noise filter"),
    Variant("flip_joint", "trained", ("sup", "dist", "mcl"), "aware", sup_mode="generative",
            description="flip_full with the generative L_sup; scored jointly, P(yes | pair)"),
    Variant("flip_joint_aug", "trained", ("sup", "dist", "mcl"), "aware", sup_mode="generative",
            extra_per_pair=JOINT_AUG_PER_PAIR,
            description=f"flip_joint plus {JOINT_AUG_PER_PAIR:g} teacher-labelled extra pair(s) per labelled pair"),
)}
# The default selection: the benchmark issue's table. The joint-scoring levers cost ~2.6x a cosine run each, so
# they run by name (or --variants all) and merge into the same table when their settings match.
DEFAULT_VARIANTS = [name for name, v in VARIANTS.items() if not v.joint]
FIXED_BY_VARIANT = {"parts", "margin_rule", "seed", "sup_mode"}


# ----------------------------------------------------------------------------------------------- configuration


@dataclass
class Plan:
    datasets: list[str]
    variants: list[str]
    seeds: list[int]
    counts: dict[str, int]
    data_seed: int
    data_root: Path
    student: str
    teacher: str
    cache_dir: str | None
    encoder: EncoderConfig
    loss: LossConfig
    train: TrainConfig
    teacher_finetune: TeacherFinetuneConfig
    quick: bool
    out: Path
    experiment: str
    progress: bool
    assumed: dict[str, float]
    command: str

    def settings(self) -> dict[str, Any]:
        return {"datasets": self.datasets, "variants": self.variants, "seeds": self.seeds, **self.counts,
                "data_seed": self.data_seed, "data_root": str(self.data_root), "student": self.student,
                "teacher": self.teacher, "encoder": self.encoder.to_dict(), "loss": self.loss.to_dict(),
                "train": self.train.to_dict(), "teacher_finetune": dataclasses.asdict(self.teacher_finetune),
                "filter_scope": "teacher_terms", "quick": self.quick, "command": self.command,
                "assumed_throughput": self.assumed}

    def brief(self) -> str:
        """The settings a reader compares first, for cells of an earlier run (RESULTS.md marks them)."""
        t = self.train
        steps = f"max {t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epoch(s)"
        return (f"{self.counts['max_train']}/{self.counts['max_dev']}/{self.counts['max_test']} pairs, lr "
                f"{t.learning_rate:g}, {steps}, prompt {_prompt_name(self.encoder.to_dict())}")

    def settings_hash(self) -> str:
        """What makes two cells comparable: data, models and configs (not the selection of cells or seeds)."""
        keep = {k: v for k, v in self.settings().items()
                if k not in ("datasets", "variants", "seeds", "command", "assumed_throughput", "data_root")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _comma_list(value: str, known: Sequence[str], what: str) -> list[str]:
    """The named items in the given order; ``all`` is every known one."""
    if value.strip() == ALL:
        return list(known)
    items = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [v for v in items if v not in known]
    if bad or not items:
        raise click.BadParameter(f"a comma list of {', '.join(known)}; unknown: {', '.join(bad) or '(empty)'}",
                                 param_hint=what)
    return items


def parse_seeds(value: str) -> list[int]:
    """``N`` -> seeds 0..N-1; a comma list (``1,2`` or ``4,``) -> exactly those seeds."""
    try:
        if "," in value:
            seeds = list(dict.fromkeys(int(v) for v in value.split(",") if v.strip()))
        else:
            seeds = list(range(int(value)))
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise click.BadParameter(f"a count N >= 1 (seeds 0..N-1) or a comma list of seeds; got {value!r}",
                                 param_hint="--seeds")
    return seeds


def _convert(value: str, default: Any) -> Any:
    if isinstance(default, bool):
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"expected true/false, got {value!r}")
        return value.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, list | tuple):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(default, dict):
        return json.loads(value)
    if isinstance(default, str) and default == "all-linear" and "," in value:
        return [v.strip() for v in value.split(",")]
    return value


def apply_overrides(configs: dict[str, Any], pairs: Sequence[str],
                    fixed: frozenset[str] | set[str] = FIXED_BY_VARIANT) -> None:
    """``KEY=VALUE`` or ``SECTION.KEY=VALUE`` in place; the sections are the keys of ``configs`` (quality: encoder,
    loss, train, teacher_finetune; headline: encoder, loss, train, augment, model). ``fixed``: keys a benchmark's
    variants (or seeds) set, refused here."""
    for item in pairs:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        section, _, name = key.rpartition(".")
        sections = [section] if section else [s for s in configs if name in _fields(configs[s])]
        if section and section not in configs:
            raise click.BadParameter(f"unknown section {section!r} in {item!r}; sections: {', '.join(configs)}",
                                     param_hint="--set")
        if not sections or name not in _fields(configs[sections[0]]):
            raise click.BadParameter(f"no setting {key!r}; e.g. w_dist, distill_mode, warmup_ratio, lora_alpha",
                                     param_hint="--set")
        if len(sections) > 1:
            raise click.BadParameter(f"{name!r} is in {', '.join(sections)}: prefix it (e.g. {sections[0]}.{name})",
                                     param_hint="--set")
        if name in fixed and sections[0] != "teacher_finetune":
            raise click.BadParameter(f"{name!r} is set by each variant (or by --seeds), not by --set",
                                     param_hint="--set")
        target = configs[sections[0]]
        try:
            setattr(target, name, _convert(value.strip(), getattr(target, name)))
            target.__post_init__()
        except (ValueError, TypeError) as err:
            raise click.BadParameter(f"{item!r}: {err}", param_hint="--set") from None


def _fields(config: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(config)}


def _prompt_name(encoder: dict[str, Any]) -> str:
    """The PROMPTS name of a logged encoder config, or its fields quoted when it is none of them."""
    for name, fields in PROMPTS.items():
        if all(encoder.get(k) == v for k, v in fields.items()):
            return name
    return f"instruction {encoder.get('instruction')!r}, suffix {encoder.get('suffix')!r}"
