"""Evaluation output at any number of classes (confusion order, most-confused pairs, bounded heatmap, console),
the eval predictions, and report.html / `peftkit report` on a real tiny run."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from peftkit.errors import PeftkitError
from peftkit.evaluation import run_report as single
from peftkit.evaluation.confusion import class_order, plot_confusion_matrix, top_confusions
from peftkit.evaluation.metrics import classification_metrics, format_metrics, write_metrics
from peftkit.evaluation.predictions import PREDICTIONS_KEY, prediction_records, read_predictions, reliability
from peftkit.report import compare


def synthetic_metrics(classes: int, rows_per_class: int = 6, seed: int = 0, extra: int = 0) -> dict:
    """Each class right most of the time, class c confused with c + classes // 2 (far apart in label order);
    `extra` more rows of class 7 predicted as class 80, the largest confusion."""
    import random

    rng = random.Random(seed)
    y_true, y_pred = [7] * extra, [80] * extra
    for c in range(classes):
        for _ in range(rows_per_class):
            y_true.append(c)
            y_pred.append((c + classes // 2) % classes if rng.random() < 0.3 else c)
    return classification_metrics(y_true, y_pred, [f"class_{i:03d}" for i in range(classes)])


def test_most_confused_pairs_are_the_largest_off_diagonal_cells():
    matrix = [[5, 0, 3], [1, 4, 0], [0, 2, 6]]
    pairs = top_confusions(matrix, ["a", "b", "c"], n=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("a", "c", 3), ("c", "b", 2)]
    assert pairs[0]["share_of_true"] == pytest.approx(3 / 8)


def test_classes_confused_with_each_other_are_ordered_side_by_side():
    k = 8  # 0<->4, 1<->5, 2<->6, 3<->7 confused; label order puts each pair 4 apart
    matrix = [[10 if i == j else (4 if abs(i - j) == 4 else 0) for j in range(k)] for i in range(k)]
    order = class_order(matrix)
    assert sorted(order) == list(range(k))
    position = {c: i for i, c in enumerate(order)}
    assert all(abs(position[c] - position[c + 4]) == 1 for c in range(4))


def test_console_beyond_12_classes_has_worst_classes_and_pairs_not_a_matrix():
    metrics = synthetic_metrics(150, extra=9)
    console = format_metrics(metrics)
    lines = console.splitlines()
    assert len(lines) < 40 and max(map(len, lines)) < 160
    assert "confusion matrix (rows" not in console
    assert "the 10 classes with the lowest F1 (of 150)" in console and "most-confused pairs" in console
    assert "share of the true class):\n  class_007 -> class_080: 9 (" in console  # the largest pair comes first
    every = format_metrics(metrics, every_class=True)
    assert all(f"class_{i:03d}" in every for i in range(150)) and "confusion matrix (rows" not in every


def test_a_few_classes_keep_the_full_table_and_matrix():
    metrics = synthetic_metrics(3)
    console = format_metrics(metrics)
    assert "confusion matrix (rows: true, columns: predicted)" in console
    assert all(name in console for name in metrics["labels"])


def test_the_heatmap_is_bounded_whatever_the_number_of_classes(tmp_path):
    from PIL import Image

    sizes = {}
    for k in (3, 150):
        plot_confusion_matrix(synthetic_metrics(k, rows_per_class=2), tmp_path / f"{k}.png")
        with Image.open(tmp_path / f"{k}.png") as image:
            sizes[k] = image.size
    assert max(sizes[150]) <= 1500, sizes  # it was 15,092 x 15,048 before
    assert max(sizes[3]) < 600


def test_prediction_records_keep_the_top_three_in_file_order():
    import numpy as np

    logits = np.array([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 0.0]])
    records = prediction_records(["first", "second"], [2, 0], logits, ["a", "b", "c", "d"])
    assert [r["text"] for r in records] == ["first", "second"]
    assert records[0]["label"] == "c" and records[0]["predicted"] == "b"
    assert [name for name, _ in records[0]["top"]] == ["b", "c", "a"]
    expected = np.exp(2.0) / np.exp([0.0, 2.0, 1.0, -1.0]).sum()
    assert records[0]["top"][0][1] == pytest.approx(expected, abs=1e-5)


def test_expected_calibration_error_worked_by_hand():
    def record(confidence, right):
        return {"label": "a", "predicted": "a" if right else "b", "top": [["a" if right else "b", confidence]]}

    # bin 0.9-1.0: confidence 0.95, half right -> gap 0.45; bin 0.6-0.7: 0.65, all right -> gap 0.35
    records = [record(0.95, True), record(0.95, False), record(0.65, True), record(0.65, True)]
    assert reliability(records)["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)


def test_write_metrics_moves_the_predictions_out_of_metrics_json(tmp_path):
    import numpy as np

    metrics = classification_metrics([0, 1, 1], [0, 1, 0], ["no", "yes"])
    metrics[PREDICTIONS_KEY] = prediction_records(["x", "y", "z"], [0, 1, 1], np.eye(2)[[0, 1, 0]], ["no", "yes"])
    write_metrics(tmp_path, metrics)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert PREDICTIONS_KEY not in saved and "calibration" in saved
    assert [r["predicted"] for r in read_predictions(tmp_path)] == ["no", "yes", "no"]


def section_ids(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', html)


def test_a_trained_run_has_its_report_with_every_section(tiny_run):
    _, run = tiny_run
    html = (run / "report.html").read_text(encoding="utf-8")
    assert section_ids(html) == list(single.SECTIONS)
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # nothing fetched: images are data URIs
    records = read_predictions(run)
    dev = [line.split("\t") for line in Path(json.loads((run / "metrics.json").read_text())["data_file"])
           .read_text(encoding="utf-8").splitlines()[1:]]
    names = ["negative", "positive"]
    # every text with its own true label: the speed default group_by_length also reorders evaluation batches
    assert [(r["text"], r["label"]) for r in records] == [(text, names[int(label)]) for text, label in dev]
    assert json.loads((run / "training_log.json").read_text())[0]["loss"] > 0
    assert 'id="curves"' in html and "No training_log.json" not in html
    wrong = sum(r["label"] != r["predicted"] for r in records)
    assert f"{wrong} of {len(records)} examples are wrong" in html


def test_peftkit_report_compares_runs_right_and_wrong_both_ways(tiny_run, tmp_path, capsys):
    from peftkit.cli import main

    _, run = tiny_run
    other = Path(shutil.copytree(run, tmp_path / "other", ignore=shutil.ignore_patterns("checkpoints", "adapter")))
    records = read_predictions(other)
    flipped = {"negative": "positive", "positive": "negative"}
    for r in records[:5]:  # the other run gets the first five texts the other way round
        r["predicted"] = flipped[r["predicted"]]
        r["top"] = [[r["predicted"], 0.9], [flipped[r["predicted"]], 0.1]]
    (other / "eval_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "cmp.html"
    assert main(["report", str(run), str(other), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert section_ids(html) == list(compare.SECTIONS)
    base = {r["i"]: r for r in read_predictions(run)}
    fixed = sum(base[r["i"]]["label"] != base[r["i"]]["predicted"] for r in records[:5])
    def listed(title: str, n: int) -> str:
        return f"{title}: {n}" if n else f"{title}: none"

    assert listed("wrong in run, right in other", fixed) in html
    assert listed("right in run, wrong in other", 5 - fixed) in html
    assert main(["report", str(other)]) == 0 and (other / "report.html").is_file()
    assert "written to" in capsys.readouterr().out


def test_report_of_a_folder_without_metrics_is_one_clear_error(tmp_path):
    with pytest.raises(PeftkitError, match="no metrics.json"):
        single.write_run_report(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"eval_loss": 1.0}))
    with pytest.raises(PeftkitError, match="not a classification run"):
        single.write_run_report(tmp_path)


def test_the_model_card_lists_the_top_confusions_not_a_150_column_table():
    from types import SimpleNamespace

    from peftkit.tasks.cards import classification_evaluation

    metrics = synthetic_metrics(150, extra=9)
    text = classification_evaluation(SimpleNamespace(metrics=metrics, labels=metrics["labels"]))
    assert "true \\ predicted" not in text and max(map(len, text.splitlines())) < 200
    assert "| class_007 | class_080 | 9 |" in text


def test_temperature_scaling_recovers_the_overconfidence_it_is_shown():
    import numpy as np

    from peftkit.evaluation.calibration import expected_calibration_error, fit_temperature

    rng = np.random.default_rng(0)
    true_logits = rng.normal(0.0, 2.0, size=(4000, 5))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probs])  # labels drawn from calibrated probabilities
    overconfident = 3.0 * true_logits
    temperature = fit_temperature(overconfident[:2000], labels[:2000])
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(overconfident[2000:], labels[2000:])
    after = expected_calibration_error(overconfident[2000:], labels[2000:], temperature)
    assert after < before / 3


def test_the_saved_temperature_is_read_back_and_bad_files_mean_none(tmp_path):
    from peftkit.evaluation.calibration import CALIBRATION_FILE, saved_temperature

    assert saved_temperature(tmp_path) == 1.0
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"temperature": 1.7}))
    assert saved_temperature(tmp_path) == 1.7
    for bad in ("not json", json.dumps({"temperature": -1}), json.dumps([1.7]), json.dumps({"temperature": True})):
        (tmp_path / CALIBRATION_FILE).write_text(bad)
        assert saved_temperature(tmp_path) == 1.0
