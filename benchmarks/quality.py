"""Quality benchmark: flipped distillation against its baselines and ablations on real text-pair data.

    python -m benchmarks.quality                  # 3 datasets x 10 variants, 3 seeds (about 2 h on 2 CPU cores)
    python -m benchmarks.quality --variants flip_joint,flip_joint_aug   # the joint-scoring levers, same settings
    python -m benchmarks.quality --quick          # mediqa2019_rqe only, small pair counts, 1 seed (< 15 min)
    python -m benchmarks.quality --datasets stsbenchmark --variants flip_full,sup_only --seeds 1
    python -m benchmarks.quality --dry-run        # build the datasets, print sizes and the time estimate

Datasets (``benchmarks.datasets``, read from ``../shared/data``): banking77 (intent pairs built inside each split,
half of the negatives hard by the base teacher), mediqa2019_rqe (as given), stsbenchmark (match = score >= 4,
Spearman on the graded score).

Variants: ``teacher_base`` (off-the-shelf teacher cosine), ``teacher_finetuned`` (the teacher fine-tuned on the
train split with CoSENT, the one every student is distilled from), ``student_zeroshot`` (the student's LoRA
A-encoder untrained: A random, B zero, so the LLM itself is unchanged), and nine trained students:
``sup_only`` (L_sup), ``arccse`` (L_sup + L_MCL with one fixed margin), ``infonce`` (L_sup + L_MCL without
margin), ``flip_full`` (L_sup + L_dist + L_MCL, teacher-aware margin, noise filter), ``flip_no_mcl``,
``flip_no_dist``, ``flip_no_filter``, and the joint-scoring levers (METHOD.md, Inference): ``flip_joint``
(flip_full with the generative L_sup, scored by P("yes" | pair) through the decoder path; its cosine reading is
kept as ``cosine_f1``) and ``flip_joint_aug`` (plus teacher-labelled extra pairs). The two joint-scoring variants
are not in the default selection (``--variants all`` or by name): each run costs about 2.6 times a cosine run, so
with them the default settings would not fit the 2-hour budget. Every trained variant keeps
the noise filter (scope: teacher-driven terms) except ``flip_no_filter``, so ``arccse``/``infonce``/``flip_no_dist``
differ only in the margin rule.

MLflow: experiment ``flipkd-benchmark``; one parent run per invocation, one nested child run per
(dataset, variant, seed) named ``<dataset>/<variant>/seed<k>``. Teacher variants run once (seed 0, std 0);
student variants over ``--seeds``. The same data (``--data-seed``) is used for every seed: seeds vary the LoRA
initialisation and the batch order only.

Writes ``<out>/quality.json`` (merged: a run with ``--datasets``/``--variants`` subsets replaces only its cells)
and the ``quality`` section of ``benchmarks/RESULTS.md``. ``--quick`` writes ``<out>/quality_quick.json`` and
leaves RESULTS.md alone (its tiny budget is a smoke test, not a result).

This module is the command (options, dataset building, the loop over cells); the variants and settings are in
``benchmarks._quality_plan``, the time estimate in ``benchmarks._quality_estimate``, one cell's run in
``benchmarks._quality_runs``, and ``quality.json`` with its RESULTS.md rendering in ``benchmarks._quality_results``.
"""

from __future__ import annotations

import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import mlflow

from benchmarks import _results
from benchmarks._quality_estimate import _duration, estimate_seconds, token_stats
from benchmarks._quality_plan import (
    ALL,
    ASSUMED,
    BUDGET_SECONDS,
    DEFAULT_COUNTS,
    DEFAULT_VARIANTS,
    LEARNING_RATE,
    QUICK_BUDGET_SECONDS,
    QUICK_COUNTS,
    QUICK_DATASET,
    VARIANTS,
    W_DIST,
    Plan,
    _comma_list,
    apply_overrides,
    parse_seeds,
)
from benchmarks._quality_results import _num, load_results, render_markdown, save_results
from benchmarks._quality_runs import _teacher_scorer, finetuned_teacher, run_cell, summarise
from benchmarks.datasets import DATASETS, DEFAULT_DATA_ROOT, DatasetError, build, describe, texts_of
from components.losses.composite_loss import LossConfig
from components.models import STUDENT_DEFAULT, TEACHER_DEFAULT
from components.student.lora_encoder import DEFAULT_PROMPT, PROMPTS, EncoderConfig
from components.teacher.finetune import TeacherFinetuneConfig
from components.training.trainer import PRECISIONS, TrainConfig
from pipelines._options import POSITIVE, option

