import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from components.student.lora_encoder import ENCODER_FILE
from pipelines import evaluate, train
from pipelines._student_options import EVAL_EVERY

FAST = ["--max-steps", "3", "--rank", "4", "--lora-alpha", "8", "--batch-size", "8", "--max-length", "16",
        "--precision", "fp32"]


def run_ids(client):
    exp = client.get_experiment_by_name("t")
    return [r.info.run_id for r in client.search_runs([exp.experiment_id])] if exp else []


def test_train_logs_everything_a_run_needs(mlflow_env, tiny_model_args):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + ["--w-dist", "2.5", "--margin-rule", "fixed",
                                                                     "--filter"])
    assert result.exit_code == 0, result.output
    assert "look: mlflow ui" in result.output
    (run_id,) = run_ids(mlflow_env)
    run = mlflow_env.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    # the resolved config, named as in METHOD.md
    assert params["loss.w_dist"] == "2.5" and params["loss.margin_rule"] == "fixed"
    assert params["loss.delta_pos"] == "0.5" and params["encoder.rank"] == "4"
    assert params["train.learning_rate"] == "0.001" and params["train.seed"] == "0"
    # per-step metrics: every loss part, lr, gradient norm, throughput
    for key in ("loss/total", "loss/sup", "loss/dist", "loss/mcl", "lr", "grad_norm", "pairs_per_s"):
        history = mlflow_env.get_metric_history(run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
    metrics = run.data.metrics
    for key in ("f1", "precision", "recall", "accuracy", "roc_auc", "average_precision", "threshold"):
        assert f"student/dev_{key}" in metrics and f"student/test_{key}" in metrics
    assert "filter_fraction_dropped" in metrics and "teacher_cache_misses" in metrics
    assert "guard_warnings" in metrics and [m.step for m in mlflow_env.get_metric_history(run_id, "guard/warnings")] \
        == [1, 2, 3]
    # tags for reproducibility
    tags = run.data.tags
    assert len(tags["flipkd.data_fingerprint"]) == 16
    assert tags["flipkd.git_commit"] and tags["flipkd.version.torch"].startswith("2.")
    # artifacts: reports, plots, the adapter in PEFT format with the encoder JSON
    files = {a.path for a in mlflow_env.list_artifacts(run_id)}
    assert {"noise_filter_report.json", "teacher_calibration.json", "plots", "student"} <= files
    plots = {a.path for a in mlflow_env.list_artifacts(run_id, "plots")}
    assert {"plots/student_dev_similarity.png", "plots/teacher_dev_similarity.png",
            "plots/precision_recall_dev.png", "plots/teacher_calibrated_train.png"} <= plots
    adapter = {a.path for a in mlflow_env.list_artifacts(run_id, "student")}
    assert {"student/adapter_config.json", "student/adapter_model.safetensors",
            "student/flipkd_encoder.json"} <= adapter
    report = json.loads(Path(mlflow_env.download_artifacts(run_id, "noise_filter_report.json")).read_text())
    assert report["pairs_seen"] == int(metrics["data_train_pairs"])
    # dataset lineage
    assert {d.tags[0].value for d in run.inputs.dataset_inputs} == {"train", "dev", "test"}


def test_second_train_reuses_every_teacher_embedding(mlflow_env, tiny_model_args):
    runner = CliRunner()
    assert runner.invoke(train.cli, tiny_model_args + FAST).exit_code == 0
    second = runner.invoke(train.cli, tiny_model_args + FAST + ["--seed", "1"])
    assert second.exit_code == 0, second.output
    assert "0 texts encoded" in second.output
    latest = mlflow_env.get_run(run_ids(mlflow_env)[0])
    assert latest.data.metrics["teacher_cache_misses"] == 0 and latest.data.metrics["teacher_cache_hits"] > 0


def test_evaluate_a_trained_run(mlflow_env, tiny_model_args):
    trained = CliRunner().invoke(train.cli, tiny_model_args + FAST)
    assert trained.exit_code == 0, trained.output
    train_run = run_ids(mlflow_env)[0]
    stored = mlflow_env.get_run(train_run).data.metrics
    result = CliRunner().invoke(evaluate.cli, ["--model", train_run, "--no-progress", "--experiment", "t"])
    assert result.exit_code == 0, result.output
    eval_run = run_ids(mlflow_env)[0]
    metrics = mlflow_env.get_run(eval_run).data.metrics
    # the same adapter, threshold and data give the same dev F1 as at the end of training
    assert metrics["student/dev_f1"] == pytest.approx(stored["student/dev_f1"], abs=1e-6)


@pytest.mark.parametrize("bad,match", [
    (["--learning-rate", "-1"], "learning-rate"),
    (["--delta-pos", "1.5"], "delta-pos"),
    (["--rank", "0"], "rank"),
    (["--loss-parts", "sup,kd"], "loss-parts"),
    (["--label-range", "5,0"], "label-range"),
])
def test_bad_option_is_exit_2(mlflow_env, tiny_model_args, bad, match):
    result = CliRunner().invoke(train.cli, tiny_model_args + bad)
    assert result.exit_code == 2
    assert match in result.output
    assert run_ids(mlflow_env) == []  # rejected before any run starts


def test_layer_beyond_the_model_fails_cleanly(mlflow_env, tiny_model_args):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + ["--layer", "7"])
    assert result.exit_code == 2, result.output
    assert "layer 7 is out of range" in result.output and "Traceback" not in result.output
    (run_id,) = run_ids(mlflow_env)
    assert mlflow_env.get_run(run_id).info.status == "FAILED"


