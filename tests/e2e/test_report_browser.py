"""report.html (a 2-class trained run, a 150-class evaluation) and a comparison, opened in headless Chromium:
no console error, no request beyond the file itself, every section there, every image decoded, the tables sort.

Needs Debian's `chromium` (`apt-get install -y chromium`); CI installs it, a machine without it skips. Screenshots
go to $PEFTKIT_SCREENSHOT_DIR when set (CI keeps them), else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from peftkit.evaluation import run_report as single
from peftkit.report import compare
from tests.helpers.browser import find_chromium, open_page

pytestmark = pytest.mark.slow

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                                                              "chromium); CI installs it and runs this test")

SECTIONS = "Array.from(document.querySelectorAll('section')).map(s => s.id)"
EMPTY_SECTIONS = ("Array.from(document.querySelectorAll('section'))"  # a heading and nothing else under it
                  ".filter(s => !s.querySelector('img') && s.innerText.trim().length < 60).map(s => s.id)")
IMAGES = "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"


def sorts(table_selector: str, column: int) -> str:
    """Click a heading twice: ascending, then descending, by the cells' values."""
    return f"""(() => {{
      const t = document.querySelector({json.dumps(table_selector)});
      const values = () => Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[{column}].dataset.v));
      const th = t.tHead.rows[0].cells[{column}];
      th.click(); const up = values(); th.click(); const down = values();
      return up.length > 1 && up.every((x, i) => i === 0 || up[i - 1] <= x)
             && down.every((x, i) => i === 0 || down[i - 1] >= x) && (new Set(up).size === 1 || up[0] !== down[0]);
    }})()"""


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("PEFTKIT_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_page(path: Path, expected_sections: tuple[str, ...], sort_check: str, shot: Path):
    result = open_page(CHROMIUM, path, {"sections": SECTIONS, "empty": EMPTY_SECTIONS, "images": IMAGES,
                                        "sorts": sort_check})
    shot.write_bytes(result.screenshot)
    assert result.console_errors == [], result.console_errors
    assert result.requests == [], f"the page fetched {result.requests}"
    assert result.values["sections"] == list(expected_sections)
    assert result.values["empty"] == [], f"sections without content: {result.values['empty']}"
    assert result.values["images"] and all(result.values["images"]), result.values["images"]
    assert result.values["sorts"] is True
    assert result.screenshot.startswith(b"\x89PNG") and len(result.screenshot) > 20_000
    return result


@needs_chromium
def test_a_run_report_opens_offline_with_every_section(tiny_run, tmp_path):
    _, run = tiny_run
    result = check_page(run / "report.html", single.SECTIONS, sorts("#per-class table", 3),
                        screenshot_dir(tmp_path) / "report_sst2_tiny.png")
    assert "Misclassified examples" in result.dom and "Training and validation curves" in result.dom


@needs_chromium
def test_a_150_class_report_opens_offline_with_every_section(tmp_path):
    import numpy as np

    from peftkit.evaluation.metrics import classification_metrics
    from peftkit.evaluation.predictions import PREDICTIONS_KEY, prediction_records
    from peftkit.tasks.classification import save_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 150, size=1500)
    logits = rng.normal(size=(1500, 150))
    logits[np.arange(1500), labels] += 4.0
    logits[np.arange(1500), (labels + 1) % 150] += rng.uniform(0, 4.5, size=1500)
    names = [f"intent_{i:03d}" for i in range(150)]
    metrics = classification_metrics(labels.tolist(), logits.argmax(-1).tolist(), names)
    metrics[PREDICTIONS_KEY] = prediction_records([f"text {i}" for i in range(1500)], labels.tolist(), logits, names)
    folder = tmp_path / "many"
    save_metrics(folder, metrics)
    check_page(folder / "report.html", single.SECTIONS, sorts("#per-class table", 3),
               screenshot_dir(tmp_path) / "report_150_classes.png")


@needs_chromium
def test_a_comparison_opens_offline_with_every_section(tiny_run, tmp_path):
    _, run = tiny_run
    other = Path(shutil.copytree(run, tmp_path / "other", ignore=shutil.ignore_patterns("checkpoints", "adapter")))
    records = [json.loads(line) for line in (other / "eval_predictions.jsonl").read_text().splitlines()]
    for r in records[::3]:  # the other run gets every third text right
        r["predicted"] = r["label"]
        r["top"] = [[r["label"], 0.8], *[pair for pair in r["top"] if pair[0] != r["label"]][:1]]
    (other / "eval_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = compare.write_comparison([run, other], tmp_path / "comparison.html")
    result = open_page(CHROMIUM, out, {"sections": SECTIONS, "empty": EMPTY_SECTIONS,
                                       "sorts": sorts("#per-class-f1 table", 2)})
    (screenshot_dir(tmp_path) / "comparison.png").write_bytes(result.screenshot)
    assert result.console_errors == [] and result.requests == []
    assert result.values["sections"] == list(compare.SECTIONS) and result.values["empty"] == []
    assert result.values["sorts"] is True
    assert "right only in other" in result.dom