EXPERIMENT = "flipkd-benchmark"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_FILE, QUICK_FILE = "quality.json", "quality_quick.json"


# ----------------------------------------------------------------------------------------------- main


def _command(ctx: click.Context) -> str:
    """The invocation, rebuilt from the options the user gave (defaults left out)."""
    parts = ["python", "-m", "benchmarks.quality"]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name == "DEFAULT":
            continue
        value = ctx.params[param.name]
        flag = param.opts[0]
        if getattr(param, "is_flag", False):
            parts.append(flag if value else (param.secondary_opts or [flag])[0])
        elif isinstance(value, tuple):
            for item in value:
                parts += [flag, str(item)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def build_all(plan: Plan) -> tuple[dict[str, dict], dict[str, dict]]:
    if not plan.data_root.is_dir():
        _fail(f"the benchmark data folder {plan.data_root} is absent. It holds public datasets kept outside the "
              "repository (../shared/data, see its README); pass --data-root to use another folder.")
    missing = [d for d in plan.datasets if not (plan.data_root / d).is_dir()]
    if missing:
        _fail(f"{plan.data_root} has no {', '.join(missing)} folder; choose --datasets among the folders present")
    built, sizes = {}, {}
    base_scorer = None
    for name in plan.datasets:
        started = time.perf_counter()
        embed = None
        if name == "banking77":
            base_scorer = base_scorer or _teacher_scorer(plan.teacher, plan)
            embed = base_scorer.encode
        try:
            splits = build(name, plan.data_root, **plan.counts, seed=plan.data_seed, embed=embed)
        except DatasetError as err:
            _fail(str(err))
        built[name] = splits
        sizes[name] = describe(splits)
        if name == "banking77":
            sizes[name]["pool_texts"] = sum(f.attrs.get("pool_utterances", 0) for f in splits.values())
        sizes[name]["tokens"] = token_stats(splits, plan.encoder)
        for first, second in (("train", "dev"), ("train", "test"), ("dev", "test")):
            if texts_of(splits[first]) & texts_of(splits[second]):
                _fail(f"{name}: texts on both sides of the {first}/{second} boundary (a dataset builder bug)")
        click.echo(f"[{name}] " + ", ".join(f"{k} {v['pairs']} pairs ({v['matches']} match, {v['texts']} texts)"
                                            for k, v in sizes[name].items() if isinstance(v, dict) and "pairs" in v)
                   + f" — built in {time.perf_counter() - started:.1f} s")
    return built, sizes


def run(plan: Plan, dry_run: bool = False) -> dict[str, Any]:
    from pipelines import _mlflow

    started = time.perf_counter()
    commit = _mlflow.git_commit()  # the code this run started with (the tree may change while it runs)
    built, sizes = build_all(plan)
    estimate = estimate_seconds(sizes, plan)
    budget = QUICK_BUDGET_SECONDS if plan.quick else BUDGET_SECONDS
    click.echo(f"estimated time: {_duration(estimate['total'])} ("
               + ", ".join(f"{d} {_duration(s)}" for d, s in estimate.items() if d != "total")
               + f"; budget {_duration(budget)}; assumes {plan.assumed['train_pairs_per_s']:g} student training "
               f"pairs/s, {plan.assumed['teacher_texts_per_s']:g} teacher texts/s, "
               f"{plan.assumed['student_texts_per_s']:g} student encode texts/s on demo-length texts, scaled by "
               "each dataset's tokens per text)")
    if estimate["total"] > budget:
        click.echo(f"warning: the estimate exceeds the {_duration(budget)} budget", err=True)
    if dry_run:
        return {"sizes": sizes, "estimate": estimate}

    out_file = plan.out / (QUICK_FILE if plan.quick else RESULTS_FILE)
    todo = sum(len(plan.seeds) if VARIANTS[v].kind != "teacher" else 1 for v in plan.variants) * len(plan.datasets)
    done = 0
    with _mlflow.run("quality", plan.experiment) as parent:
        parent_id, experiment = parent.info.run_id, _mlflow.experiment_name(parent)  # mlflow run may file it elsewhere
        mlflow.set_tag("flipkd.benchmark", "quality")
        # prefixed: under `mlflow run` the entry point's own parameters (e.g. seeds) are already logged
        _mlflow.log_params({k: v for k, v in plan.settings().items() if k != "assumed_throughput"},
                           prefix="benchmark.")
        mlflow.log_metric("estimated_seconds", estimate["total"])
        for dataset in plan.datasets:
            splits = built[dataset]
            for split, frame in splits.items():
                mlflow.log_metric(f"{dataset}/data_{split}_pairs", len(frame))
            teacher_dir, teacher_info = None, None
            if any(VARIANTS[v].kind == "trained" or v == "teacher_finetuned" for v in plan.variants):
                teacher_dir, teacher_info = finetuned_teacher(dataset, splits, plan)
            for name in plan.variants:
                variant = VARIANTS[name]
                seeds = [0] if variant.kind == "teacher" else plan.seeds
                records = []
                for seed in seeds:
                    record = run_cell(dataset, splits, variant, seed, plan, teacher_dir, teacher_info)
                    records.append(record)
                    done += 1
                    elapsed = time.perf_counter() - started
                    click.echo(f"[{done}/{todo}] {dataset} {name} seed {seed}: test F1 {_num(record['f1'])}, "
                               f"AP {_num(record['average_precision'])}"
                               + (f", Spearman {_num(record['spearman'])}" if "spearman" in record else "")
                               + f" ({record['run_seconds']:.0f} s; elapsed {_duration(elapsed)})")
                entry = summarise(records, variant, plan, parent_id)
                _mlflow.log_metrics({k: v for k, v in entry.items() if k.endswith(("_mean", "_std"))},
                                    prefix=f"{dataset}/{name}/")
                results = load_results(out_file)
                cell = results["datasets"].setdefault(dataset, {"variants": {}})
                cell.setdefault("variants", {})[name] = entry
                cell["sizes"] = sizes[dataset]
                if teacher_info:
                    cell["teacher_finetune"] = {k: v for k, v in teacher_info.items() if k != "folder"}
                results["settings"] = {**plan.settings(), "settings_hash": plan.settings_hash(),
                                       "parent_run_id": parent_id, "experiment": experiment,
                                       "estimated_seconds": estimate["total"],
                                       "wall_seconds": time.perf_counter() - started,
                                       "git_commit": commit, "threads": _threads(),
                                       "cpu": platform.processor() or platform.machine()}
                save_results(out_file, results)
        wall = time.perf_counter() - started
        mlflow.log_metric("wall_seconds", wall)
        results = load_results(out_file)
        results["settings"]["wall_seconds"] = wall
        save_results(out_file, results)
        mlflow.log_artifact(str(out_file))
    markdown = render_markdown(results)
    if plan.quick:
        click.echo(markdown)
        click.echo(f"--quick: results in {out_file}; RESULTS.md left unchanged")
    elif Path(plan.out).resolve() != RESULTS_DIR.resolve():  # a probe or a private run: RESULTS.md is the record
        click.echo(markdown)
        click.echo(f"results in {out_file}; RESULTS.md left unchanged (--out is not {RESULTS_DIR})")
    else:
        _results.write_section("quality", markdown)
        click.echo(f"results in {out_file} and the quality section of {_results.RESULTS_MD}")
    click.echo(f"quality benchmark finished in {_duration(wall)} (estimated {_duration(estimate['total'])}); "
               f"MLflow experiment {experiment!r}, parent run {parent_id}")
    return results


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _override_options(func: Callable) -> Callable:
    enc, train = EncoderConfig(), TrainConfig()
    for opt in reversed([
        option("--learning-rate", type=POSITIVE, default=LEARNING_RATE,
               help=f"Student AdamW learning rate (train's default is {train.learning_rate:g}: it runs 63 steps "
                    "on the demo, this benchmark 20 per dataset at the default counts; chosen on dev, RESULTS.md)."),
        option("--epochs", type=POSITIVE, default=train.epochs, help="Student passes over the training pairs."),
        option("--max-steps", type=click.IntRange(min=0), default=train.max_steps,
               help="Stop student training after this many steps (0: epochs)."),
        option("--batch-size", type=click.IntRange(min=1), default=train.batch_size, help="Student pairs per step."),
        option("--precision", type=click.Choice(PRECISIONS), default="auto",
               help="Student training precision; auto (bf16 where the CPU has native bf16) keeps the full run "
                    "inside its time budget, unlike train's fp32 default."),
        option("--max-length", type=click.IntRange(min=2), default=enc.max_length, help="Student tokens per text."),
        option("--prompt", type=click.Choice(list(PROMPTS)), default=DEFAULT_PROMPT,
               help="Representation prompt around each text (as train's --prompt)."),
        option("--layer", type=int, default=enc.layer, help="Representation layer (-1: last block)."),
        option("--module", default=enc.module, help="LoRA module whose A output is the representation."),
        option("--pooling", type=click.Choice(["last", "mean"]), default=enc.pooling, help="Sequence pooling of z."),
        option("--rank", type=click.IntRange(min=1), default=enc.rank, help="LoRA rank r."),
        option("--lora-alpha", type=POSITIVE, default=enc.alpha, help="LoRA alpha."),
        option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
               help="Any other field of EncoderConfig, LossConfig, TrainConfig or TeacherFinetuneConfig "
                    "(e.g. --set w_dist=1 --set distill_mode=kl --set teacher_finetune.batch_size=16); repeatable. "
                    f"The benchmark's w_dist is {W_DIST:g} (train's: {LossConfig().w_dist:g}; chosen on dev, "
                    "RESULTS.md)."),
    ]):
        func = opt(func)
    return func


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@option("--datasets", default=",".join(DATASETS), help="Comma list of datasets.")
@option("--variants", default=",".join(DEFAULT_VARIANTS),
        help=f"Comma list of variants, 'default' (this default), or '{ALL}' (adds the joint-scoring levers "
             f"{','.join(sorted(set(VARIANTS) - set(DEFAULT_VARIANTS)))}: ~2.6x a cosine run each, beyond the 2-hour "
             "budget with the rest).")
