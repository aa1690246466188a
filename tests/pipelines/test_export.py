"""``export``'s choice of int8 calibration texts: held out from the dev texts the gates measure."""

import pandas as pd
import pytest

from components.data.contract import DataError
from pipelines import export


def write_pairs(path, rows):
    pd.DataFrame(rows, columns=["text_a", "text_b", "label"]).to_csv(path, index=False)
    return str(path)


def test_a_calibration_file_gives_its_texts_that_are_not_dev_texts(tmp_path):
    dev_texts = ["shared question", "dev only"]
    path = write_pairs(tmp_path / "train.csv", [["shared question", "train a", 1], ["train b", "train c", 0],
                                               ["train d", "train a", 1]])
    texts, source = export.calibration_texts(path, None, dev_texts, seed=0, limit=10)
    assert source == path and sorted(texts) == ["train a", "train b", "train c", "train d"]
    fewer, _ = export.calibration_texts(path, None, dev_texts, seed=0, limit=2)
    assert len(fewer) == 2 and set(fewer) <= set(texts)
    assert export.calibration_texts(path, None, dev_texts, seed=0, limit=2)[0] == fewer  # seeded


def test_the_demo_dev_split_is_calibrated_on_the_demo_train_split(tmp_path):
    demo = export.demo_splits(tmp_path, seed=0)
    dev_texts = list(dict.fromkeys([*demo["dev"]["text_a"], *demo["dev"]["text_b"]]))
    texts, source = export.calibration_texts(None, demo["train"], dev_texts, seed=0, limit=64)
    assert source == "demo train split" and len(texts) == 64 and not set(texts) & set(dev_texts)


def test_dev_alone_falls_back_to_its_own_texts(tmp_path):
    texts, source = export.calibration_texts(None, None, ["a", "b", "c"], seed=0, limit=2)
    assert (texts, source) == (["a", "b"], "dev (in-sample)")


def test_a_calibration_file_with_nothing_held_out_is_refused(tmp_path):
    path = write_pairs(tmp_path / "train.csv", [["a", "b", 1]])
    with pytest.raises(DataError, match="calibration texts they do not measure"):
        export.calibration_texts(path, None, ["a", "b"], seed=0, limit=8)
