"""Data files: the quickstart's bundled data (builtin: paths), data.delimiter, encoding errors by line, and
which file evaluation reads."""

from __future__ import annotations

import pytest

from peftkit.data.classification import load_classification_data
from peftkit.data.files import read_table, resolve_data_path
from peftkit.errors import PeftkitError
from peftkit.recipe import DataSection, load_recipe
from tests.conftest import REPO, SST2

QUICKSTART = REPO / "peftkit" / "defaults" / "sst2_quickstart.yaml"


def test_quickstart_reads_only_bundled_data_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no repository, no ../shared here
    recipe = load_recipe(QUICKSTART)
    assert recipe.data.train_file.startswith("builtin:") and recipe.data.eval_file.startswith("builtin:")
    data = load_classification_data(recipe.data, recipe.seed)
    assert len(data.splits["train"]["text"]) == 4000 and len(data.splits["eval"]["text"]) == 872
    assert data.reports["train"].skipped == data.reports["eval"].skipped == 0
    assert resolve_data_path(recipe.data.train_file).is_relative_to(REPO / "peftkit" / "defaults" / "data")


@pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason="needs ../shared/data/sst2")
def test_bundled_subset_is_the_one_max_train_samples_drew_from_the_full_file():
    """Training on the bundled 4,000 rows is the quickstart's former run on the full file with
    max_train_samples: 4000 (the same rows, in the same order); dev is the full dev set, unchanged."""
    recipe = load_recipe(QUICKSTART)
    full = DataSection(train_file=str(SST2 / "train.tsv"), eval_file=str(SST2 / "dev.tsv"), text_column="sentence",
                       label_names=["negative", "positive"], max_train_samples=4000)
    before = load_classification_data(full, recipe.seed)
    now = load_classification_data(recipe.data, recipe.seed)
    assert now.splits["train"] == before.splits["train"]
    assert resolve_data_path("builtin:sst2/dev.tsv").read_bytes() == (SST2 / "dev.tsv").read_bytes()


def test_bundled_data_ships_with_the_package():
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["peftkit"]
    root = REPO / "peftkit"
    shipped = {p.relative_to(root) for pattern in patterns for p in root.glob(pattern)}
    for name in ("defaults/data/sst2/train.tsv", "defaults/data/sst2/train_4k.tsv", "defaults/data/sst2/dev.tsv",
                 "defaults/data/sst2/SOURCE.md",
                 "defaults/data/make_sst2_subset.py", "defaults/sst2_quickstart.yaml"):
        assert any(str(p) == name for p in shipped), name
    source = (root / "defaults/data/sst2/SOURCE.md").read_text()
    assert "Socher" in source and "stanfordnlp/sst2" in source
    assert "stanfordnlp/sst2" in QUICKSTART.read_text()


def test_unknown_builtin_file_lists_what_ships():
    with pytest.raises(PeftkitError, match="builtin:sst2/train_4k.tsv"):
        resolve_data_path("builtin:sst2/nope.tsv")
    with pytest.raises(PeftkitError, match="no such data file"):
        resolve_data_path("builtin:../cli.py")


def test_delimiter_key_reads_semicolon_files(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text;label\n"a; quoted, text";pos\nplain, with comma;neg\n', encoding="utf-8")
    rows = read_table(path, DataSection(delimiter=";"))
    assert rows == [{"text": "a; quoted, text", "label": "pos"}, {"text": "plain, with comma", "label": "neg"}]
    with pytest.raises(PeftkitError, match="fields"):
        read_table(path, DataSection())  # by extension: comma, and the rows do not line up


def test_delimiter_must_be_one_character(tmp_path):
    from tests.conftest import write_recipe

    path = write_recipe(tmp_path / "r.yaml", {"model": {"name_or_path": "x"},
                                              "data": {"train_file": "t.csv", "delimiter": ";;"}})
    with pytest.raises(PeftkitError, match="'data.delimiter' must be one character"):
        load_recipe(path)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_encoding_error_names_the_line(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    separator = "," if suffix == ".csv" else "\t"
    good = ['{"text": "fine", "label": "a"}\n' if suffix == ".jsonl" else f"fine{separator}a\n"]
    head = "" if suffix == ".jsonl" else f"text{',' if suffix == '.csv' else chr(9)}label\n"
    body = (head + good[0] * 3000).encode("utf-8")  # past the decoder's first chunk
    bad = good[0].replace("fine", "na\xefve").encode("latin-1")
    path.write_bytes(b"\xef\xbb\xbf" + body + bad + good[0].encode())
    line = 3001 + (0 if suffix == ".jsonl" else 1)
    with pytest.raises(PeftkitError, match=rf"line {line} is not UTF-8 text \(column \d+, byte \d+"):
        read_table(path, DataSection())


def test_evaluation_reads_the_eval_file_only():
    from peftkit.data.classification import evaluation_file

    assert evaluation_file(DataSection(train_file="t.csv", eval_file="e.csv"), None) == "e.csv"
    assert evaluation_file(DataSection(train_file="t.csv", eval_file="e.csv"), "x.csv") == "x.csv"
    assert evaluation_file(DataSection(train_file="t.csv"), None) is None  # held out from train: train is read
