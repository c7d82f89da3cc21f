"""Peak memory of evaluation and reporting at 2 vs many classes, the same number of eval rows (issue 27).

Each arm is a fresh process that imports what the step needs, builds synthetic logits for ROWS texts over K
classes (a head's output: each text leans to its class, with some mass on a "neighbour" class so there are real
confusions to order and list), then runs the step a classification run ends with: the metrics
(`classification_metrics`), the per-row predictions (`prediction_records`), the run's files
(`tasks.classification.save_metrics`: metrics.json, eval_report.txt, confusion_matrix.png, eval_predictions.jsonl,
report.html) and the console text. It reports the process's peak RSS (`ru_maxrss`), the RSS before the step, and
the step's own rise above it. No model is loaded: the model's forward pass costs the same at any K (the head's
output is ROWS x K floats, 2.7 MB at 4,500 x 150), the reporting step is what grew with K squared.

    OMP_NUM_THREADS=1 python -m benchmarks.memory.bench_eval_report_memory --rows 4500 --classes 2,150
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic(rows: int, classes: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=rows)
    logits = rng.normal(0.0, 1.0, size=(rows, classes)).astype(np.float32)
    logits[np.arange(rows), labels] += 5.0
    neighbours = (labels + 1) % classes  # a confusable class per class
    logits[np.arange(rows), neighbours] += rng.uniform(0.0, 5.5, size=rows).astype(np.float32)
    texts = [f"synthetic text {i} about class {labels[i]}" for i in range(rows)]
    return texts, labels.tolist(), logits


def one_arm(rows: int, classes: int, folder: Path) -> dict:
    import matplotlib  # noqa: F401  imported before the baseline in every arm: import cost is the same at any K
    import sklearn.metrics  # noqa: F401

    from peftkit.evaluation.metrics import classification_metrics
    from peftkit.evaluation.predictions import PREDICTIONS_KEY, prediction_records
    from peftkit.tasks.classification import save_metrics

    names = [f"intent_{i:03d}" for i in range(classes)]
    texts, labels, logits = synthetic(rows, classes)
    before = rss_mb()
    started = time.perf_counter()
    metrics = classification_metrics(labels, logits.argmax(-1).tolist(), names)
    metrics[PREDICTIONS_KEY] = prediction_records(texts, labels, logits, names)
    console = save_metrics(folder, metrics)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    from PIL import Image

    with Image.open(folder / "confusion_matrix.png") as image:
        pixels = list(image.size)
    return {"classes": classes, "rows": rows, "peak_rss_mb": round(peak, 1), "rss_before_step_mb": round(before, 1),
            "step_rise_mb": round(peak - before, 1), "step_seconds": round(seconds, 2),
            "console_lines": console.count("\n") + 1, "console_widest": max(map(len, console.splitlines())),
            "confusion_png_pixels": pixels, "file_bytes": sizes}


def run_arm(rows: int, classes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, __file__, "--arm", str(classes), "--rows", str(rows), "--dir", tmp],
                             capture_output=True, text=True, env=env, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    base = results[0]
    lines = ["| classes | rows | peak RSS (MB) | vs first | RSS before step (MB) | step's rise (MB) | step (s) | "
             "confusion PNG (px) | report.html (KB) | console lines |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['classes']} | {r['rows']} | {r['peak_rss_mb']} | "
                     f"{100 * (r['peak_rss_mb'] / base['peak_rss_mb'] - 1):+.1f}% | {r['rss_before_step_mb']} | "
                     f"{r['step_rise_mb']} | {r['step_seconds']} | {r['confusion_png_pixels'][0]}x"
                     f"{r['confusion_png_pixels'][1]} | {r['file_bytes'].get('report.html', 0) // 1024} | "
                     f"{r['console_lines']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4500)
    parser.add_argument("--classes", default="2,150", help="comma-separated class counts, the first is the reference")
    parser.add_argument("--repeats", type=int, default=1, help="arms run interleaved this many times")
    parser.add_argument("--name", default="eval_report_memory")
    parser.add_argument("--arm", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm is not None:
        print(json.dumps(one_arm(args.rows, args.arm, Path(args.dir))))
        return
    counts = [int(c) for c in args.classes.split(",")]
    runs = [run_arm(args.rows, k) for _ in range(args.repeats) for k in counts]
    best = [min((r for r in runs if r["classes"] == k), key=lambda r: r["peak_rss_mb"]) for k in counts]
    text = table(best)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"runs": runs, "command": sys.argv}, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