@pytest.mark.parametrize("mode,blocks", [("generative", []), ("generative", ["--lora-layers", "1"]),
                                         ("both", ["--lora-layers", "1"])],
                         ids=["every-block", "frozen-prefix", "both-ways"])
def test_decoder_path_modes_report_joint_scoring(mlflow_env, tiny_model_args, mode, blocks):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + ["--sup-mode", mode] + blocks)
    assert result.exit_code == 0, result.output
    assert "student, joint reading" in result.output  # the decoder path's row of the comparison
    assert ("student, mixed reading" in result.output) == (mode == "both")
    (run_id,) = run_ids(mlflow_env)
    metrics = mlflow_env.get_run(run_id).data.metrics
    assert "student_joint/dev_f1" in metrics and "student/dev_f1" in metrics
    assert ("student_mix/dev_average_precision" in metrics) == (mode == "both")
    for reading in ("joint", "mix"):  # evaluate reads a stored student the same way; the mix only after both
        again = CliRunner().invoke(evaluate.cli, ["--model", run_id, "--mode", reading, "--no-progress",
                                                  "--experiment", "t"])
        if reading == "mix" and mode != "both":
            assert again.exit_code != 0 and "--sup-mode both" in again.output
            continue
        assert again.exit_code == 0, again.output
        eval_metrics = mlflow_env.get_run(run_ids(mlflow_env)[0]).data.metrics
        assert eval_metrics[f"student_{reading}/dev_f1"] == pytest.approx(metrics[f"student_{reading}/dev_f1"],
                                                                          abs=1e-6)


def test_both_ways_watches_the_mixed_reading_on_dev_and_stores_its_weight(mlflow_env, tiny_model_args, tmp_path):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + ["--sup-mode", "both", "--lora-layers", "1",
                                                                     "--eval-every", "1"])
    assert result.exit_code == 0, result.output
    (run_id,) = run_ids(mlflow_env)
    run = mlflow_env.get_run(run_id)
    weights = [m.value for m in mlflow_env.get_metric_history(run_id, "early_stopping/mix_weight")]
    assert len(weights) == 3 and all(0.0 <= w <= 1.0 for w in weights)
    chosen = run.data.metrics["student_mix/weight"]
    assert 0.0 <= chosen <= 1.0
    meta = json.loads(Path(mlflow_env.download_artifacts(run_id, f"{train.ADAPTER_ARTIFACT}/{ENCODER_FILE}",
                                                         str(tmp_path))).read_text())
    mix = meta["config"]["extra"]["reading_mix"]
    assert mix["weight"] == chosen and {"scale", "bias", "threshold"} <= set(mix)


