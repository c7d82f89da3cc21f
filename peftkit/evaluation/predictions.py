"""The eval predictions of a run, kept small at any number of classes: one JSON line per evaluated text with its
true label, the prediction and the top-3 probabilities (not all K), and what they say about calibration (the
reliability diagram's bins and the expected calibration error).

Heads give logits, generative classification gives label scores: both become probabilities by a softmax over the
classes. The report (peftkit/report) reads the file to list the misclassified texts and to compare runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_text_atomic
from peftkit.runs.layout import EVAL_PREDICTIONS_FILE as PREDICTIONS_FILE

PREDICTIONS_KEY = "predictions"
"""The key of the metrics dict that carries the records until write_metrics moves them to PREDICTIONS_FILE."""
TOP_K = 3
CHUNK_ROWS = 512
TEXT_CHARS = 600  # a longer text is cut in the file: the report shows it, it does not need a whole document


def softmax_rows(scores) -> Any:
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def prediction_records(texts: Sequence[str], y_true: Sequence[int], scores, label_names: list[str]
                       ) -> list[dict[str, Any]]:
    """One record per row in eval-file order: index, text, true label, predicted label and the TOP_K most
    probable labels with their probabilities. Rows go through in chunks, so the float64 softmax never holds more
    than CHUNK_ROWS x K values (all rows at once cost 20 MB at 4,500 x 150)."""
    import numpy as np

    scores = np.asarray(scores)
    records: list[dict[str, Any]] = []
    for start in range(0, len(scores), CHUNK_ROWS):
        probs = softmax_rows(scores[start:start + CHUNK_ROWS])
        k = min(TOP_K, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        for offset, row in enumerate(top):
            i = start + offset
            best = [[label_names[j], round(float(probs[offset, j]), 5)] for j in row]
            records.append({"i": i, "text": str(texts[i])[:TEXT_CHARS], "label": label_names[int(y_true[i])],
                            "predicted": best[0][0], "top": best})
    return records


def write_predictions(out_dir: Path, records: list[dict[str, Any]]) -> None:
    write_text_atomic(Path(out_dir) / PREDICTIONS_FILE,
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_predictions(folder: Path) -> list[dict[str, Any]] | None:
    """The records of a run (or evaluation) folder; None when it has none (a run from before this file)."""
    path = Path(folder) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def reliability(records: list[dict[str, Any]], bins: int = 10) -> dict[str, Any]:
    """Confidence (top probability) against accuracy in equal-width bins, and the expected calibration error:
    the bins' |accuracy - confidence| weighted by their share of the rows."""
    table = [{"low": b / bins, "high": (b + 1) / bins, "count": 0, "confidence": 0.0, "accuracy": 0.0}
             for b in range(bins)]
    for r in records:
        confidence = r["top"][0][1]
        cell = table[min(int(confidence * bins), bins - 1)]
        cell["count"] += 1
        cell["confidence"] += confidence
        cell["accuracy"] += r["label"] == r["predicted"]
    total = sum(c["count"] for c in table)
    ece = 0.0
    for cell in table:
        if cell["count"]:
            cell["confidence"] /= cell["count"]
            cell["accuracy"] /= cell["count"]
            ece += cell["count"] / total * abs(cell["accuracy"] - cell["confidence"])
    return {"bins": table, "ece": ece, "rows": total}