@option("--seeds", default="3", help="Seeds of the student variants: a count N (0..N-1) or a comma list.")
@option("--quick", is_flag=True, default=False,
        help=f"Smoke run: {QUICK_DATASET} only, {QUICK_COUNTS['max_train']}/{QUICK_COUNTS['max_dev']}/"
             f"{QUICK_COUNTS['max_test']} pairs, 1 seed (< 15 min); writes {QUICK_FILE}, not RESULTS.md.")
@option("--max-train", type=click.IntRange(min=2), default=None,
        help=f"Train pairs per dataset [default: {DEFAULT_COUNTS['max_train']}].")
@option("--max-dev", type=click.IntRange(min=2), default=None,
        help=f"Dev pairs per dataset [default: {DEFAULT_COUNTS['max_dev']}].")
@option("--max-test", type=click.IntRange(min=2), default=None,
        help=f"Test pairs per dataset [default: {DEFAULT_COUNTS['max_test']}].")
@option("--data-seed", type=int, default=0, help="Seed of the pair sampling (the same data for every seed).")
@option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_ROOT,
        help="Folder holding the dataset folders.")
@option("--student", default=STUDENT_DEFAULT, help="Student LLM: packaged name or a local folder.")
@option("--teacher", default=TEACHER_DEFAULT, help="Base teacher: packaged name or a local folder.")
@option("--teacher-epochs", type=click.IntRange(min=1), default=TeacherFinetuneConfig().epochs,
        help="Teacher fine-tuning epochs.")
