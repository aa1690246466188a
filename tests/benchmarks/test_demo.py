"""The demo benchmark's section: the comparison the main job ends with, as the README quotes it."""

from __future__ import annotations

from benchmarks import demo


def test_render_markdown_lists_every_model_on_the_split():
    metrics = {"test_f1": 0.8, "test_average_precision": 0.75, "dev_f1": 0.7}
    data = {"command": "mlflow run . -e main --env-manager local", "wall": "7m05s", "peak_rss_gb": 4.25, "threads": 2,
            "cpu_flags": ["avx2"], "git_commit": "0123456789abcdef",
            "summary": {"split": "test", "parent_run_id": "p" * 32, "train_run_id": "t" * 32, "student": metrics,
                        "teacher_finetuned": {"test_f1": 0.71, "test_average_precision": 0.7},
                        "teacher_base": {"test_f1": 0.676, "test_average_precision": 0.69},
                        "all_positive": {"f1": 0.621, "average_precision": 0.45}}}
    text = demo.render_markdown(data)
    assert "`mlflow run . -e main --env-manager local` (7m05s wall, peak RSS 4.2 GB; 2 cores" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == ["| student (flipkd) | 0.800 | 0.750 |", "| teacher, fine-tuned | 0.710 | 0.700 |",
                    "| teacher, base | 0.676 | 0.690 |", "| all-positive baseline | 0.621 | 0.450 |"]
