"""Headline benchmark: the flipped student against the fine-tuned teacher that taught it, at real sizes.

    python -m benchmarks.headline --budget 150m      # run the missing cells that fit, in a fixed order, then stop
    python -m benchmarks.headline --render           # rewrite RESULTS.md and headline.json from the stored cells
    python -m benchmarks.headline --best w_dist=2 --best temperature=0.1   # the flip setting chosen on dev
    python -m benchmarks.headline --set lora_layers=16 --variants sup_only  # one variant at another base setting

Data (``benchmarks.datasets``, from ``../shared/data``): banking77 (2,000 train / 600 dev pairs built inside the
train file's utterances, 1,600 test pairs built from its test utterances), mediqa2019_rqe (2,000 train pairs; dev =
the 295 validation pairs plus whole groups of training pairs up to 600; the whole test file, 230 pairs) and
stsbenchmark (2,000 train, 600 dev, the whole test file, 1,378 pairs; two levers: ``stsbenchmark_all`` trains on all
its train pairs, ``stsbenchmark_fulldev`` keeps the 2,000 and takes all of sts-dev as dev). Dev chooses every
threshold, checkpoint and setting; test is read once per cell.

Variants, per dataset: ``teacher_base`` (the off-the-shelf MiniLM), ``teacher_finetuned`` (MiniLM fine-tuned with
CoSENT on train for E epochs, E in ``TEACHER_EPOCHS`` chosen on dev AP: every E is a cell), then over 3 seeds, all
distilled from that teacher: ``sup_only`` (L_sup alone), ``flip_full`` (the composite with METHOD.md's filter at
delta 0.5 / 0.5) and ``flip_best`` (the same plus the ``--best`` settings, chosen on dev: RESULTS.md, "settings tried";
``--best delta_pos=0 --best delta_neg=1`` is train's ``--no-filter``, its default; ``per_pair``,
``neighbour_share`` and ``positive_threshold`` there add teacher-labelled extra pairs, ``components.data.augment``,
which sup_only never gets: it has no term to learn from them; ``sup_mode=generative`` trains L_sup through the
decoder path, and the cell is then the joint reading, P("yes" | pair), with its cosine figures kept as
``cosine_*``; ``sup_mode=both`` trains both readings and the cell is their mix, its weight chosen on dev,
``components.student.reading_mix``, with both readings' scores kept under ``readings``). Beside them, apart from the
student rows: ``mix``, a logistic fit on dev of the fine-tuned teacher's and the flipped student's scores.

Reported on test: F1 at the dev threshold, AP and ROC-AUC per seed (mean ± std), and for the seed-averaged scores
(each pair's score averaged over the seeds, its threshold chosen on dev the same way) F1 with a paired bootstrap
95% interval over test pairs of flip minus teacher_finetuned and flip minus sup_only, and beside it the same
interval of test AP, which needs no threshold (where dev and test differ, F1 also reads where dev put it).

Cells are stored the moment they finish (``benchmarks/results/headline_cells/<dataset>/<variant>-<hash>.json``:
figures and every dev/test score, keyed by dataset, variant, seed and settings hash) and skipped by a later run with
the same settings, so the table fills over several sittings; RESULTS.md names the cells still missing. A student
cell that the budget cannot fit pauses at a training checkpoint (every 25 steps, under the flipkd cache folder's
``checkpoints/headline/<key>``) and the next run with the same settings continues it, into the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import click
import numpy as np

from benchmarks import _results
from benchmarks._cells import Budget, CellStore, PausedCell, cell_key, parse_budget
from benchmarks._machine import cpu_flags
from benchmarks._real_size import build_real, train_cell
from benchmarks.datasets import DATASETS
from components.data.augment import AugmentConfig
from components.losses.composite_loss import LossConfig
from components.metrics import average_precision, best_f1, best_f1_threshold, classification_metrics, roc_auc
from components.model_cache import cache_root
from components.models import STUDENT_DEFAULT, TEACHER_DEFAULT
from components.student.lora_encoder import EncoderConfig
from components.teacher.finetune import TeacherFinetuneConfig
from components.training.checkpoint import CheckpointError, TrainingPaused, latest_checkpoint, load_checkpoint
from components.training.trainer import TrainConfig
from pipelines._data import data_fingerprint
from pipelines._resume import Checkpointing

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CELLS_DIR, SUMMARY_FILE = RESULTS_DIR / "headline_cells", RESULTS_DIR / "headline.json"
EXPERIMENT = "flipkd-benchmark"
COUNTS = {"banking77": {"max_train": 2000, "max_dev": 600, "max_test": 1600},
          "mediqa2019_rqe": {"max_train": 2000, "max_dev": 600, "max_test": None},
          "stsbenchmark": {"max_train": 2000, "max_dev": 600, "max_test": None},
          # a lever, not one of the three: STS-B on all its train pairs (same dev and test; cross-split removal
          # acts before subsampling), so the student's gain from more data reads against the teacher's
          "stsbenchmark_all": {"max_train": None, "max_dev": 600, "max_test": None},
          # another: STS-B's same 2,000 train pairs (chosen from the same pool) against all of sts-dev as dev, about
          # 2.5x the pairs: one seed's dev AP difference spans about +-0.037 on 600 pairs (docs/defaults.md)
          "stsbenchmark_fulldev": {"max_train": 2000, "max_dev": None, "max_test": None}}
SOURCE = {"stsbenchmark_all": "stsbenchmark", "stsbenchmark_fulldev": "stsbenchmark"}  # a lever's data: what it reads
TEACHER_EPOCHS = (1, 2, 4)
STUDENTS = {"sup_only": ("sup",), "flip_full": ("sup", "dist", "mcl"), "flip_best": ("sup", "dist", "mcl")}
# what a variant or --seeds sets, so --set / --best cannot; sup_mode may be chosen (generative: the cell is the
# joint reading, P("yes" | pair) through the decoder path, METHOD.md "Inference"; both: the two readings' mix)
FIXED_BY_VARIANT = frozenset({"parts", "seed"})
SEEDS = (0, 1, 2)
BOOTSTRAP = 2000
ASSUMED_SECONDS = {"teacher": 120.0, "student": 300.0}
# a student cell checkpoints every this many steps and, when the budget runs out, pauses at a checkpoint; one
# starts if at least MIN_SITTING seconds of the budget are left (a sitting shorter than that is mostly loading)
CHECKPOINT_EVERY = 25
MIN_SITTING = 20 * 60.0


# ----------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass
class StudentModel:
    """The student LLM, a config section of its own (``student=NAME`` with ``--set`` for every variant, with
    ``--best`` for flip_best alone): the model itself, not a field of the encoder, loss or trainer configs."""

    student: str = STUDENT_DEFAULT

    def __post_init__(self) -> None:
        self.student = self.student.strip()
        if not self.student:
            raise ValueError("name a student (e.g. student=gemma3-270m)")


@dataclasses.dataclass
class Settings:
    encoder: EncoderConfig
    loss: LossConfig
    train: TrainConfig
    best: tuple[str, ...]
    teacher: str = TEACHER_DEFAULT
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: StudentModel = dataclasses.field(default_factory=StudentModel)

    def student_of(self, variant: str) -> str:
        """The student LLM a variant trains (a packaged name, a local folder or a hub id: ``resolve_student``)."""
        return self._configs(variant)["model"].student

    def _configs(self, variant: str) -> dict[str, Any]:
        from benchmarks._quality_plan import apply_overrides

        configs = {"encoder": dataclasses.replace(self.encoder), "loss": dataclasses.replace(self.loss),
                   "train": dataclasses.replace(self.train), "augment": dataclasses.replace(self.augment),
                   "model": dataclasses.replace(self.model)}
        if variant == "flip_best":
            apply_overrides(configs, list(self.best), fixed=FIXED_BY_VARIANT)
        configs["loss"] = dataclasses.replace(configs["loss"], parts=STUDENTS[variant])
        return configs

    def student(self, variant: str) -> tuple[EncoderConfig, LossConfig, TrainConfig]:
        """The configs of one student variant (``flip_best`` adds the ``--best`` settings)."""
        configs = self._configs(variant)
        return configs["encoder"], configs["loss"], configs["train"]

    def extra_pairs(self, variant: str) -> AugmentConfig | None:
        """Teacher-labelled extra pairs of one variant (``per_pair``, ``neighbour_share``, ``positive_threshold``),
        or None; never for sup_only, which has no term to learn from them."""
        augment = self._configs(variant)["augment"]
        return augment if augment.per_pair > 0 and "dist" in STUDENTS[variant] else None

    def student_hash(self, variant: str, teacher_epochs: int) -> str:
        encoder, loss, train = self.student(variant)
        data = {"encoder": encoder.to_dict(), "loss": loss.to_dict(),
                "train": {k: v for k, v in train.to_dict().items() if k != "seed"}, "teacher": self.teacher,
                "teacher_epochs": teacher_epochs}
        augment = self.extra_pairs(variant)
        if augment is not None:  # only then: the cells stored before this option keep their hashes
            data["extra_pairs"] = {k: v for k, v in dataclasses.asdict(augment).items() if k != "seed"}
        if self.student_of(variant) != STUDENT_DEFAULT:  # likewise
            data["student"] = self.student_of(variant)
        return _hash(data)

    def brief(self, variant: str) -> str:
        encoder, loss, train = self.student(variant)
        augment = self.extra_pairs(variant)
        steps = f"{train.max_steps} steps" if train.max_steps else f"{train.epochs:g} epochs"
        if train.eval_every:  # a --set eval_every is no --best, so say it here
            steps += f" (best of every {train.eval_every} steps on dev)"
        return (f"lr {train.learning_rate:g}, {steps} of {train.batch_size}, clip {train.clip_mode} "
                f"{train.clip_value:g}, w {loss.w_sup:g}/{loss.w_dist:g}/{loss.w_mcl:g}, tau {loss.temperature:g}, "
                f"rank {encoder.rank}, "
                f"LoRA blocks {encoder.lora_layers or 'all'}, precision {train.precision}"
                + (f", extra pairs {augment.per_pair:g} per pair ({augment.neighbour_share:.0%} neighbours)"
                   if augment else "")
                + (f", student {self.student_of(variant)}" if self.student_of(variant) != STUDENT_DEFAULT else "")
                + (f"; best: {', '.join(self.best)}" if variant == "flip_best" and self.best else ""))


def make_settings(best: tuple[str, ...], overrides: tuple[str, ...]) -> Settings:
    """The settings of ``--best`` and ``--set`` (a bad key fails here, before any work)."""
    from benchmarks._quality_plan import apply_overrides

    configs = {"encoder": EncoderConfig(), "loss": LossConfig(), "train": TrainConfig(), "augment": AugmentConfig(),
               "model": StudentModel()}
    apply_overrides(configs, list(overrides), fixed=FIXED_BY_VARIANT)
    settings = Settings(configs["encoder"], configs["loss"], configs["train"], tuple(best),
                        augment=configs["augment"], model=configs["model"])
    settings.student("flip_best")
    return settings


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def teacher_hash(teacher: str, epochs: int | None) -> str:
    config = dataclasses.asdict(TeacherFinetuneConfig(epochs=epochs, seed=0)) if epochs else None
    return _hash({"teacher": teacher, "finetune": config})


# ----------------------------------------------------------------------------------------------- statistics


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    return classification_metrics(scores, labels, threshold)["f1"]


def _resamples(size: int, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` resamples of ``size`` test pairs with replacement (one seed: both intervals see the same)."""
    return np.random.default_rng(seed).integers(0, size, size=(n, size))


