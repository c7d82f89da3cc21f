"""Progress reporting fit for log files: plain lines, no carriage returns, bars off unless asked."""

from __future__ import annotations

import io
import os


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
