import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from components.data.demo import demo_pairs
from pipelines import evaluate, main, prepare, score, teacher, train

# (module, words of its purpose in --help, argv of one option in underscore spelling, its parameter, parsed value)
ENTRY_POINTS = [
    (prepare, "split pair data", ["--dev_fraction", "0.2"], "dev_fraction", 0.2),
    (teacher, "Fine-tune the teacher", ["--batch_size", "4"], "batch_size", 4),
    (score, "Score every pair with the teacher", ["--delta_pos", "0.3"], "delta_pos", 0.3),
    (train, "Train the flipped student", ["--w_sup", "2"], "w_sup", 2.0),
    (evaluate, "Evaluate a trained student or a teacher", ["--choose_threshold"], "choose_threshold", True),
    (main, "four nested child runs", ["--teacher_epochs", "2"], "teacher_epochs", 2),
]
IDS = [module.__name__.rsplit(".", 1)[1] for module, *_ in ENTRY_POINTS]


def all_runs(client):
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def only_run(client):
    (run,) = all_runs(client)
    return run


def read_jsonl(path):
    return pd.read_json(path, lines=True)


@pytest.mark.parametrize("module,purpose,underscored,param,value", ENTRY_POINTS, ids=IDS)
def test_help_and_underscore_spelling(module, purpose, underscored, param, value):
    result = CliRunner().invoke(module.cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert purpose in " ".join(result.output.split())  # click rewraps the docstring
    assert "--experiment" in result.output and "--seed" in result.output
    # the underscore spelling (`mlflow run -P key=value`) reaches the same parameter, without running anything
    assert module.cli.make_context("x", list(underscored)).params[param] == value
    dashed = [underscored[0].replace("_", "-"), *underscored[1:]]
    assert module.cli.make_context("x", dashed).params[param] == value


def test_common_options_have_underscore_spelling_everywhere():
    for module, *_ in ENTRY_POINTS:
        ctx = module.cli.make_context("x", ["--cache_dir", "somewhere"])
        assert ctx.params["cache_dir"] == "somewhere", module.__name__


def test_prepare_demo_writes_splits_and_report(mlflow_env):
    result = CliRunner().invoke(prepare.cli, [])
    assert result.exit_code == 0, result.output
    out = Path("outputs/data")
    frames = {name: read_jsonl(out / f"{name}.jsonl") for name in ("train", "dev", "test")}
    assert all(len(f) > 0 for f in frames.values())
    run = only_run(mlflow_env)
    assert run.info.status == "FINISHED" and run.info.run_name == "prepare"
    assert mlflow_env.get_experiment(run.info.experiment_id).name == "flipkd"  # the default experiment
    run_id = run.info.run_id
    report = json.loads(Path(mlflow_env.download_artifacts(run_id, "data_report.json")).read_text())
    assert {name: s["pairs"] for name, s in report["splits"].items()} == {n: len(f) for n, f in frames.items()}
    assert report["fingerprint"] == run.data.tags["flipkd.data_fingerprint"]
    data = {a.path for a in mlflow_env.list_artifacts(run_id, "data")}
    assert {"data/train.jsonl", "data/dev.jsonl", "data/test.jsonl"} <= data
    assert run.data.metrics["data_train_pairs"] == len(frames["train"])


def test_prepare_splits_one_file_without_leaks(mlflow_env, tmp_path):
    pairs = demo_pairs()[["text_a", "text_b", "label"]].rename(columns={"text_a": "q1", "text_b": "q2", "label": "y"})
    pairs["y"] = pairs["y"].astype(int)
    source = tmp_path / "pairs.csv"
    pairs.to_csv(source, index=False)
    result = CliRunner().invoke(prepare.cli, ["--data", str(source), "--text-a-col", "q1", "--text-b-col", "q2",
                                              "--label-col", "y", "--output-dir", "split", "--experiment", "t"])
    assert result.exit_code == 0, result.output
    frames = {name: read_jsonl(tmp_path / "split" / f"{name}.jsonl") for name in ("train", "dev", "test")}
    assert sum(len(f) for f in frames.values()) == len(pairs)
    assert all(len(f) > 0 for f in frames.values())
    texts = {name: set(f["text_a"]) | set(f["text_b"]) for name, f in frames.items()}
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]
    run = only_run(mlflow_env)
    assert run.info.status == "FINISHED"
    report = json.loads(Path(mlflow_env.download_artifacts(run.info.run_id, "data_report.json")).read_text())
    assert report["leaking_texts"] == 0
    assert report["splits"]["train"]["source"] == f"{source}#train"


