"""The quickstart's bundled data (builtin: paths), data.delimiter, encoding errors by line, evaluation output
folders, checkpoint pruning with the run folder's size, and progress reporting fit for log files."""

from __future__ import annotations

import io
import os

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
    for name in ("defaults/data/sst2/train_4k.tsv", "defaults/data/sst2/dev.tsv", "defaults/data/sst2/SOURCE.md",
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
    good = ['{"text": "fine", "label": "a"}\n' if suffix == ".jsonl" else f"fine{',' if suffix == '.csv' else chr(9)}a\n"]
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


def test_evaluation_folders_of_same_named_files_differ(tmp_path):
    from peftkit.runs.folder import evaluation_dir

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = evaluation_dir(tmp_path, str(tmp_path / "a" / "test.csv")), evaluation_dir(tmp_path, str(tmp_path / "b" / "test.csv"))
    assert one != two and one.name.startswith("eval-test-") and two.name.startswith("eval-test-")
    assert evaluation_dir(tmp_path, str(tmp_path / "a" / "test.csv")) == one  # the same file: the same folder
    assert evaluation_dir(tmp_path, None) == tmp_path


def make_checkpoints(run_dir, steps, size=1000):
    from peftkit.trainer.guards import COMPLETE_MARKER

    for step in steps:
        folder = run_dir / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x" * size)
        (folder / COMPLETE_MARKER).write_text(str(step))
    (run_dir / "adapter").mkdir(exist_ok=True)
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"y" * 500)


@pytest.mark.parametrize("keep,left", [("last", ["checkpoint-20"]), ("none", []), ("all", ["checkpoint-10", "checkpoint-20"])])
def test_finished_run_keeps_checkpoints_as_asked_and_says_the_size(tmp_path, keep, left):
    from peftkit.runs.folder import complete_checkpoints, finish_run_folder

    make_checkpoints(tmp_path, [10, 20], size=2_000_000)
    line = finish_run_folder(tmp_path, keep)
    assert [p.name for p in complete_checkpoints(tmp_path)] == left
    assert line.startswith(f"run folder: {tmp_path} (")
    assert "adapter 500 B" in line
    if keep == "last":
        assert "removed 1 checkpoint (2.0 MB" in line and "1 checkpoint 2.0 MB" in line
    if keep == "none":
        assert "removed 2 checkpoints (4.0 MB" in line and not (tmp_path / "checkpoints").exists()


def test_resume_of_a_finished_run_without_checkpoints_says_it_is_finished(tmp_path):
    from peftkit.runs.folder import resume_point
    from peftkit.runs.layout import SUMMARY_FILE

    make_checkpoints(tmp_path, [])
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / SUMMARY_FILE).write_text("{}")
    with pytest.raises(PeftkitError, match="holds a finished run .* nothing to resume"):
        resume_point(tmp_path, True, "r.yaml")


def test_plain_progress_writes_a_few_lines_and_no_carriage_returns():
    from peftkit.core.progress import PlainProgress

    out = io.StringIO()
    with PlainProgress(1000, "label scoring", "rows", stream=out) as bar:
        for _ in range(1000):
            bar.update(1)
    text = out.getvalue()
    assert "\r" not in text and len(text.splitlines()) <= 12
    assert text.splitlines()[0] == "label scoring: 1,000 rows"
    assert "1,000/1,000 rows (100%)" in text.splitlines()[-1] and text.rstrip().endswith("done")


def test_progress_helpers_keep_order_and_stay_quiet_for_small_jobs(capsys):
    from peftkit.core.progress import map_in_chunks, with_progress

    items = ["ccc", "a", "bb", "dddd", "e"]
    assert map_in_chunks(lambda xs: [x.upper() for x in xs], items, 2, "x", key=len) == [x.upper() for x in items]
    assert list(with_progress(iter(range(5)), 5, "y", min_total=10)) == list(range(5))
    assert capsys.readouterr().err.count("y:") == 0


def test_trainer_bars_off_in_log_files_unless_the_recipe_says(monkeypatch):
    from peftkit.core import progress

    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    assert progress.log_friendly_trainer_args({"logging_steps": 5})["disable_tqdm"] is True
    assert progress.log_friendly_trainer_args({"disable_tqdm": False})["disable_tqdm"] is False
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    assert "disable_tqdm" not in progress.log_friendly_trainer_args({})


def test_library_bars_off_in_logs_unless_the_environment_says(monkeypatch):
    from peftkit.core import progress

    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "0")
    progress.quiet_library_bars_in_logs()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "0"