def paired_bootstrap_f1(labels: np.ndarray, first: np.ndarray, second: np.ndarray, n: int = BOOTSTRAP,
                        seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of F1(first) - F1(second) over test pairs resampled with replacement (the same
    resample for both: paired). ``first``/``second`` are the boolean decisions."""
    labels, first, second = (np.asarray(x, dtype=bool) for x in (labels, first, second))
    index = _resamples(len(labels), n, seed)
    y = labels[index]

    def f1(decisions: np.ndarray) -> np.ndarray:
        d = decisions[index]
        tp = (d & y).sum(1)
        return 2 * tp / np.maximum(2 * tp + (d & ~y).sum(1) + (~d & y).sum(1), 1)

    low, high = np.percentile(f1(first) - f1(second), [2.5, 97.5])
    return float(low), float(high)


def resampled_ap(scores: np.ndarray, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """scikit-learn's average precision of ``scores`` on every resample (a row of ``index``) at once, NaN for a
    resample without a positive pair. Vectorised over the rows (a scikit-learn call per resample was slow):
    scores become dense ranks, each row counts its pairs and positives per rank, and precision is read at each
    distinct score from the top, ties together, as scikit-learn does."""
    labels = np.asarray(labels, dtype=bool)
    _, rank = np.unique(-np.asarray(scores, dtype=np.float64), return_inverse=True)  # 0 = highest score
    width = int(rank.max()) + 1
    flat = (rank[index] + width * np.arange(len(index))[:, None]).ravel()
    pairs = np.bincount(flat, minlength=len(index) * width).reshape(len(index), width)
    positives = np.bincount(flat, weights=labels[index].ravel(), minlength=len(index) * width).reshape(pairs.shape)
    precision = np.cumsum(positives, 1) / np.maximum(np.cumsum(pairs, 1), 1)
    total = positives.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (positives * precision).sum(1) / total, np.nan)


def paired_bootstrap_ap(labels: np.ndarray, first: np.ndarray, second: np.ndarray, n: int = BOOTSTRAP,
                        seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of AP(first) - AP(second) over the same paired resamples as the F1 interval.
    ``first``/``second`` are scores: AP needs no threshold, so it reads the ranking apart from where dev put the
    threshold (a resample without a positive pair is skipped)."""
    index = _resamples(len(labels), n, seed)
    gaps = resampled_ap(first, labels, index) - resampled_ap(second, labels, index)
    low, high = np.percentile(gaps[~np.isnan(gaps)], [2.5, 97.5])
    return float(low), float(high)


def scored(dev: np.ndarray, test: np.ndarray, dev_labels: np.ndarray, test_labels: np.ndarray) -> dict[str, Any]:
    """Test figures of scores whose threshold is chosen on dev, and the test decisions."""
    threshold = best_f1_threshold(dev, dev_labels)
    return {"threshold": threshold, "f1": f1_at(test, test_labels, threshold),
            "hindsight_f1": best_f1(test, test_labels),
            "ap": average_precision(test, test_labels), "roc_auc": roc_auc(test, test_labels),
            "dev_ap": average_precision(dev, dev_labels), "decisions": test >= threshold, "test_scores": test}


def mix_scores(dev: list[np.ndarray], test: list[np.ndarray], dev_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A logistic fit on dev of several score columns; returns its dev and test probabilities."""
    from sklearn.linear_model import LogisticRegression

    x_dev, x_test = np.column_stack(dev), np.column_stack(test)
    model = LogisticRegression().fit(x_dev, dev_labels)
    return model.predict_proba(x_dev)[:, 1], model.predict_proba(x_test)[:, 1]


# ----------------------------------------------------------------------------------------------- cells


def teacher_cell(dataset: str, splits: dict, settings: Settings, epochs: int | None, cache_dir: str | None) -> dict:
    from benchmarks._quality_runs import finetune_cached, teacher_scorer

    path: str | Path = settings.teacher
    if epochs:
        # named after the data read: a lever with the same train pairs reuses its dataset's teachers (the cache key
        # holds the train data's fingerprint, so a lever with other train pairs gets its own)
        path, _ = finetune_cached(SOURCE.get(dataset, dataset), splits, settings.teacher,
                                  TeacherFinetuneConfig(epochs=epochs, seed=0), cache_dir)
    scorer = teacher_scorer(path, cache_dir)
    scores = {name: scorer.pair_cosine(list(f["text_a"]), list(f["text_b"])) for name, f in splits.items()
              if name != "train"}
    return {"scores": {k: np.round(v, 6).tolist() for k, v in scores.items()}, "folder": str(path),
            "dev_ap": average_precision(scores["dev"], splits["dev"]["match"].to_numpy())}


def rebuild_teacher(dataset: str, splits: dict, settings: Settings, epochs: int, cell: dict, cache_dir: str | None
                    ) -> tuple[str, dict]:
    """The chosen teacher fine-tuned again (same data, config, seed) on a machine that lacks its folder.

    The cells travel with the repository, the fine-tuned teachers stay in a machine's cache: a new machine
    resuming the table rebuilds the teacher and says how far its dev scores are from the stored cell's
    (another CPU may round differently), so the students of the table never learn from an unknown teacher.
    """
    rebuilt = teacher_cell(dataset, splits, settings, epochs, cache_dir)
    gap = float(np.max(np.abs(np.asarray(rebuilt["scores"]["dev"]) - np.asarray(cell["scores"]["dev"]))))
    check = {"dev_ap": rebuilt["dev_ap"], "stored_dev_ap": cell["dev_ap"], "max_abs_dev_score_gap": gap}
    click.echo(f"[headline] {dataset}: teacher_ft_e{epochs} rebuilt (its folder is not on this machine): dev AP "
               f"{rebuilt['dev_ap']:.4f} against the stored {cell['dev_ap']:.4f}, largest dev score gap {gap:.2e}")
    if abs(rebuilt["dev_ap"] - cell["dev_ap"]) > 0.005:
        raise click.ClickException(f"{dataset}: the rebuilt teacher_ft_e{epochs} is not the stored one (dev AP "
                                   f"{rebuilt['dev_ap']:.4f} against {cell['dev_ap']:.4f}); students trained on it "
                                   "would not belong to this table")
    return rebuilt["folder"], check


def student_cell(dataset: str, splits: dict, settings: Settings, variant: str, seed: int, teacher_dir: str,
                 cache_dir: str | None, key: str, store: CellStore, deadline: float | None = None,
                 rebuilt: dict | None = None) -> dict | None:
    """One student cell, continued from where an earlier sitting paused it if one did, stored in ``store``
    before its checkpoints are dropped (a kill in between loses nothing); None when it pauses (at a training
    checkpoint, because the next one would end past ``deadline``, a ``time.monotonic()``)."""
    encoder, loss, train = settings.student(variant)
    # checkpoints change nothing the cell computes (a resumed run equals an uninterrupted one), so not its hash
    train = dataclasses.replace(train, seed=seed, checkpoint_every=CHECKPOINT_EVERY)
    augment = settings.extra_pairs(variant)
    folder = cache_root(cache_dir) / "checkpoints" / "headline" / key
    checkpointing = Checkpointing(folder, {"cell": key, "data": data_fingerprint(splits), "teacher": teacher_dir},
                                  deadline=deadline)
    latest = latest_checkpoint(folder)
    if latest is not None:
        try:
            checkpointing.resume = load_checkpoint(latest, checkpointing.config)
            click.echo(f"[headline] {dataset} {variant} seed {seed}: continuing from step {checkpointing.resume.step}")
        except CheckpointError as error:
            click.echo(f"[headline] {dataset} {variant} seed {seed}: its checkpoint cannot be continued ({error}); "
                       "starting the cell over")
            shutil.rmtree(folder)
    paused = PausedCell(folder)
    try:
        cell = train_cell(f"{dataset}/{variant}/seed{seed}", splits, encoder, loss, train, Path(teacher_dir),
                          cache_dir, EXPERIMENT, {"flipkd.benchmark": "headline", "benchmark.dataset": dataset,
                                                  "benchmark.variant": variant, "benchmark.seed": str(seed)},
                          augment=augment and dataclasses.replace(augment, seed=seed),
                          student=settings.student_of(variant), checkpointing=checkpointing, paused=paused)
    except TrainingPaused as stop:
        click.echo(f"[headline] {dataset} {variant} seed {seed}: paused after step {stop.step} "
                   f"({paused.seconds:.0f} s so far); the next run with the same settings continues it")
        return None
    cell["scores"] = {k: np.round(v, 6).tolist() for k, v in cell["scores"].items()}
    cell["brief"] = settings.brief(variant)
    cell["cpu_flags"] = cpu_flags()
    if rebuilt is not None:
        cell["teacher_rebuilt"] = rebuilt
    store.put(key, cell)
    shutil.rmtree(folder, ignore_errors=True)  # stored: nothing left to continue
    return cell


def expected_seconds(store: CellStore, dataset: str, settings_hash: str, flags: list[str]) -> float:
    """The budget's guess for the next student cell of ``dataset`` at ``settings_hash``.

    Cells of the same setting timed on a CPU with the same instruction sets come first; then the slowest of that
    setting's cells on any CPU (older cells name no CPU, and a guess that is too short overruns the budget); then
    the dataset's mean over every setting; then ``ASSUMED_SECONDS``.
    """
    runs = {k: c for k, c in store.cells.items() if k.startswith(f"{dataset}/") and "run_id" in c}
    setting = [c for k, c in runs.items() if k.endswith(f"/{settings_hash}")]
    here = [c["seconds"] for c in setting if c.get("cpu_flags") == flags]
    if here:
        return float(np.mean(here))
    if setting:
        return float(max(c["seconds"] for c in setting))
    return float(np.mean([c["seconds"] for c in runs.values()])) if runs else ASSUMED_SECONDS["student"]


def plan(datasets: list[str], settings: Settings, seeds: tuple[int, ...], chosen_epochs: dict[str, int | None]
         ) -> list[tuple[str, str, int, str]]:
    """Every cell in the fixed order they run: (dataset, variant, seed, key)."""
    order = []
    for dataset in datasets:
        order.append((dataset, "teacher_base", 0, cell_key(dataset, "teacher_base", 0,
                                                           teacher_hash(settings.teacher, None))))
        for epochs in TEACHER_EPOCHS:
            name = f"teacher_ft_e{epochs}"
            order.append((dataset, name, 0, cell_key(dataset, name, 0, teacher_hash(settings.teacher, epochs))))
        epochs = chosen_epochs.get(dataset)
        for seed in seeds:
            for variant in STUDENTS:
                if variant == "flip_best" and not settings.best:
                    continue
                key = cell_key(dataset, variant, seed, settings.student_hash(variant, epochs or 0))
                order.append((dataset, variant, seed, key))
    return order


def pending(order: list[tuple[str, str, int, str]], store: CellStore, variants: tuple[str, ...] = tuple(STUDENTS)
            ) -> list[tuple[str, str, int, str]]:
    """The student cells of ``order`` still to run, of ``variants`` only (a trial can skip a variant it does not
    change; the table still names that variant's missing cells)."""
    return [cell for cell in order if cell[1] in variants and cell[3] not in store]


def twin(store: CellStore, key: str) -> dict | None:
    """A stored cell of another student variant with the same dataset, seed and settings hash: the same run.

    ``--set epochs=3`` makes flip_full what an earlier ``--best epochs=3`` ran as flip_best; no need to train it twice.
    """
    dataset, variant, seed, settings_hash = key.split("/")
    for other in STUDENTS:
        cell = store.get(f"{dataset}/{other}/{seed}/{settings_hash}")
        if other != variant and cell is not None:
            return cell
    return None


def chosen_teacher(store: CellStore, dataset: str, teacher: str) -> tuple[int | None, dict | None]:
    """The fine-tuning epochs with the best dev AP among the stored ones (all of TEACHER_EPOCHS must be there)."""
    found = {e: store.get(cell_key(dataset, f"teacher_ft_e{e}", 0, teacher_hash(teacher, e))) for e in TEACHER_EPOCHS}
    if any(cell is None for cell in found.values()):
        return None, None
    epochs = max(found, key=lambda e: found[e]["dev_ap"])
    return epochs, found[epochs]


# ----------------------------------------------------------------------------------------------- report


def stored_cells(store: CellStore, order: list[tuple[str, str, int, str]], variant: str) -> list[dict]:
    """The stored cells of one student variant in a :func:`plan` order (its seeds that have run)."""
    return [store.get(key) for _, v, _, key in order if v == variant and key in store]


def summarise(store: CellStore, datasets: list[str], settings: Settings, seeds: tuple[int, ...],
              labels: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dataset in datasets:
        dev_y, test_y = labels[dataset]["dev"], labels[dataset]["test"]
        epochs, teacher = chosen_teacher(store, dataset, settings.teacher)
        order = plan([dataset], settings, seeds, {dataset: epochs})
        missing = [f"{v}/seed{s}" for _, v, s, key in order if key not in store]
        rows: dict[str, Any] = {}
        base = store.get(order[0][3])
        for name, cell in (("teacher_base", base), ("teacher_finetuned", teacher)):
            if cell is not None:
                rows[name] = scored(np.array(cell["scores"]["dev"]), np.array(cell["scores"]["test"]), dev_y, test_y)
        for variant in STUDENTS:
            cells = stored_cells(store, order, variant)
            if not cells:
                continue
            per_seed = [scored(np.array(c["scores"]["dev"]), np.array(c["scores"]["test"]), dev_y, test_y)
                        for c in cells]
            dev_mean = np.mean([c["scores"]["dev"] for c in cells], axis=0)
            test_mean = np.mean([c["scores"]["test"] for c in cells], axis=0)
            row = scored(dev_mean, test_mean, dev_y, test_y)
            row.update({f"{k}_seeds": [p[k] for p in per_seed] for k in ("f1", "ap", "roc_auc", "dev_ap")})
            row.update({"seeds": len(cells), "brief": cells[0]["brief"], "dev_mean": dev_mean, "test_mean": test_mean,
                        "guard_warnings": sum(c["guard_warnings"] for c in cells),
                        "seconds": float(np.mean([c["seconds"] for c in cells]))})
            rows[variant] = row
        flip = "flip_best" if settings.best and "flip_best" in rows else "flip_full"
        cis, ap_cis = {}, {}
        if flip in rows:
            for other in ("teacher_finetuned", "sup_only"):
                if other in rows:
                    cis[other] = paired_bootstrap_f1(test_y, rows[flip]["decisions"], rows[other]["decisions"])
                    ap_cis[other] = paired_bootstrap_ap(test_y, rows[flip]["test_scores"], rows[other]["test_scores"])
            if "teacher_finetuned" in rows:
                dev_p, test_p = mix_scores([np.array(teacher["scores"]["dev"]), rows[flip]["dev_mean"]],
                                           [np.array(teacher["scores"]["test"]), rows[flip]["test_mean"]],
                                           dev_y)
                rows["mix"] = scored(dev_p, test_p, dev_y, test_y)
        rate = {k: float(np.mean(np.asarray(v) >= 0.5)) for k, v in labels[dataset].items()}
        out[dataset] = {"rows": rows, "flip": flip, "cis": cis, "ap_cis": ap_cis, "missing": missing,
                        # calling every pair a match: the floor a thresholded scorer should clear
                        "match_rate": rate, "all_match_f1": f1_at(np.ones(len(test_y)), test_y, 0.5),
                        "teacher_epochs": epochs, "sizes": {k: int(len(v)) for k, v in labels[dataset].items()}}
    return out


def _seed_stat(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def render(summary: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}` (cells stored as they finish; `--budget` runs the missing ones). Test F1 at the "
             "threshold chosen on dev; students: per-seed mean ± std, and F1 of the seed-averaged scores with the "
             "paired bootstrap 95% interval (2,000 resamples of the test pairs) against the fine-tuned teacher and "
             "sup_only."]
    for dataset, s in summary.items():
        sizes = "/".join(str(s["sizes"].get(k, "?")) for k in ("train", "dev", "test"))
        lines += ["", f"**{dataset}** (pairs train/dev/test {sizes}; teacher fine-tuned "
                      f"{s['teacher_epochs'] or '?'} epoch(s), chosen on dev AP)", "",
                  "| variant | test F1 per seed | test F1 seed-averaged | test AP | test ROC-AUC | dev AP | guard |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in s["rows"].items():
            if name == "mix":
                continue
            per_seed = _seed_stat(row["f1_seeds"]) if "f1_seeds" in row else "-"
            ap = _seed_stat(row["ap_seeds"]) if "ap_seeds" in row else f"{row['ap']:.3f}"
            auc = _seed_stat(row["roc_auc_seeds"]) if "roc_auc_seeds" in row else f"{row['roc_auc']:.3f}"
            lines.append(f"| `{name}` | {per_seed} | {row['f1']:.3f} | {ap} | {auc} | {row['dev_ap']:.3f} | "
                         f"{row.get('guard_warnings', '-')} |")
        if "mix" in s["rows"]:
            m = s["rows"]["mix"]
            lines += ["", f"Apart from the students: `mix` (logistic fit on dev of the fine-tuned teacher and "
                          f"`{s['flip']}` seed-averaged scores): test F1 {m['f1']:.3f}, AP {m['ap']:.3f}, ROC-AUC "
                          f"{m['roc_auc']:.3f}."]
        for other, (low, high) in s["cis"].items():
            ap_low, ap_high = s["ap_cis"][other]
            flip_row, other_row = s["rows"][s["flip"]], s["rows"][other]
            lines.append(f"- `{s['flip']}` minus `{other}`, test F1 of seed-averaged scores: "
                         f"{flip_row['f1'] - other_row['f1']:+.3f}, 95% interval [{low:+.3f}, {high:+.3f}]; "
                         f"test AP (no threshold): {flip_row['ap'] - other_row['ap']:+.3f}, "
                         f"[{ap_low:+.3f}, {ap_high:+.3f}]")
        rate = s["match_rate"]
        hindsight = ", ".join(f"`{name}` {row['hindsight_f1']:.3f}" for name, row in s["rows"].items())
        lines.append(f"- for scale: calling every test pair a match scores test F1 {s['all_match_f1']:.3f} (match "
                     f"rate test {rate['test']:.3f}, dev {rate['dev']:.3f}); the best test F1 any "
                     f"threshold reaches, in hindsight (not a selection): {hindsight}")
        if s["missing"]:
            lines.append(f"- missing cells: {', '.join(s['missing'])}")
    briefs = {row["brief"] for s in summary.values() for row in s["rows"].values() if "brief" in row}
    lines += ["", "Student settings: " + " | ".join(sorted(briefs))]
    return "\n".join(lines)


def setting_label(variant: str, brief: str) -> str:
    """A student setting's name in the reports: its loss (sup_only, or one of the flips, which differ only in
    settings) and its brief."""
    return f"{'sup_only' if variant == 'sup_only' else 'flip'}: {brief}"


def settings_tried(store: CellStore, labels: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list[float]]]:
    """Dev AP of every student setting stored (flip_full, sup_only and every --best tried), per dataset and seed:
    the evidence a flip setting is chosen on. Cells of one settings hash are one setting on every dataset, named by
    the brief of its first cell (a later run of it as ``--set K=V`` writes its brief without the ``--best`` list)."""
    out: dict[str, dict[str, list[float]]] = {}
    seen, named = set(), {}
    for key in sorted(store.cells):
        cell = store.cells[key]
        dataset, variant, seed, settings_hash = key.split("/")
        run = (dataset, seed, cell.get("brief"), cell.get("run_id", key))
        if "brief" not in cell or dataset not in labels or run in seen:
            continue
        seen.add(run)  # a reused cell (twin) is one run, counted once
        brief = named.setdefault((setting_label(variant, ""), settings_hash), cell["brief"])
        dev = average_precision(np.array(cell["scores"]["dev"]), labels[dataset]["dev"])
        out.setdefault(setting_label(variant, brief), {}).setdefault(dataset, []).append(dev)
    return out


def render_tried(tried: dict[str, dict[str, list[float]]]) -> str:
    if not tried:
        return ""
    datasets = sorted({d for per in tried.values() for d in per})
    lines = ["", "", "**Settings tried** (every student setting stored, dev AP mean over its seeds, n seeds; a "
             "`sup_mode=generative` setting is read jointly, P(\"yes\" | pair); a `sup_mode=both` one through the "
             "mix of its two readings, weighted on dev):", "",
             "| setting | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for name, per in sorted(tried.items()):
        cells = [f"{np.mean(per[d]):.3f} (n={len(per[d])})" if d in per else "-" for d in datasets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline_json(summary: dict[str, Any], settings: Settings, command: str) -> dict[str, Any]:
    out: dict[str, Any] = {"command": command, "best": list(settings.best)}
    for dataset, s in summary.items():
        rows, flip = s["rows"], s["flip"]
        f1 = {name: row["f1"] for name, row in rows.items()}
        out[dataset] = {
            "teacher_finetuned_f1": f1.get("teacher_finetuned"), "teacher_base_f1": f1.get("teacher_base"),
            "flip_f1": f1.get(flip), "flip_variant": flip, "sup_only_f1": f1.get("sup_only"),
            "flip_full_f1": f1.get("flip_full"), "mix_f1": f1.get("mix"),
            "flip_minus_teacher_ci": list(s["cis"]["teacher_finetuned"]) if "teacher_finetuned" in s["cis"] else None,
            "flip_minus_sup_ci": list(s["cis"]["sup_only"]) if "sup_only" in s["cis"] else None,
            "flip_minus_teacher_ap_ci": (list(s["ap_cis"]["teacher_finetuned"])
                                         if "teacher_finetuned" in s["ap_cis"] else None),
            "flip_minus_sup_ap_ci": list(s["ap_cis"]["sup_only"]) if "sup_only" in s["ap_cis"] else None,
            "per_seed": {name: {k: row[k] for k in ("f1_seeds", "ap_seeds", "roc_auc_seeds", "dev_ap_seeds")}
                         for name, row in rows.items() if "f1_seeds" in row},
            "all_match_f1": s["all_match_f1"], "match_rate": s["match_rate"],
            "hindsight_f1": {name: row["hindsight_f1"] for name, row in rows.items()},
            "teacher_epochs": s["teacher_epochs"], "sizes": s["sizes"], "missing": s["missing"],
            "settings": {name: row["brief"] for name, row in rows.items() if "brief" in row}}
    return out


# ----------------------------------------------------------------------------------------------- command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--datasets", default=",".join(DATASETS), show_default=True,
              help="Comma list of datasets; two levers read STS-B: stsbenchmark_all on all its train pairs (same "
                   "dev and test), stsbenchmark_fulldev with all of sts-dev as dev (same train and test).")
@click.option("--best", multiple=True, metavar="KEY=VALUE",
              help="The flip setting chosen on dev (flip_best = train's defaults plus these); repeatable.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Settings of every student (EncoderConfig, LossConfig, TrainConfig fields; AugmentConfig's "
                   "per_pair, neighbour_share, positive_threshold: teacher-labelled extra pairs; student=NAME, the "
                   "student LLM, e.g. gemma3-270m); repeatable.")
@click.option("--seeds", "seed_count", type=click.IntRange(1, len(SEEDS)), default=len(SEEDS), show_default=True,
              help="Run the students of the first N seeds only (a trial of a --best setting on dev); the table "
                   "always asks for all of them and names the missing cells.")
@click.option("--variants", default=",".join(STUDENTS), show_default=True,
              help="Comma list of the student variants to run (the teachers always run); the table still names "
                   "the missing cells of the others.")
@click.option("--budget", default=None,
              help="Stop cleanly before this much wall time (e.g. 150m): a student cell that does not fit pauses at a "
                   "training checkpoint, and the next run with the same settings continues it.")
@click.option("--render", "render_only", is_flag=True, help="Only rewrite RESULTS.md and headline.json from the cells.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="flipkd cache folder.")
def cli(datasets: str, best: tuple[str, ...], overrides: tuple[str, ...], seed_count: int, variants: str,
        budget: str | None, render_only: bool, cache_dir: str | None) -> None:
    """The flipped student against its fine-tuned teacher and sup_only at real sizes (resumable)."""
    from benchmarks._quality_plan import _comma_list
    from pipelines import _mlflow

    names = _comma_list(datasets, list(COUNTS), "--datasets")
    chosen = tuple(_comma_list(variants, list(STUDENTS), "--variants"))
    settings = make_settings(best, overrides)
    store = CellStore(CELLS_DIR, shard=True)
    seeds = SEEDS[:seed_count]
    clock = Budget(parse_budget(budget) if budget else None)
    command = "python -m benchmarks.headline" + "".join(f" --best {b}" for b in best) + "".join(
        f" --set {o}" for o in overrides)
    splits_of: dict[str, dict] = {}
    flags = cpu_flags()
    stopped = False
    with _mlflow.run("headline", EXPERIMENT):
        for dataset in names:
            splits_of[dataset] = splits = build_real(SOURCE.get(dataset, dataset), COUNTS[dataset], settings.teacher,
                                                     cache_dir)
            if render_only or stopped:
                continue
            for _, variant, _, key in plan([dataset], settings, SEEDS, {}):
                if variant.startswith("teacher") and key not in store:
                    if not clock.allows(ASSUMED_SECONDS["teacher"]):
                        stopped = True
                        break
                    epochs = int(variant.removeprefix("teacher_ft_e")) if "_e" in variant else None
                    store.put(key, teacher_cell(dataset, splits, settings, epochs, cache_dir))
                    click.echo(f"[headline] {dataset} {variant}: dev AP {store.get(key)['dev_ap']:.3f}")
            epochs, teacher = chosen_teacher(store, dataset, settings.teacher)
            if stopped or teacher is None:
                continue
            teacher_dir: str | None = teacher["folder"] if Path(teacher["folder"]).is_dir() else None
            rebuilt: dict | None = None
            for _, variant, seed, key in pending(plan([dataset], settings, seeds, {dataset: epochs}), store, chosen):
                same = twin(store, key)
                if same is not None:
                    store.put(key, same)
                    click.echo(f"[headline] {dataset} {variant} seed {seed}: same settings as a stored cell, reused")
                    continue
                rebuild = ASSUMED_SECONDS["teacher"] if teacher_dir is None else 0
                # a cell longer than the budget left starts anyway when a sitting's worth is left: it pauses
                expected = min(expected_seconds(store, dataset, key.split("/")[-1], flags), MIN_SITTING)
                if not clock.allows(expected + rebuild):
                    stopped = True
                    break
                if teacher_dir is None:
                    teacher_dir, rebuilt = rebuild_teacher(dataset, splits, settings, epochs, teacher, cache_dir)
                cell = student_cell(dataset, splits, settings, variant, seed, teacher_dir, cache_dir, key, store,
                                    clock.deadline(), rebuilt)
                if cell is None:
                    stopped = True
                    break
                m = cell["metrics"]
                click.echo(f"[headline] {dataset} {variant} seed {seed}: test F1 {m['test_f1']:.3f}, AP "
                           f"{m['test_average_precision']:.3f}, dev AP {m['dev_average_precision']:.3f} "
                           f"({cell['seconds']:.0f} s)")
    if stopped:
        click.echo(f"budget reached after {clock.elapsed() / 60:.0f} min: the missing cells run next time (same "
                   "command); RESULTS.md names them")
    labels = {d: {k: f["match"].to_numpy() for k, f in s.items()} for d, s in splits_of.items()}
    summary = summarise(store, names, settings, SEEDS, labels)
    tried = settings_tried(store, labels)
    data = headline_json(summary, settings, command)
    SUMMARY_FILE.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    _results.write_section("headline", render(summary, command) + render_tried(tried))
    click.echo(render(summary, command) + render_tried(tried))


if __name__ == "__main__":
    cli()