def test_score_writes_scored_splits_and_reports(mlflow_env, tiny_bert_dir):
    result = CliRunner().invoke(score.cli, ["--teacher", str(tiny_bert_dir), "--no-progress", "--experiment", "t"])
    assert result.exit_code == 0, result.output
    assert "noise filter:" in result.output
    out = Path("outputs/scored")
    for name in ("train", "dev", "test"):
        frame = read_jsonl(out / f"{name}.jsonl")
        assert {"teacher_score", "teacher_cosine", "label"} <= set(frame.columns), name
        assert frame["teacher_score"].between(0, 1).all() and frame["teacher_cosine"].between(-1, 1).all()
        assert ("keep" in frame.columns) == (name == "train")
    run = only_run(mlflow_env)
    assert run.info.status == "FINISHED" and run.info.run_name == "score"
    files = {a.path for a in mlflow_env.list_artifacts(run.info.run_id)}
    assert {"noise_filter_report.json", "noise_filter_dropped_ids.json", "teacher_calibration.json", "scored"} <= files
    dropped = json.loads(Path(mlflow_env.download_artifacts(run.info.run_id, "noise_filter_dropped_ids.json"))
                         .read_text())["dropped_pair_ids"]
    train_frame = read_jsonl(out / "train.jsonl")
    assert len(dropped) == int((~train_frame["keep"].astype(bool)).sum()) == run.data.metrics["filter_dropped"]


def test_teacher_finetunes_and_compares_with_base(mlflow_env, tiny_bert_dir, tmp_path):
    before = sorted(p.name for p in Path(tiny_bert_dir).iterdir())
    result = CliRunner().invoke(teacher.cli, ["--teacher", str(tiny_bert_dir), "--epochs", "1", "--output-dir",
                                              str(tmp_path / "tuned"), "--no-progress", "--experiment", "t"])
    assert result.exit_code == 0, result.output
    assert "teacher dev F1: base" in result.output
    assert (tmp_path / "tuned" / "config.json").is_file() and (tmp_path / "tuned" / "model.safetensors").is_file()
    assert sorted(p.name for p in Path(tiny_bert_dir).iterdir()) == before  # the base teacher is left alone
    run = only_run(mlflow_env)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert "teacher_base/dev_f1" in metrics and "teacher_finetuned/dev_f1" in metrics
    assert "teacher_base/test_f1" in metrics and "teacher_finetuned/test_f1" in metrics
    assert mlflow_env.get_metric_history(run.info.run_id, "teacher_finetune/loss")
    files = {a.path for a in mlflow_env.list_artifacts(run.info.run_id, "teacher")}
    assert {"teacher/config.json", "teacher/model.safetensors"} <= files


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


BAD_INPUTS = {
    # case: (command, files to write {name: content}, argv ({name} -> its path), words the error line must hold)
    "missing-column": (prepare, {"pairs.csv": "text_a,text_b\nhow do i reset it,forgot my pin\n"},
                       ["--data", "{pairs.csv}"], ["error:", "pairs.csv", "field 'label'", "not found"]),
    "empty-file": (prepare, {"empty.csv": ""}, ["--data", "{empty.csv}"], ["error:", "empty.csv", "empty"]),
    "label-out-of-range": (score, {"pairs.csv": "text_a,text_b,label\na cat,the mat,1\nmy card,lost pin,7\n"},
                           ["--data", "{pairs.csv}"], ["error:", "pairs.csv", "row 3", "field 'label'", "7"]),
    "nonexistent-path": (prepare, {}, ["--data", "{tmp}/nowhere.csv"], ["error:", "nowhere.csv", "not found"]),
    "directory-as-data": (prepare, {}, ["--data", "{tmp}"], ["Error:", "--data", "is a directory"]),
    "train-without-dev": (train, {"train.csv": "text_a,text_b,label\na cat,the mat,1\n"},
                          ["--train", "{train.csv}"], ["error:", "--train needs --dev"]),
    "evaluate-without-model": (evaluate, {}, [], ["Error:", "--model", "--teacher"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(mlflow_env, tmp_path, tiny_llama_dir, tiny_bert_dir, case):
    command, files, argv, words = BAD_INPUTS[case]
    paths = {name: _write(tmp_path, name, text) for name, text in files.items()}
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    argv = [paths[a[1:-1]] if a.startswith("{") and a[1:-1] in paths else a for a in argv]
    if command in (train, score):  # never the packaged models, even if a check moved after model loading
        argv += ["--teacher", str(tiny_bert_dir)] + (["--student", str(tiny_llama_dir)] if command is train else [])
    result = CliRunner().invoke(command.cli, argv + ["--no-progress", "--experiment", "t"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in errors[0], (word, errors[0])
    runs = all_runs(mlflow_env)
    assert all(r.info.status == "FAILED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
