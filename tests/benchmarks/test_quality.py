"""The quality benchmark: dataset builders on small synthetic files in the real formats, and one tiny end-to-end run.

Nothing here reads ../shared/data: the files are written into tmp_path in the formats of banking77 (CSV),
MEDIQA 2019 RQE (XML) and the STS benchmark (tab-separated, no quoting).
"""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from benchmarks import _quality_estimate, _results, quality
from benchmarks.datasets import (
    build_banking77,
    build_mediqa2019_rqe,
    build_stsbenchmark,
    lexical_embed,
    texts_of,
)
from components.data.contract import CANONICAL_COLUMNS, pair_id

INTENTS = {
    "card_lost": ("card", "lost", "stolen", "block"),
    "password_reset": ("password", "reset", "forgot", "login"),
    "refund": ("refund", "order", "cancel", "money"),
    "transfer": ("transfer", "balance", "fee", "payment"),
    "parcel": ("parcel", "delivery", "track", "late"),
    "account": ("account", "open", "close", "new"),
}
FILLER = "how do i my the can what is to a for with when why".split()


def _utterances(keywords, n, rng):
    out = set()
    for first, second in itertools.permutations(keywords, 2):
        for filler in itertools.combinations(FILLER, 2):
            out.add(f"{' '.join(filler)} {first} {second}")
    return rng.sample(sorted(out), n)


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    rng = random.Random(0)
    # banking77: text,category (CSV, quoted where needed)
    bank = root / "banking77"
    bank.mkdir(parents=True)
    train_rows, test_rows = [], []
    for intent, words in INTENTS.items():
        texts = _utterances(words, 20, rng)
        train_rows += [(t, intent) for t in texts[:14]]
        test_rows += [(t, intent) for t in texts[14:]]
    train_rows.append(('the card, "lost" again?', "card_lost"))  # quotes and a comma need CSV quoting
    train_rows.append(test_rows[0])  # a test utterance also in the train file: must stay out of train/dev

    def write_csv(path, rows):
        lines = ["text,category"] + ['"' + t.replace('"', '""') + f'",{c}' for t, c in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    write_csv(bank / "train.csv", train_rows)
    write_csv(bank / "test.csv", test_rows)

    # MEDIQA RQE: <pair pid value><chq/><faq/></pair>, whitespace and entities as in the real files
    med = root / "mediqa2019_rqe"
    med.mkdir()
    shared = "what is the fee for a new card ?"

    def xml(rows, tag):
        body = "".join(f'<pair pid="{i}" type="t" value="{"true" if y else "false"}">\n<chq>\n   {a}\n</chq>\n'
                       f"<faq>\n   {b}\n</faq>\n</pair>\n" for i, (a, b, y) in enumerate(rows, 1))
        return f'<?xml version="1.0" encoding="UTF-8"?>\n<{tag}>\n{body}</{tag}>\n'

    def med_rows(prefix, n):
        return [(f"{prefix} question {i} about  my   card &apos;pin&apos;", f"{prefix} faq {i % 5}", i % 2 == 0)
                for i in range(n)]

    train = med_rows("train", 30) + [(shared, "train faq 1", True)]
    test = med_rows("test", 20) + [(shared, "test faq 9", True)]
    (med / "MEDIQA2019-Task2-RQE-TrainingSet-AMIA2016.xml").write_text(xml(train, "Train"), encoding="utf-8")
    (med / "MEDIQA2019-Task2-RQE-ValidationSet-AMIA2016.xml").write_text(xml(med_rows("dev", 20), "Dev"),
                                                                          encoding="utf-8")
    (med / "MEDIQA2019-Task2-RQE-TestSet-wLabels.xml").write_text(xml(test, "Test"), encoding="utf-8")

    # STS benchmark: genre, file, year, id, score, s1, s2 [, extra license fields]; split on tabs only
    sts = root / "stsbenchmark"
    sts.mkdir()
    scores = [5.0, 4.0, 3.999, 0.0, 2.5, 4.6, 1.0, 3.0]

    def sts_lines(prefix, n):
        lines = []
        for i in range(n):
            extra = "\tLICENSE-FIELD\tmore" if i % 7 == 3 else ""
            lines.append(f"main-news\tfile\t2012\t{i:04d}\t{scores[i % len(scores)]:.3f}\t"
                         f'{prefix} the "cat" sat {i}\t{prefix} a cat on mat {i}{extra}')
        return lines

    shared_sentence = "a sentence in train and test"
    (sts / "sts-train.csv").write_text("\n".join(sts_lines("train", 40)
                                                 + [f"g\tf\t2012\t9999\t4.2\t{shared_sentence}\tx"]) + "\n",
                                       encoding="utf-8")
    (sts / "sts-dev.csv").write_text("\n".join(sts_lines("dev", 32)) + "\n", encoding="utf-8")
    (sts / "sts-test.csv").write_text("\n".join(sts_lines("test", 32)
                                                + [f"g\tf\t2012\t9998\t1.0\t{shared_sentence}\ty"]) + "\n",
                                      encoding="utf-8")
    return root


def _no_text_crosses(splits):
    for first, second in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not texts_of(splits[first]) & texts_of(splits[second]), (first, second)


def _canonical(splits, graded):
    for frame in splits.values():
        assert list(frame.columns[:5]) == list(CANONICAL_COLUMNS)
        assert frame.attrs["graded"] is graded
        assert all(frame["pair_id"] == [pair_id(a, b) for a, b in zip(frame["text_a"], frame["text_b"], strict=True)])
        assert not frame.duplicated(["text_a", "text_b"]).any()
        assert set(frame["match"]) == {0, 1}


# ----------------------------------------------------------------------------------------------- builders


def test_banking_pairs_inside_splits_with_half_the_negatives_hard(data_root):
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return lexical_embed(texts)

    splits = build_banking77(data_root, max_train=40, max_dev=16, max_test=20, seed=3, embed=embed)
    _canonical(splits, graded=False)
    _no_text_crosses(splits)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [40, 16, 20]
    intent_of = {}
    for file in ("train.csv", "test.csv"):
        for line in (data_root / "banking77" / file).read_text().splitlines()[1:]:
            text, _, intent = line.rpartition(",")
            intent_of.setdefault(text.strip('"').replace('""', '"'), intent)
    test_lines = (data_root / "banking77/test.csv").read_text().splitlines()[1:]
    test_file_texts = {line.rpartition(",")[0].strip('"') for line in test_lines}
    assert not (texts_of(splits["train"]) | texts_of(splits["dev"])) & test_file_texts
    assert len(calls) == 1  # one teacher call for every pool
    for name, frame in splits.items():
        kinds = frame["kind"].value_counts().to_dict()
        assert kinds == {"positive": len(frame) // 2, "hard_negative": len(frame) // 4,
                         "random_negative": len(frame) - len(frame) // 2 - len(frame) // 4}, name
        for row in frame.itertuples():
            same = intent_of[row.text_a] == intent_of[row.text_b]
            assert same == (row.kind == "positive") == bool(row.match) == (row.label == 1.0)
    # every intent is on both sides of the train/dev cut
    assert {intent_of[t] for t in texts_of(splits["dev"])} <= {intent_of[t] for t in texts_of(splits["train"])}
    # a hard negative is the most similar utterance of another intent in the split's pool (here: the whole split)
    for name, frame in splits.items():
        members = set(_split_utterances(name, data_root))
        pool = [t for t in calls[0] if t in members]
        pool_intents = np.array([intent_of[t] for t in pool])
        emb = lexical_embed(pool)
        index = {t: i for i, t in enumerate(pool)}
        for row in frame[frame["kind"] == "hard_negative"].itertuples():
            i = index[row.text_a]
            sims = emb @ emb[i]
            sims[pool_intents == pool_intents[i]] = -np.inf
            assert sims[index[row.text_b]] == pytest.approx(sims.max()), (name, row.text_a)
    again = build_banking77(data_root, max_train=40, max_dev=16, max_test=20, seed=3, embed=lexical_embed)
    assert all(again[s].equals(splits[s]) for s in splits)


def _split_utterances(name, data_root):
    """The utterances of one split's pool: with these small files the pool is the whole split."""
    from benchmarks.datasets import BANKING_DEV_FRACTION, read_banking_csv, split_utterances

    test = read_banking_csv(data_root / "banking77/test.csv")
    train = read_banking_csv(data_root / "banking77/train.csv")
    train = train[~train["text"].isin(set(test["text"]))].reset_index(drop=True)
    tr, dev = split_utterances(train, BANKING_DEV_FRACTION, 3)
    return list({"train": tr, "dev": dev, "test": test}[name]["text"])


def test_mediqa_reads_the_xml_as_given(data_root):
    splits = build_mediqa2019_rqe(data_root)
    _canonical(splits, graded=False)
    _no_text_crosses(splits)
    assert len(splits["dev"]) == 20 and len(splits["test"]) == 21
    assert len(splits["train"]) == 30 and splits["train"].attrs["dropped_cross_split"] == 1  # the shared chq
    first = splits["train"].iloc[0]
    assert first["text_a"] == "train question 0 about my card 'pin'" and first["text_b"] == "train faq 0"
    assert first["match"] == 1 and first["label"] == 1.0
    assert splits["train"].iloc[1]["match"] == 0
    small = build_mediqa2019_rqe(data_root, max_train=10, max_dev=8, max_test=6, seed=1)
    assert [len(small[s]) for s in ("train", "dev", "test")] == [10, 8, 6]
    assert small["train"]["match"].sum() == 5  # stratified: the file's share of matches
    assert build_mediqa2019_rqe(data_root, max_train=10, max_dev=8, max_test=6, seed=1)["train"].equals(small["train"])
    assert not build_mediqa2019_rqe(data_root, max_train=10, max_dev=8, max_test=6, seed=2)["train"].equals(
        small["train"])


def test_mediqa_dev_grows_from_whole_training_groups(data_root):
    plain = build_mediqa2019_rqe(data_root)
    grown = build_mediqa2019_rqe(data_root, dev_from_train=4)
    _no_text_crosses(grown)
    moved = len(grown["dev"]) - len(plain["dev"])
    assert moved >= 4 and len(grown["train"]) + moved == len(plain["train"])  # no training pair dropped
    assert set(plain["dev"]["pair_id"]) < set(grown["dev"]["pair_id"])  # the validation file stays whole
    assert build_mediqa2019_rqe(data_root, dev_from_train=4)["dev"].equals(grown["dev"])  # deterministic


def test_sts_match_at_four_graded_labels_and_tab_split(data_root):
    splits = build_stsbenchmark(data_root)
    _canonical(splits, graded=True)
    _no_text_crosses(splits)
    train = splits["train"]
    assert len(train) == 40 and train.attrs["dropped_cross_split"] == 1
    by_score = dict(zip((train["label"] * 5).round(3), train["match"], strict=True))
    assert by_score[5.0] == 1 and by_score[4.0] == 1 and by_score[4.6] == 1
    assert by_score[3.999] == 0 and by_score[0.0] == 0 and by_score[3.0] == 0
    assert train["label"].between(0, 1).all()
    row = train.iloc[3]  # a line with extra license fields: they are not part of sentence 2
    assert row["text_a"] == 'train the "cat" sat 3' and row["text_b"] == "train a cat on mat 3"


def test_long_texts_are_cut(tmp_path):
    folder = tmp_path / "stsbenchmark"
    folder.mkdir()
    long = "word " * 500
    for i, name in enumerate(("sts-train.csv", "sts-dev.csv", "sts-test.csv")):
        lines = f"g\tf\t1\t1\t5.0\t{i} {long}\tb{i}\ng\tf\t1\t2\t0.0\tc{i}\td{i}\n"
        (folder / name).write_text(lines, encoding="utf-8")
    from benchmarks.datasets import MAX_CHARS

    splits = build_stsbenchmark(tmp_path)
    assert all(len(t) <= MAX_CHARS for f in splits.values() for t in texts_of(f))
    assert len(build_stsbenchmark(tmp_path, max_chars=50)["train"].iloc[0]["text_a"]) == 50


def test_default_budget_and_quick_budget_fit(data_root):
    """The estimate at the real datasets' sizes and text lengths for the default counts: < 2 h (quick: < 15 min).

    Distinct texts per pair and estimated tokens per text are those of the real files at these counts
    (banking77 ~1.8 texts/pair and ~16.6 tokens, MEDIQA ~1.54 and ~27, STS-B ~2.0 and ~16.5); the student reads
    each text inside the default prompt, which adds its own tokens.
    """
    prompt = len(_quality_estimate._wrap(quality.EncoderConfig())) / _quality_estimate.CHARS_PER_TOKEN

    def plan(counts, datasets, seeds):
        return quality.Plan(datasets=datasets, variants=quality.DEFAULT_VARIANTS, seeds=seeds, counts=counts,
                            data_seed=0, data_root=data_root, student="s", teacher="t", cache_dir=None,
                            encoder=quality.EncoderConfig(), loss=quality.LossConfig(), train=quality.TrainConfig(),
                            teacher_finetune=quality.TeacherFinetuneConfig(), quick=False, out=data_root,
                            experiment="x", progress=False, assumed=dict(quality.ASSUMED), command="")

    def sizes(c, texts_per_pair, tokens, pool=0):
        out = {s: {"pairs": c[f"max_{s}"], "texts": int(texts_per_pair * c[f"max_{s}"])} for s in
               ("train", "dev", "test")}
        return out | {"pool_texts": pool, "tokens": {"train_student": tokens + prompt,
                                                     "eval_student": tokens + prompt, "teacher": tokens + 1}}

    full = quality.DEFAULT_COUNTS
    built = {"banking77": sizes(full, 1.8, 16.6, 8 * 416), "mediqa2019_rqe": sizes(full, 1.54, 27),
             "stsbenchmark": sizes(full, 2.0, 16.5)}
    est = quality.estimate_seconds(built, plan(full, list(quality.DATASETS), [0, 1, 2]))
    assert 0.75 * quality.BUDGET_SECONDS < est["total"] < quality.BUDGET_SECONDS
    quick = quality.QUICK_COUNTS
    est = quality.estimate_seconds({"mediqa2019_rqe": sizes(quick, 1.6, 27)}, plan(quick, ["mediqa2019_rqe"], [0]))
    assert est["total"] < quality.QUICK_BUDGET_SECONDS


def test_default_selection_leaves_out_the_joint_levers():
    assert set(quality.VARIANTS) - set(quality.DEFAULT_VARIANTS) == {"flip_joint", "flip_joint_aug"}
    assert quality._comma_list("all", list(quality.VARIANTS), "--variants") == list(quality.VARIANTS)


def test_cells_of_earlier_settings_are_marked():
    def entry(settings_hash: str, **extra) -> dict:
        return {"f1_mean": 0.6, "f1_std": 0.01, "ap_mean": 0.5, "settings_hash": settings_hash,
                "parent_run_id": f"run-{settings_hash}", **extra}

    data = {"datasets": {"banking77": {"variants": {
        "flip_full": entry("new"), "flip_joint": entry("old", settings_brief="192/64/96 pairs, lr 0.003"),
        "flip_joint_aug": entry("older")}}}, "settings": {"settings_hash": "new"}}
    md = quality.render_markdown(data)
    assert "| `flip_full` | 0.600 ± 0.010 (AP 0.500) |" in md
    assert "| `flip_joint` | 0.600 ± 0.010 (AP 0.500) † |" in md
    assert "| `flip_joint_aug` | 0.600 ± 0.010 (AP 0.500) ‡ |" in md
    assert "† From an earlier run with other settings than the rest (192/64/96 pairs, lr 0.003; parent run " \
           "`run-old`)" in md
    assert "‡ From an earlier run with other settings than the rest (parent run `run-older`)" in md


def test_cells_of_the_same_settings_from_another_run_are_named():
    def entry(run: str) -> dict:
        return {"f1_mean": 0.6, "f1_std": 0.01, "ap_mean": 0.5, "settings_hash": "h", "parent_run_id": run}

    data = {"datasets": {d: {"variants": {"flip_full": entry("full"), "flip_joint": entry("joint"),
                                          "flip_joint_aug": entry("joint")}} for d in ("banking77", "stsbenchmark")},
            "settings": {"settings_hash": "h", "parent_run_id": "joint"}}
    md = quality.render_markdown(data)
    assert "†" not in md  # same settings: comparable, not marked
    assert "- same settings, from parent run `full`: `flip_full`" in md
    assert "from parent run `joint`" not in md  # the latest run is named in the settings lines already
    data["datasets"]["stsbenchmark"]["variants"]["flip_full"] = entry("joint")
    assert "from parent run `full`: `flip_full`" in quality.render_markdown(data)  # still one banking77 cell


def test_missing_data_root_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--data-root", str(tmp_path / "absent"), "--dry-run"])
    assert exit_info.value.code == 2
    assert "is absent" in capsys.readouterr().err


def test_bad_options_are_refused(data_root):
    import click

    for argv in (["--variants", "flip_full,nope"], ["--datasets", "atec"], ["--seeds", "0"],
                 ["--set", "margin_rule=fixed"], ["--set", "no_such=1"], ["--set", "w_dist=x"]):
        with pytest.raises(click.BadParameter):
            quality.main(["--data-root", str(data_root), "--dry-run"] + argv)


def test_set_overrides_reach_the_configs():
    configs = {"encoder": quality.EncoderConfig(), "loss": quality.LossConfig(), "train": quality.TrainConfig(),
               "teacher_finetune": quality.TeacherFinetuneConfig()}
    quality.apply_overrides(configs, ["w_dist=5", "distill_mode=kl", "loss.margin=0.1", "teacher_finetune.epochs=2",
                                      "train.warmup_ratio=0.1", "target_modules=q_proj,v_proj"])
    assert configs["loss"].w_dist == 5.0 and configs["loss"].distill_mode == "kl" and configs["loss"].margin == 0.1
    assert configs["teacher_finetune"].epochs == 2 and configs["train"].warmup_ratio == 0.1
    assert configs["encoder"].target_modules == ["q_proj", "v_proj"]
    assert quality.parse_seeds("3") == [0, 1, 2] and quality.parse_seeds("4,") == [4]


def test_dry_run_builds_and_estimates(data_root, tmp_path, monkeypatch, tiny_bert_dir, capsys):
    monkeypatch.setenv("FLIPKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    out = quality.main(["--data-root", str(data_root), "--dry-run", "--teacher", str(tiny_bert_dir),
                        "--max-train", "20", "--max-dev", "10", "--max-test", "10"])
    assert set(out["sizes"]) == set(quality.DATASETS)
    assert out["sizes"]["mediqa2019_rqe"]["train"]["pairs"] == 20
    assert out["estimate"]["total"] > 0
    assert "estimated time" in capsys.readouterr().out
    assert not (tmp_path / "mlflow.db").exists()


def _tiny_figure():
    from matplotlib.figure import Figure

    return Figure(figsize=(0.5, 0.5), dpi=10)


@pytest.fixture
def mlflow_env(mlflow_env, tmp_path, monkeypatch):
    """The shared private tracking store, and RESULTS.md and the docs' quotes written under tmp_path."""
    monkeypatch.setattr(_results, "RESULTS_MD", tmp_path / "RESULTS.md")
    quoting = tmp_path / "docs" / "benchmarks.md"  # write_section also rewrites the docs' quotes: never the real ones
    quoting.parent.mkdir()
    quoting.write_text("<!-- quote:quality -->\nold\n<!-- /quote:quality -->\n", encoding="utf-8")
    monkeypatch.setattr(_results, "ROOT", tmp_path)
    return mlflow_env


def test_end_to_end_on_tiny_models(mlflow_env, data_root, tmp_path, tiny_bert_dir, tiny_llama_dir, monkeypatch):
    from pipelines import _plots

    # plots are covered by the pipeline tests; here they would be most of the run time
    monkeypatch.setattr(_plots, "similarity_histogram", lambda *a, **k: _tiny_figure())
    monkeypatch.setattr(_plots, "precision_recall_curve", lambda *a, **k: _tiny_figure())
    out = tmp_path / "results"
    monkeypatch.setattr(quality, "RESULTS_DIR", out)  # the results folder that RESULTS.md records
    common = ["--data-root", str(data_root), "--student", str(tiny_llama_dir), "--teacher", str(tiny_bert_dir),
              "--seeds", "1", "--max-train", "16", "--max-dev", "12", "--max-test", "12", "--max-steps", "2",
              "--batch-size", "8", "--rank", "4", "--lora-alpha", "8", "--max-length", "16", "--precision", "fp32",
              "--out", str(out)]
    quality.main(common + ["--datasets", "banking77,stsbenchmark",
                           "--variants", "teacher_base,student_zeroshot,flip_full"])
    data = json.loads((out / "quality.json").read_text())
    assert set(data) == {"datasets", "settings"}
    assert set(data["datasets"]) == {"banking77", "stsbenchmark"}
    for name, dataset in data["datasets"].items():
        assert set(dataset["variants"]) == {"teacher_base", "student_zeroshot", "flip_full"}
        assert dataset["sizes"]["train"]["pairs"] == 16
        for variant, entry in dataset["variants"].items():
            for key in ("f1_mean", "f1_std", "ap_mean", "seeds"):
                assert key in entry, (name, variant, key)
            assert entry["seeds"] == [0] and entry["f1_std"] == 0.0 and 0.0 <= entry["f1_mean"] <= 1.0
            assert ("spearman_mean" in entry) == (name == "stsbenchmark")
        full = dataset["variants"]["flip_full"]
        assert 0.0 <= full["filter_fraction_dropped_mean"] <= 1.0
        assert full["train_seconds_mean"] > 0 and full["train_pairs_per_s_mean"] > 0
    assert data["settings"]["seeds"] == [0] and data["settings"]["max_train"] == 16
    assert "benchmarks.quality" in data["settings"]["command"] and "--max-steps 2" in data["settings"]["command"]

    # MLflow: one parent, one nested child per (dataset, variant, seed)
    exp = mlflow_env.get_experiment_by_name("flipkd-benchmark")
    runs = mlflow_env.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.run_name for r in children} >= {"banking77/flip_full/seed0", "stsbenchmark/teacher_base/seed0"}
    assert all(r.info.status == "FINISHED" for r in runs)

    md = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- quality:start -->" in md and "| `flip_full` |" in md and "banking77" in md
    assert " ± " in md and "(AP " in md and "ρ " in md and "command: `python -m benchmarks.quality" in md

    # a subset run updates only its own cells (and reuses the fine-tuned teacher of the same train split)
    quality.main(common + ["--datasets", "stsbenchmark", "--variants", "teacher_finetuned"])
    merged = json.loads((out / "quality.json").read_text())
    assert set(merged["datasets"]["banking77"]["variants"]) == {"teacher_base", "student_zeroshot", "flip_full"}
    assert set(merged["datasets"]["stsbenchmark"]["variants"]) == {"teacher_base", "student_zeroshot", "flip_full",
                                                                    "teacher_finetuned"}
    assert merged["datasets"]["stsbenchmark"]["variants"]["flip_full"] == data["datasets"]["stsbenchmark"][
        "variants"]["flip_full"]
    assert merged["datasets"]["stsbenchmark"]["variants"]["teacher_finetuned"]["per_seed"][0]["teacher_reused"]
    assert "| `teacher_finetuned` |" in (tmp_path / "RESULTS.md").read_text()

    # a run into another folder (a probe) leaves RESULTS.md alone
    before = (tmp_path / "RESULTS.md").read_text()
    probe = [a if a != str(out) else str(tmp_path / "probe") for a in common]
    quality.main(probe + ["--datasets", "stsbenchmark", "--variants", "teacher_base"])
    assert (tmp_path / "probe" / "quality.json").is_file()
    assert (tmp_path / "RESULTS.md").read_text() == before