@option("--cache-dir", type=click.Path(file_okay=False), default=None,
        help="Cache of models, teacher embeddings and fine-tuned teachers (default $FLIPKD_CACHE_DIR or "
             "~/.cache/flipkd).")
@_override_options
@option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR, help="Results folder.")
@option("--experiment", default=EXPERIMENT, help="MLflow experiment (ignored under `mlflow run`).")
@option("--assume-train-pairs-per-s", type=POSITIVE, default=ASSUMED["train_pairs_per_s"],
        help="Student training throughput assumed by the time estimate.")
@option("--progress/--no-progress", default=False, help="Progress bars of teacher encoding and fine-tuning.")
@option("--dry-run", is_flag=True, default=False, help="Build the datasets, print sizes and the estimate, exit.")
def cli(**o: Any) -> dict[str, Any]:
    """Benchmark flipped distillation against its baselines and ablations on banking77, MEDIQA RQE and STS-B."""
    from pipelines import _mlflow

    ctx = click.get_current_context()
    datasets = _comma_list(o["datasets"], DATASETS, "--datasets")
    variants = (DEFAULT_VARIANTS if o["variants"].strip() == "default"
                else _comma_list(o["variants"], list(VARIANTS), "--variants"))
    seeds = parse_seeds(o["seeds"])
    counts = dict(DEFAULT_COUNTS)
    if o["quick"]:
        counts = dict(QUICK_COUNTS)
        if ctx.get_parameter_source("datasets").name == "DEFAULT":
            datasets = [QUICK_DATASET]
        if ctx.get_parameter_source("seeds").name == "DEFAULT":
            seeds = [0]
    for key in counts:
        if o[key] is not None:
            counts[key] = o[key]
    encoder = EncoderConfig(rank=o["rank"], alpha=o["lora_alpha"], layer=o["layer"], module=o["module"],
                            pooling=o["pooling"], max_length=o["max_length"], **PROMPTS[o["prompt"]])
    train = TrainConfig(learning_rate=o["learning_rate"], epochs=o["epochs"], max_steps=o["max_steps"],
                        batch_size=o["batch_size"], precision=o["precision"])
    teacher_ft = TeacherFinetuneConfig(epochs=o["teacher_epochs"], seed=0)
    loss = LossConfig(w_dist=W_DIST)
    apply_overrides({"encoder": encoder, "loss": loss, "train": train, "teacher_finetune": teacher_ft},
                    o["overrides"])
    plan = Plan(datasets=datasets, variants=variants, seeds=seeds, counts=counts, data_seed=o["data_seed"],
                data_root=Path(o["data_root"]), student=o["student"], teacher=o["teacher"], cache_dir=o["cache_dir"],
                encoder=encoder, loss=loss, train=train, teacher_finetune=teacher_ft, quick=o["quick"],
                out=Path(o["out"]), experiment=o["experiment"], progress=o["progress"],
                assumed={**ASSUMED, "train_pairs_per_s": o["assume_train_pairs_per_s"]}, command=_command(ctx))
    click.echo(f"quality benchmark: datasets {','.join(datasets)}; variants {','.join(variants)}; seeds {seeds}; "
               f"pairs at most {counts['max_train']}/{counts['max_dev']}/{counts['max_test']} (train/dev/test)")
    return _mlflow.clean_errors(run)(plan, dry_run=o["dry_run"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """In-process entry (tests): parse ``argv`` and run; errors raise (``SystemExit(2)`` for bad input)."""
    return cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)


if __name__ == "__main__":
    cli()
