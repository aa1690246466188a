import json
from pathlib import Path

from click.testing import CliRunner

from pipelines import main

TRAIN_OPTIONS = "--rank 4 --lora-alpha 8 --batch-size 8 --max-length 16 --precision fp32"
STEPS = ["prepare", "teacher", "score", "train"]  # train evaluates on dev and test: no second encoding


def chain_args(tiny_llama_dir, tiny_bert_dir, train_options=TRAIN_OPTIONS):
    return ["--student", str(tiny_llama_dir), "--teacher", str(tiny_bert_dir), "--max-steps", "2",
            "--teacher-epochs", "1", "--no-progress", "--experiment", "t", "--train-options", train_options]


def all_runs(client):
    exp = client.get_experiment_by_name("t")
    return client.search_runs([exp.experiment_id]) if exp else []


def split_parent(runs):
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents[0], children


def test_main_runs_four_nested_steps_under_one_parent(mlflow_env, tiny_llama_dir, tiny_bert_dir):
    result = CliRunner().invoke(main.cli, chain_args(tiny_llama_dir, tiny_bert_dir))
    assert result.exit_code == 0, result.output
    assert "main finished (parent run" in result.output
    parent, children = split_parent(all_runs(mlflow_env))
    assert parent.info.run_name == "main" and parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == sorted(STEPS)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id, child.info.run_name
        assert child.info.status == "FINISHED", child.info.run_name
    # the steps ran in chain order
    assert [c.info.run_name for c in sorted(children, key=lambda r: r.info.start_time)] == STEPS
    by_name = {c.info.run_name: c for c in children}
    # the parent holds the final metrics of student and both teachers, a summary, and points at the train run
    metrics = parent.data.metrics
    assert "student/test_f1" in metrics and "student/dev_f1" in metrics
    assert metrics["student/test_average_precision"] == by_name["train"].data.metrics["student/test_average_precision"]
    for teacher in ("teacher_base", "teacher_finetuned"):
        assert metrics[f"{teacher}/test_f1"] == by_name["teacher"].data.metrics[f"{teacher}/test_f1"]
    summary = json.loads(Path(mlflow_env.download_artifacts(parent.info.run_id, "summary.json")).read_text())
    assert summary["student"]["test_f1"] == metrics["student/test_f1"] and summary["split"] == "test"
    # the printed comparison: student, both teachers and the all-positive baseline on test, F1 and AP
    table = result.output[result.output.index("on test"):]
    for row in ("student (flipkd)", "teacher, fine-tuned", "teacher, base", "all-positive baseline"):
        assert row in table
    assert f"{metrics['student/test_average_precision']:.3f}" in table.splitlines()[1]
    assert parent.data.tags["flipkd.train_run_id"] == by_name["train"].info.run_id
    assert parent.data.params["max_steps"] == "2" and parent.data.params["train_options"] == TRAIN_OPTIONS
    # the train child got the train options and the fine-tuned teacher
    train_params = by_name["train"].data.params
    assert train_params["encoder.rank"] == "4" and train_params["train.max_steps"] == "2"
    assert train_params["teacher"] != str(tiny_bert_dir)
    # the teacher child logged the fine-tuned teacher as a model folder
    teacher_id = by_name["teacher"].info.run_id
    files = {a.path for a in mlflow_env.list_artifacts(teacher_id, "teacher")}
    assert {"teacher/config.json", "teacher/model.safetensors"} <= files
    assert "teacher_finetuned/dev_f1" in by_name["teacher"].data.metrics
    # every step saw the same data
    prints = {c.data.tags["flipkd.data_fingerprint"] for c in children}
    assert len(prints) == 1


def test_failing_step_fails_the_chain_cleanly(mlflow_env, tiny_llama_dir, tiny_bert_dir):
    result = CliRunner().invoke(main.cli, chain_args(tiny_llama_dir, tiny_bert_dir, TRAIN_OPTIONS + " --layer 99"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1 and "layer 99" in errors[0], result.output
    runs = all_runs(mlflow_env)
    assert all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    parent, children = split_parent(runs)
    assert parent.info.status == "FAILED"
    status = {c.info.run_name: c.info.status for c in children}
    assert status == {"prepare": "FINISHED", "teacher": "FINISHED", "score": "FINISHED", "train": "FAILED"}
    assert "flipkd.train_run_id" not in parent.data.tags
