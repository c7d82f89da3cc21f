"""Per-tensor vs per-channel int8 of one saved float student (RUN/student), SST-2 dev, side by side in one process.

  python -m benchmarks.quality.bench_int8_schemes runs/bench_small_data/sst2/runs/distill_n500_s1
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.lib.common import SST2_DEV


def sst2_dev() -> tuple[list[str], list[int]]:
    rows = [line.split("\t") for line in SST2_DEV.read_text(encoding="utf-8").splitlines()[1:]]
    return [row[0] for row in rows], [int(row[1]) for row in rows]


def main(run: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftkit.runs.folder import folder_size
    from peftkit.tasks.distillation.student import (
        accuracy,
        load_int8_student,
        quantize_int8,
        save_int8,
        texts_per_second,
    )

    texts, labels = sst2_dev()
    tok = AutoTokenizer.from_pretrained(run / "student")
    model = AutoModelForSequenceClassification.from_pretrained(run / "student").eval()
    out = {"load_avg": os.getloadavg()}
    models = {"float32": model}
    with tempfile.TemporaryDirectory() as tmp:
        for name, per_channel in (("int8_per_tensor", False), ("int8_per_channel", True)):
            save_int8(quantize_int8(model, per_channel=per_channel), model.config, tok, Path(tmp) / name)
            models[name] = load_int8_student(Path(tmp) / name)[1]
            out[name + "_MB"] = folder_size(Path(tmp) / name) / 1e6
        out["float32_MB"] = folder_size(run / "student") / 1e6
        for name, m in models.items():
            out[name + "_accuracy"] = accuracy(m, tok, texts, labels, 64)
        out["texts_per_second"] = texts_per_second(models, tok, texts[:256], 64, rounds=2)
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