def test_teacher_labelled_extra_pairs_are_counted_separately(mlflow_env, tiny_model_args):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + ["--extra-pairs-per-pair", "0.5"])
    assert result.exit_code == 0, result.output
    (run_id,) = run_ids(mlflow_env)
    run = mlflow_env.get_run(run_id)
    n_train = int(run.data.metrics["data_train_pairs"])
    assert run.data.metrics["filter_extra_pairs"] == round(0.5 * n_train)
    assert run.data.metrics["filter_extra_pairs_neighbour"] + run.data.metrics["filter_extra_pairs_random"] == \
        run.data.metrics["filter_extra_pairs"]
    assert run.data.params["extra_pairs.per_pair"] == "0.5"
    report = json.loads(Path(mlflow_env.download_artifacts(run_id, "noise_filter_extra_pairs.json")).read_text())
    assert report["extra_pairs"] == run.data.metrics["filter_extra_pairs"]


@pytest.mark.parametrize("metric,name,final", [("f1", "F1", "student/dev_f1"),
                                               ("ap", "AP", "student/dev_average_precision"),
                                               ("roc_auc", "ROC-AUC", "student/dev_roc_auc")])
def test_early_stopping_keeps_the_best_dev_checkpoint(mlflow_env, tiny_model_args, metric, name, final):
    args = [a if a != "3" else "8" for a in FAST] + ["--eval-every", "2", "--patience", "1", "--eval-metric", metric]
    result = CliRunner().invoke(train.cli, tiny_model_args + args)
    assert result.exit_code == 0, result.output
    assert f"early stopping: best dev {name} " in result.output
    (run_id,) = run_ids(mlflow_env)
    metrics = mlflow_env.get_run(run_id).data.metrics
    history = {m.step: m.value for m in mlflow_env.get_metric_history(run_id, f"early_stopping/dev_{metric}")}
    assert set(history) <= {2, 4, 6, 8} and 2 in history
    assert metrics["best_step"] in history and history[metrics["best_step"]] == max(history.values())
    assert metrics["stopped_at_step"] == max(history)
    # the run ends with the best parameters: its final dev score is the best one seen
    assert metrics[final] == pytest.approx(max(history.values()), abs=1e-9)


def test_patience_with_evaluation_off_is_exit_2(mlflow_env, tiny_model_args):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + ["--patience", "2", "--eval-every", "0"])
    assert result.exit_code == 2, result.output
    assert "patience needs eval_every" in result.output


@pytest.mark.parametrize("extra, eval_every, evaluated", [
    ([], "125", [3]),  # the default: dev scored every 125 steps and after the last, the best step kept
    (["--eval-every", "0"], "0", []),
])
def test_dev_evaluation_is_on_by_default_where_there_is_a_dev_split(mlflow_env, tiny_model_args, extra, eval_every,
                                                                    evaluated):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + extra)
    assert result.exit_code == 0, result.output
    (run_id,) = run_ids(mlflow_env)
    assert mlflow_env.get_run(run_id).data.params["train.eval_every"] == eval_every
    assert [m.step for m in mlflow_env.get_metric_history(run_id, "early_stopping/dev_ap")] == evaluated


def test_lora_in_the_top_blocks_fills_the_prefix_cache_once(mlflow_env, tiny_model_args, tmp_path):
    runner = CliRunner()
    first = runner.invoke(train.cli, tiny_model_args + FAST + ["--lora-layers", "1"])
    assert first.exit_code == 0, first.output
    shards = list((tmp_path / "cache" / "prefix_states").rglob("shard-*.safetensors"))
    assert shards, "the prefix states were not written to the cache folder"
    second = runner.invoke(train.cli, tiny_model_args + FAST + ["--lora-layers", "1", "--seed", "1"])
    assert second.exit_code == 0, second.output
    first_run, second_run = (mlflow_env.get_run(r) for r in reversed(run_ids(mlflow_env)))
    # texts that tokenize alike (truncated, or unknown words to the tiny vocabulary) share one entry
    assert 0 < first_run.data.metrics["prefix_cache_computed"] <= first_run.data.metrics["prefix_cache_texts"]
    assert second_run.data.metrics["prefix_cache_computed"] == 0  # every state read back from disk
    assert second_run.data.params["encoder.lora_layers"] == "1"
    adapter = json.loads(Path(mlflow_env.download_artifacts(second_run.info.run_id, "student/adapter_config.json"))
                         .read_text())
    assert adapter["layers_to_transform"] == [2]  # the tiny student has 3 blocks: LoRA in the top one only


