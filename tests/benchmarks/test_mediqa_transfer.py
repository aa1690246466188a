import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import mediqa_transfer
from benchmarks._cells import CellStore
from benchmarks.datasets import MEDIQA_FILES


def write_mediqa(root) -> None:
    """A small MEDIQA folder: the training file's pairs share FAQ questions in groups, one group the largest."""
    folder = root / "mediqa2019_rqe"
    folder.mkdir(parents=True)

    def xml(rows) -> str:
        body = "".join(f'<pair pid="{i}" value="{"true" if y else "false"}"><chq>{a}</chq><faq>{b}</faq></pair>\n'
                       for i, (a, b, y) in enumerate(rows, 1))
        return f'<?xml version="1.0" encoding="UTF-8"?>\n<Set>\n{body}</Set>\n'

    big = [(f"clinical question {i}", "common faq", i % 2 == 0) for i in range(40)]
    small = [(f"other clinical question {i}", f"faq {i // 4}", i % 2 == 0) for i in range(24)]
    files = {"train": big + small,
             "dev": [(f"consumer question {i}", f"nih faq {i}", i % 2 == 0) for i in range(12)],
             "test": [(f"test consumer question {i}", f"test faq {i}", i % 2 == 0) for i in range(10)]}
    for split, rows in files.items():
        (folder / MEDIQA_FILES[split]).write_text(xml(rows), encoding="utf-8")


def test_dev_rows_are_told_apart_by_the_file_they_come_from(tmp_path):
    write_mediqa(tmp_path)
    splits, from_validation = mediqa_transfer.headline_splits(tmp_path)
    dev = splits["dev"]
    assert from_validation.sum() == 12 and (~from_validation).sum() == len(dev) - 12 > 0
    assert all(a.startswith("consumer") for a in dev["text_a"][from_validation])
    assert not any(a.startswith("consumer") for a in dev["text_a"][~from_validation])


def fake_cells(tmp_path, labels, from_validation) -> CellStore:
    """Teacher and two student settings; the 'good' one ranks test and dev's validation part, the 'bad' one only
    dev's training-file part; each student setting stored under two variants (a reused twin) counts once."""
    rng = np.random.default_rng(0)
    store = CellStore(tmp_path / "cells", shard=True)

    def cell(validation_good: bool, noise: float) -> dict:
        dev = labels["dev"] + noise * rng.standard_normal(len(labels["dev"]))
        if not validation_good:
            dev[from_validation] = rng.random(from_validation.sum())
        test = labels["test"] + (noise if validation_good else 5.0) * rng.standard_normal(len(labels["test"]))
        return {"scores": {"dev": dev.tolist(), "test": test.tolist()}, "brief": f"good={validation_good}"}

    store.put("mediqa2019_rqe/teacher_base/seed0/t", cell(True, 0.5))
    for i, good in enumerate((True, False, True)):
        for seed in (0, 1):
            record = cell(good, 0.3 + 0.1 * i)
            store.put(f"mediqa2019_rqe/flip_full/seed{seed}/h{i}", record)
            store.put(f"mediqa2019_rqe/flip_best/seed{seed}/h{i}", record)
    store.put("banking77/flip_best/seed0/h0", cell(True, 0.1))  # another dataset: not read
    return store


def test_each_setting_is_read_on_both_halves_of_dev_and_on_test(tmp_path):
    rng = np.random.default_rng(1)
    labels = {"dev": rng.random(40) < 0.5, "test": rng.random(30) < 0.5}
    from_validation = np.arange(40) < 20
    rows = mediqa_transfer.per_setting(fake_cells(tmp_path, labels, from_validation), labels, from_validation)
    assert [r["hash"] for r in rows] == ["h0", "h1", "h2", "t"]
    assert [r["seeds"] for r in rows] == [2, 2, 2, 1] and [r["student"] for r in rows] == [True, True, True, False]
    good, bad = rows[0], rows[1]
    assert good["dev_validation_ap"] > bad["dev_validation_ap"] and good["test_ap"] > bad["test_ap"]
    assert bad["dev_training_file_ap"] > bad["dev_validation_ap"] + 0.2 and rows[3]["setting"] == "teacher_base"
    assert good["setting"] == "flip: good=True"
    rho = mediqa_transfer.agreement(rows)
    assert rho["dev_validation"] > 0
    text = mediqa_transfer.markdown(rows, rho, {"dev_validation": 20, "dev_training_file": 20, "test": 30})
    assert "| teacher_base | 1 |" in text and "validation part +" in text


def test_fewer_than_three_student_settings_have_no_rank_correlation():
    rows = [{"student": True, "dev_ap": a, "dev_validation_ap": a, "dev_training_file_ap": a, "test_ap": a}
            for a in (0.5, 0.6)]
    assert all(np.isnan(v) for v in mediqa_transfer.agreement(rows).values())


def test_cli_writes_nothing_without_stored_cells(tmp_path, monkeypatch):
    write_mediqa(tmp_path / "data")
    (tmp_path / "cells").mkdir()
    out = tmp_path / "mediqa_transfer.json"
    monkeypatch.setattr(mediqa_transfer, "SUMMARY_FILE", out)
    result = CliRunner().invoke(mediqa_transfer.cli, ["--data-root", str(tmp_path / "data"),
                                                      "--cells", str(tmp_path / "cells")])
    assert result.exit_code == 1 and "no stored mediqa2019_rqe cell" in result.output and not out.exists()


@pytest.mark.parametrize("write", [True, False])
def test_cli_reports_from_the_stored_cells(tmp_path, monkeypatch, write):
    write_mediqa(tmp_path / "data")
    splits, from_validation = mediqa_transfer.headline_splits(tmp_path / "data")
    labels = {k: f["match"].to_numpy().astype(bool) for k, f in splits.items()}
    fake_cells(tmp_path, labels, from_validation)
    out, sections = tmp_path / "mediqa_transfer.json", []
    monkeypatch.setattr(mediqa_transfer, "SUMMARY_FILE", out)
    monkeypatch.setattr(mediqa_transfer._results, "write_section", lambda name, body: sections.append(name))
    result = CliRunner().invoke(mediqa_transfer.cli, ["--data-root", str(tmp_path / "data"), "--cells",
                                                      str(tmp_path / "cells")] + ([] if write else ["--no-write"]))
    assert result.exit_code == 0, result.output
    assert "dev AP, validation part" in result.output
    assert out.exists() == write and sections == (["mediqa_transfer"] if write else [])
    if write:
        data = json.loads(out.read_text())
        assert data["sizes"]["dev_validation"] == 12 and len(data["rows"]) == 4
