"""Data loading: formats, label maps, bad rows counted and shown, truncation counted."""

from __future__ import annotations

import json

import pytest

from peftkit.data.classification import load_classification_data, tokenize_split
from peftkit.errors import PeftkitError
from peftkit.recipe import DataSection
from tests.conftest import SHARED_DATA, SST2


def test_sst2_ids_map_to_label_names():
    data = load_classification_data(DataSection(train_file=str(SST2 / "dev.tsv"), eval_file=str(SST2 / "dev.tsv"),
                                                text_column="sentence", label_names=["negative", "positive"]), 0)
    assert data.id2label == {0: "negative", 1: "positive"}
    assert len(data.splits["eval"]["text"]) == 872
    assert set(data.splits["eval"]["label"]) == {0, 1}
    assert data.reports["eval"].skipped == 0


def test_headerless_agnews_infers_label_names():
    section = DataSection(train_file=str(SHARED_DATA / "agnews" / "test.tsv"), has_header=False,
                          column_names=["text", "label"], max_train_samples=500)
    data = load_classification_data(section, seed=1)
    assert data.label_names == ["Business", "Sci/Tech", "Sports", "World"]
    assert len(data.splits["train"]["text"]) == 500
    assert data.reports["eval"].rows_used == len(data.splits["eval"]["text"]) > 0


def test_bad_rows_are_counted_shown_and_skipped(tmp_path):
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"text": "great", "label": "pos"}, {"text": "", "label": "neg"}, {"text": "meh", "label": "neutral"},
        {"text": "awful", "label": "neg"}, {"text": "   ", "label": "pos"},
    ]))
    section = DataSection(train_file=str(tmp_path / "t.jsonl"), eval_file=str(tmp_path / "t.jsonl"),
                          label_names=["neg", "pos"])
    data = load_classification_data(section, 0)
    report = data.reports["train"]
    assert (report.rows_read, report.rows_used, report.empty_text, report.unknown_label) == (5, 2, 2, 1)
    assert any("label 'neutral' not in" in e for e in report.examples_of_bad_rows)
    assert data.splits["train"] == {"text": ["great", "awful"], "label": [1, 0]}


def test_csv_and_parquet_read_like_tsv(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"text": ["a, quoted \"x\"", "b", "c"], "label": ["x", "y", "x"]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        data = load_classification_data(DataSection(train_file=str(tmp_path / name), eval_file=str(tmp_path / name)), 0)
        assert data.splits["train"]["text"] == frame["text"].tolist()
        assert data.splits["train"]["label"] == [0, 1, 0]


def test_wrong_encoding_names_the_file(tmp_path):
    (tmp_path / "latin1.tsv").write_bytes("text\tlabel\ncaf\xe9\t1\nok\t0\n".encode("latin-1"))
    with pytest.raises(PeftkitError, match=r"latin1.tsv: line 2 is not UTF-8 text \(column 4, byte 14 of the file"):
        load_classification_data(DataSection(train_file=str(tmp_path / "latin1.tsv")), 0)


def test_ragged_row_names_the_line(tmp_path):
    (tmp_path / "r.tsv").write_text("text\tlabel\nfine\t1\nbroken\t0\textra\n")
    with pytest.raises(PeftkitError, match=r"line 3 has 3 fields"):
        load_classification_data(DataSection(train_file=str(tmp_path / "r.tsv")), 0)


def test_subsample_is_seeded():
    section = DataSection(train_file=str(SST2 / "dev.tsv"), text_column="sentence", max_train_samples=50)
    a = load_classification_data(section, seed=3).splits["train"]["text"]
    b = load_classification_data(section, seed=3).splits["train"]["text"]
    c = load_classification_data(section, seed=4).splits["train"]["text"]
    assert a == b and a != c


def test_truncation_is_counted(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    data = load_classification_data(DataSection(train_file=str(SST2 / "dev.tsv"), eval_file=str(SST2 / "dev.tsv"),
                                                text_column="sentence"), 0)
    ds = tokenize_split(data.splits["eval"], tokenizer, 16, data.reports["eval"])
    longer = sum(len(tokenizer(t)["input_ids"]) > 16 for t in data.splits["eval"]["text"])
    assert data.reports["eval"].truncated == longer > 0
    assert max(len(x) for x in ds["input_ids"]) == 16


def test_a_semicolon_file_read_with_commas_says_the_delimiter_looks_wrong(tmp_path):
    from peftkit.data.classification import load_classification_data
    from peftkit.errors import PeftkitError
    from peftkit.recipe import DataSection

    path = tmp_path / "reviews.csv"
    path.write_text("text;label\ngreat film;positive\nawful;negative\nfine;positive\n", encoding="utf-8")
    with pytest.raises(PeftkitError, match=r"one column 'text;label': the delimiter looks wrong .*semicolons.*"
                                           r"data\.delimiter: \";\""):
        load_classification_data(DataSection(train_file=str(path)), seed=0)
    fixed = load_classification_data(DataSection(train_file=str(path), delimiter=";"), seed=0)
    assert fixed.label_names == ["negative", "positive"]