@pytest.mark.parametrize("value", ["0", "-2", "some"])
def test_lora_layers_must_be_a_count_or_all(mlflow_env, tiny_model_args, value):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + ["--lora-layers", value])
    assert result.exit_code == 2 and "a number of blocks >= 1 or 'all'" in result.output


@pytest.mark.parametrize("extra, reason", [([], "--no-filter, the default"), (["--no-filter"], "--no-filter"),
                                            (["--filter", "--loss-parts", "sup"], "--loss-parts sup"),
                                            (["--filter"], None)],
                         ids=["default-off", "no-filter", "sup-only", "filter-applies"])
def test_the_filter_share_is_reported_only_when_the_filter_acts(mlflow_env, tiny_model_args, extra, reason):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + extra)
    assert result.exit_code == 0, result.output
    metrics = mlflow_env.get_run(run_ids(mlflow_env)[0]).data.metrics
    if reason:
        assert f"noise filter: not applied ({reason}" in result.output and "dropped" not in result.output
        assert not any(k.startswith("filter_") for k in metrics)
    else:
        assert "noise filter: dropped" in result.output and "filter_fraction_dropped" in metrics


@pytest.mark.parametrize("extra, delta_neg", [([], 1.0), (["--delta-neg", "0.7"], 1.0), (["--filter"], 0.5),
                                               (["--filter", "--delta-neg", "0.7"], 0.7)],
                         ids=["default-off", "off-ignores-delta-neg", "filter-on", "filter-on-own-delta-neg"])
def test_no_filter_also_keeps_every_in_batch_negative(mlflow_env, tiny_model_args, monkeypatch, extra, delta_neg):
    built, real = [], train.FlipKDLoss
    monkeypatch.setattr(train, "FlipKDLoss", lambda config: built.append(config) or real(config))
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + extra)
    assert result.exit_code == 0, result.output
    assert [config.delta_neg for config in built] == [delta_neg]
    # the run's record says what L_MCL used, so the run is reproducible from it
    assert mlflow_env.get_run(run_ids(mlflow_env)[0]).data.params["loss.delta_neg"] == str(delta_neg)


def test_summary_names_the_teacher_and_goes_to_the_output_dir(mlflow_env, tiny_model_args, tmp_path):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + ["--output-dir", str(tmp_path / "mine")])
    assert result.exit_code == 0, result.output
    (run_id,) = run_ids(mlflow_env)
    summary = json.loads((tmp_path / "mine" / run_id / "summary.json").read_text())
    assert summary["run_id"] == run_id and summary["test_average_precision"] >= 0
    assert "taught by: the base teacher" in result.output and "not fine-tuned on this data" in result.output
    for row in ("student", "teacher (base)", "all-positive baseline"):
        assert row in result.output[result.output.index("on test"):]
    assert not (tmp_path / "outputs" / "last_train.json").exists()


@pytest.mark.parametrize("given, patience, has_dev, expected", [
    (None, 0, True, EVAL_EVERY),
    (None, 2, True, EVAL_EVERY),
    (None, 0, False, 0),
    (None, 0, "empty", 0),
    (7, 0, False, 7),
    (0, 0, True, 0),
    (None, 2, False, "--patience needs a dev split"),
])
def test_an_unset_eval_every_is_the_default_with_dev_pairs_and_off_without(given, patience, has_dev, expected):
    import click

    from pipelines._student_options import eval_every_for

    frame = pd.DataFrame({"text_a": ["a"], "text_b": ["b"], "match": [1]})
    splits = {"train": frame, **({"dev": frame.iloc[:0] if has_dev == "empty" else frame} if has_dev else {})}
    options = {"eval_every": given, "patience": patience}
    if isinstance(expected, str):
        with pytest.raises(click.UsageError, match=expected):
            eval_every_for(options, splits)
    else:
        assert eval_every_for(options, splits) == expected
