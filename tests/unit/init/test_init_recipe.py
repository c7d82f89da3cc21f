"""`peftkit init`: format, delimiter, header, columns, labels, flags, task and label words, on real rows written in
every supported format; every written recipe opens with its command and passes `peftkit validate`."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from peftkit.errors import PeftkitError
from peftkit.init.detect import detect_layout, looks_like_header
from peftkit.init.recipe_writer import choose_label_words, init_recipe
from peftkit.recipe import load_recipe
from peftkit.run import check_recipe_inputs
from tests.conftest import SHARED_DATA, SST2
from tests.helpers.sft_fixtures import smollm2_tokenizer, tiny_causal_dir  # noqa: F401

NAMES = {"0": "negative", "1": "positive"}


def sst2_rows(n: int, start: int = 1) -> list[tuple[str, str]]:
    lines = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()[start:start + n]
    return [(t.strip(), NAMES[label]) for t, label in (line.split("\t") for line in lines)]


def agnews_rows(n: int) -> list[tuple[str, str]]:
    lines = (SHARED_DATA / "agnews" / "test.tsv").read_text(encoding="utf-8").splitlines()[:n]
    return [tuple(line.split("\t")) for line in lines]


def write_delimited(path, rows, delimiter, header=("sentence", "label"), label_first=False):
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL,
                       escapechar="\\" if delimiter == "\t" else None)
        if header:
            w.writerow(header[::-1] if label_first else header)
        for text, label in rows:
            w.writerow((label, text) if label_first else (text, label))
    return path


def run_init(tmp_path, data, **kwargs):
    out = tmp_path / "recipe.yaml"
    path, summary = init_recipe(str(data), out=str(out), output_dir=str(tmp_path / "run"), **kwargs)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"# peftkit train {out}"
    recipe = load_recipe(path)
    assert "recipe OK" in check_recipe_inputs(recipe)  # what `peftkit validate` runs
    return recipe, text, summary


FORMATS = ["tsv-header", "csv-comma-header", "csv-semicolon-noheader", "csv-pipe-header", "tsv-noheader",
           "jsonl", "parquet"]


@pytest.mark.parametrize("kind", FORMATS)
def test_each_format_gives_a_recipe_that_validates(kind, tmp_path):
    rows = sst2_rows(120)
    if kind == "tsv-header":
        data = write_delimited(tmp_path / "d.tsv", rows, "\t")
    elif kind == "csv-comma-header":
        rows = [(t + ', "really"', label) for t, label in rows]  # commas and quotes inside the text
        data = write_delimited(tmp_path / "d.csv", rows, ",")
    elif kind == "csv-semicolon-noheader":
        data = write_delimited(tmp_path / "d.csv", rows, ";", header=None, label_first=True)
    elif kind == "csv-pipe-header":
        data = write_delimited(tmp_path / "d.csv", rows, "|", header=("review", "sentiment"))
    elif kind == "tsv-noheader":
        data = write_delimited(tmp_path / "d.tsv", rows, "\t", header=None)
    elif kind == "jsonl":
        data = tmp_path / "d.jsonl"
        data.write_text("".join(json.dumps({"id": i, "text": t, "label": label}) + "\n"
                                for i, (t, label) in enumerate(rows)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = tmp_path / "d.parquet"
        pq.write_table(pa.table({"stars": [1 if label == "negative" else 5 for _, label in rows],
                                 "body": [t for t, _ in rows]}), data)
    recipe, text, summary = run_init(tmp_path, data)
    d = recipe.data
    assert recipe.task == "classification" and recipe.model.name_or_path == "packaged:all-minilm-l6-v2"
    expected_delimiter = {"csv-semicolon-noheader": ";", "csv-pipe-header": "|"}.get(kind)
    assert d.delimiter == expected_delimiter
    assert d.has_header is ("noheader" not in kind)
    if "noheader" in kind:
        assert d.text_column == "text" and d.label_column == "label"
        assert d.column_names == (["label", "text"] if "semicolon" in kind else ["text", "label"])
    elif kind == "parquet":
        assert (d.text_column, d.label_column, d.label_names) == ("body", "stars", ["1", "5"])
        assert "labels are numbers" in summary
    elif kind == "csv-pipe-header":
        assert (d.text_column, d.label_column) == ("review", "sentiment")
    if kind != "parquet":
        assert d.label_names == ["negative", "positive"]
    counts = {n: sum(label == n for _, label in rows) for n in ("negative", "positive")}
    if kind != "parquet":
        assert f"negative {counts['negative']}, positive {counts['positive']}" in text
    assert d.eval_file is None and d.eval_fraction == 0.2  # under 1,000 rows: a fifth held out
    assert "imbalanced" not in summary


def test_header_rule():
    assert looks_like_header([["sentence", "label"], ["a fine film", "1"], ["dull", "0"]])
    assert not looks_like_header([["positive", "a fine film"], ["negative", "dull"], ["positive", "good"]])
    assert not looks_like_header([["a long first sentence that is clearly text, not a name", "1"], ["x", "0"]])
    assert not looks_like_header([["text", "5"], ["great", "4"]])  # a number is not a column name


def test_detects_semicolon_even_with_commas_in_the_text(tmp_path):
    rows = [(f"{t}, with a comma, or two", label) for t, label in sst2_rows(40)]
    layout = detect_layout(write_delimited(tmp_path / "d.csv", rows, ";"))
    assert (layout.delimiter, layout.has_header, layout.columns) == (";", True, ["sentence", "label"])


def test_header_override(tmp_path):
    data = write_delimited(tmp_path / "d.csv", sst2_rows(30), ",", header=None)
    assert detect_layout(data, "yes").has_header and not detect_layout(data).has_header


def test_imbalanced_and_tiny_classes_are_flagged_in_summary_and_recipe(tmp_path):
    rows = [(t, "positive") for t, _ in sst2_rows(90)] + [(t, "negative") for t, _ in sst2_rows(6, start=200)]
    recipe, text, summary = run_init(tmp_path, write_delimited(tmp_path / "d.csv", rows, ","))
    assert "imbalanced: 'positive' has 90 rows, 'negative' 6 (15.0x)" in summary
    assert "tiny classes (< 10 rows): 'negative' (6)" in summary
    assert "# CHECK: imbalanced" in text and "# CHECK: tiny classes" in text
    assert "will likely hold no row of 'negative'" not in summary  # 6 * 0.2 >= 1
    rows = rows[:-5]  # 1 negative row: the held-out fifth will most likely miss it
    _, _, summary = run_init(tmp_path / "b", write_delimited(mkdir(tmp_path / "b") / "d.csv", rows, ","))
    assert "will likely hold no row of 'negative'" in summary


def mkdir(path):
    path.mkdir()
    return path


def test_eval_file_is_used_and_its_labels_never_choose_anything(tmp_path):
    train = write_delimited(tmp_path / "train.csv", sst2_rows(60), ",")
    dev = write_delimited(tmp_path / "dev.csv", [*sst2_rows(20, start=300), ("odd row", "neutral")], ",")
    recipe, text, summary = run_init(tmp_path, train, eval_file=str(dev))
    assert recipe.data.eval_file == str(dev) and "eval_fraction" not in text
    assert recipe.data.label_names == ["negative", "positive"]
    assert "labels not in the training file (skipped): neutral" in summary


def test_eval_file_with_another_delimiter_is_refused(tmp_path):
    train = write_delimited(tmp_path / "train.csv", sst2_rows(30), ",")
    dev = write_delimited(tmp_path / "dev.csv", sst2_rows(30, start=100), ";")
    with pytest.raises(PeftkitError, match="same delimiter"):
        init_recipe(str(train), eval_file=str(dev), out=str(tmp_path / "r.yaml"))
    assert not (tmp_path / "r.yaml").exists()


def test_existing_recipe_is_not_overwritten_without_force(tmp_path):
    data = write_delimited(tmp_path / "d.csv", sst2_rows(30), ",")
    (tmp_path / "r.yaml").write_text("mine\n")
    with pytest.raises(PeftkitError, match="--force"):
        init_recipe(str(data), out=str(tmp_path / "r.yaml"))
    assert (tmp_path / "r.yaml").read_text() == "mine\n"


def test_unreadable_inputs_get_one_line_errors(tmp_path):
    bad = tmp_path / "d.csv"
    bad.write_bytes(b"sentence,label\ngood,positive\n" + "caf\xe9 ok,negative\n".encode("latin-1"))
    with pytest.raises(PeftkitError, match=r"line 3 is not UTF-8 text \(column 4"):
        init_recipe(str(bad), out=str(tmp_path / "r.yaml"))
    one = tmp_path / "one.csv"
    one.write_text("just text\nno columns here\n")
    with pytest.raises(PeftkitError, match="cannot tell the columns apart"):
        init_recipe(str(one), out=str(tmp_path / "r.yaml"))
    txt = tmp_path / "d.txt"
    txt.write_text("a,b\n")
    with pytest.raises(PeftkitError, match="rename a delimited text file to .csv"):
        init_recipe(str(txt), out=str(tmp_path / "r.yaml"))


def test_label_words_single_token_or_kept_and_said(smollm2_tokenizer):
    words, tokens = choose_label_words(["negative", "positive"], smollm2_tokenizer)
    assert words == {"negative": " negative", "positive": " positive"} and set(tokens.values()) == {1}
    words, tokens = choose_label_words(["Business", "Sci/Tech", "Sports", "World"], smollm2_tokenizer)
    assert words["Sci/Tech"] == " Sci/Tech" and tokens["Sci/Tech"] > 1  # no one-token form: kept
    assert tokens["World"] == 1


def test_causal_model_gives_generative_classification_with_checked_label_words(tmp_path, tiny_causal_dir):
    data = write_delimited(tmp_path / "news.tsv", agnews_rows(80), "\t", header=None)
    recipe, text, summary = run_init(tmp_path, data, model=str(tiny_causal_dir))
    assert recipe.task == "generative_classification"
    assert recipe.data.label_names == ["Business", "Sci/Tech", "Sports", "World"]
    assert recipe.data.label_words["Sci/Tech"] == " Sci/Tech"
    assert "'Sci/Tech' is several tokens: kept" in text
    assert recipe.data.prompt_template == "{text}\nLabel:" and recipe.train["packing"] is True
    assert "Sci/Tech -> ' Sci/Tech' (" in summary


def test_task_can_be_forced_but_an_encoder_cannot_generate(tmp_path, tiny_causal_dir):
    data = write_delimited(tmp_path / "d.csv", sst2_rows(40), ",")
    recipe, _, _ = run_init(tmp_path, data, model=str(tiny_causal_dir), task="classification")
    assert recipe.task == "classification"
    with pytest.raises(PeftkitError, match="needs a causal LM"):
        init_recipe(str(data), task="generative_classification", out=str(tmp_path / "x.yaml"))


def test_the_written_recipe_reads_well(tmp_path):
    recipe, text, _ = run_init(tmp_path, write_delimited(tmp_path / "d.csv", sst2_rows(50), ";"))
    raw = yaml.safe_load(text)
    assert raw["data"]["delimiter"] == ";" and raw["keep_checkpoints"] == "last"
    assert all(line.startswith("#") for line in text.splitlines()[:4])
    assert "semicolon-separated" in text and "held out from train" in text


# ---- the training plan: validation split, early stopping, length from classes and rows ---------------------


def test_training_plan_scales_length_with_classes_and_rows():
    from peftkit.init.recipe_writer import MAX_EPOCHS, MIN_EPOCHS, SEEN_PER_CLASS, training_plan

    many = training_plan(15_000, 150)  # CLINC150-sized: 100 rows a class
    assert many.validation_rows == 1500 and many.epochs == 8
    assert many.epochs * (15_000 - 1500) / 150 >= SEEN_PER_CLASS  # each class seen at least the rule's count
    big = training_plan(67_000, 2)  # SST-2-sized: passes are never fewer than MIN_EPOCHS, validation capped
    assert big.epochs == MIN_EPOCHS and big.validation_rows == 2000
    small = training_plan(200, 2)  # a small file: more passes, at most MAX_EPOCHS
    assert MIN_EPOCHS < small.epochs <= MAX_EPOCHS and small.validation_rows == 20
    wide = training_plan(600, 60)  # 10 rows a class: >= 10 validation rows per class would take too much
    assert wide.validation_rows == 150 and wide.epochs == MAX_EPOCHS
    for plan in (many, big, small, wide):
        assert plan.evaluations >= 2 * plan.epochs and plan.patience >= 2


def test_the_written_recipe_selects_on_validation_and_stops_early(tmp_path):
    recipe, text, _ = run_init(tmp_path, write_delimited(tmp_path / "d.tsv", agnews_rows(400), "\t",
                                                         header=("text", "label")))
    assert recipe.selection.enabled and recipe.selection.metric == "macro_f1"
    assert recipe.selection.early_stopping_patience == 3
    assert recipe.selection.validation_rows == 40  # 320 rows after the 20% eval share: 10 per class beats 10%
    assert recipe.train["load_best_model_at_end"] is True  # filled by the recipe loader from selection
    assert "# Model selection:" in text and "each of the 4 classes seen" in text


def test_many_classes_keep_the_recipe_and_summary_readable(tmp_path):
    rows = [(f"query number {i} about topic {i % 60}", f"intent_{i % 60:02d}") for i in range(1200)]
    recipe, text, summary = run_init(tmp_path, write_delimited(tmp_path / "d.tsv", rows, "\t",
                                                               header=("text", "label")))
    assert len(recipe.data.label_names) == 60
    assert max(len(line) for line in text.splitlines() if not line.startswith("#")) <= 120
    assert "60 classes, 20 rows each" in text and len(summary.splitlines()) < 15
