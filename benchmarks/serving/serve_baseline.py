"""The server a user writes without `peftkit serve` (the baseline of bench_serve.py).

FastAPI + uvicorn around `transformers.pipeline("text-classification")`, called once per request, one model per
process: the base model with the run's adapter loaded through PEFT and merged (merging makes each forward pass
cheaper, which favours this baseline). `def` endpoints run on FastAPI's thread pool, as such servers usually do.

    python -m benchmarks.serving.serve_baseline RUN_DIR --port 8001     # 127.0.0.1 only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import uvicorn
import yaml
from fastapi import FastAPI
from peft import PeftModel
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline


def base_folder(name: str) -> str:
    """The base model's folder (packaged models resolve to the same files peftkit loads)."""
    if name.startswith("packaged:"):
        from peftkit.model.packaged import resolve_model_path

        return resolve_model_path(name)
    return name


def build_pipeline(run: Path):
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    id2label = {int(k): v for k, v in json.loads((run / "label_map.json").read_text())["id2label"].items()}
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    base = AutoModelForSequenceClassification.from_pretrained(
        base_folder(recipe["model"]["name_or_path"]), num_labels=len(id2label), id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, use_safetensors=True)
    model = PeftModel.from_pretrained(base, run / "adapter").merge_and_unload().eval()
    return pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None, truncation=True,
                    max_length=recipe["data"]["max_length"])


class Request(BaseModel):
    text: str


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    classifier = build_pipeline(Path(args.run_dir))
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/classify")
    def classify(request: Request):
        scores = classifier(request.text)
        scores = scores[0] if scores and isinstance(scores[0], list) else scores  # one text -> [[...]] here
        return {"label": max(scores, key=lambda s: s["score"])["label"],
                "probabilities": {s["label"]: s["score"] for s in scores}}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
