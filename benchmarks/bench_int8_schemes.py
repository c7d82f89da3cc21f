"""Per-tensor vs per-channel int8 of one saved float student (RUN/student), SST-2 dev, side by side in one process.

  python benchmarks/bench_int8_schemes.py runs/bench_small_data/sst2/runs/distill_n500_s1
"""
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

torch.set_num_threads(1)
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from peftkit.runs.folder import folder_size
from peftkit.tasks.distillation.student import accuracy, load_int8_student, quantize_int8, save_int8, texts_per_second

run = Path(sys.argv[1])
lines = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "dev.tsv".read_text().splitlines()[1:]
texts = [l.split("\t")[0] for l in lines]; labels = [int(l.split("\t")[1]) for l in lines]
tok = AutoTokenizer.from_pretrained(run / "student")
model = AutoModelForSequenceClassification.from_pretrained(run / "student").eval()
out = {"load_avg": os.getloadavg()}
models = {"float32": model}
with tempfile.TemporaryDirectory() as tmp:
    for name, pc in (("int8_per_tensor", False), ("int8_per_channel", True)):
        save_int8(quantize_int8(model, per_channel=pc), model.config, tok, Path(tmp) / name)
        models[name] = load_int8_student(Path(tmp) / name)[1]
        out[name + "_MB"] = folder_size(Path(tmp) / name) / 1e6
    out["float32_MB"] = folder_size(run / "student") / 1e6
    for name, m in models.items():
        out[name + "_accuracy"] = accuracy(m, tok, texts, labels, 64)
    out["texts_per_second"] = texts_per_second(models, tok, texts[:256], 64, rounds=2)
print(json.dumps(out, indent=1))
