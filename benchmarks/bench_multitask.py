"""Multi-task, merging and transfer on the project's data: SmolLM2-135M generative LoRA on SST-2 and AG News.

    python benchmarks/bench_multitask.py [--train-rows 400] [--eval-rows 300] [--transfer-rows 200]
                                         [--stages single,multi,merge,transfer] [--methods linear,ties,dare_ties]

Every arm is a real ``peftkit`` command (``train``, ``merge-adapters``, ``evaluate``) in its own process, with the
hyperparameters of recipes/sst2/smollm2_lora_gen.yaml (nothing tuned here, nothing chosen on an eval set):

- single: one generative LoRA adapter per task (N training rows each, seeded subset, 1 epoch);
- multi: one shared adapter trained on both tasks (N rows of each, proportional mixing), evaluated per task;
- merge: the two single-task adapters merged by ``peftkit merge-adapters`` with each method, evaluated per task;
- transfer: a small sentiment task built from a different slice of SST-2 train (the last rows of the file) with
  other label words and another prompt ("bad"/"good"), trained from the SST-2 adapter (``adapter.init_from``) and
  from scratch, both evaluated on SST-2 dev rows asked the new way.

Eval rows are a seeded subset of each task's eval file (SST-2 dev, AG News test), the same rows for every arm.
Run folders go to runs/bench-multitask/ (a finished arm with the same recipe is reused, so an interrupted
benchmark continues); results to benchmarks/results/multitask.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "runs" / "bench-multitask"
DATA = REPO.parent / "shared" / "data"
BASE_RECIPE = REPO / "recipes" / "sst2" / "smollm2_lora_gen.yaml"
AGNEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def base_recipe() -> dict:
    return yaml.safe_load(BASE_RECIPE.read_text())


def sst2_data(train_rows: int, eval_rows: int) -> dict:
    data = dict(base_recipe()["data"])
    data.update(train_file=str(DATA / "sst2" / "train.tsv"), eval_file=str(DATA / "sst2" / "dev.tsv"),
                max_train_samples=train_rows, max_eval_samples=eval_rows)
    return data


def agnews_data(train_rows: int, eval_rows: int) -> dict:
    # the prompt and label words are the label names, written before any run (nothing chosen on the test set)
    return dict(format="classification", train_file=str(DATA / "agnews" / "train_subset10k.tsv"),
                eval_file=str(DATA / "agnews" / "test.tsv"), has_header=False, column_names=["text", "label"],
                text_column="text", label_column="label", label_names=AGNEWS_LABELS,
                prompt_template="Article: {text}\nTopic:",
                label_words={name: f" {name}" for name in AGNEWS_LABELS},
                max_length=128,  # articles are ~40-80 tokens (SST-2 sentences fit in 64)
                max_train_samples=train_rows, max_eval_samples=eval_rows)


def single_recipe(name: str, data: dict, out: Path) -> dict:
    recipe = base_recipe()
    recipe.update(output_dir=str(out), data=data, overwrite_output_dir=True)
    recipe["train"] = dict(recipe["train"], report_to=[])
    return recipe


def environment_line() -> str:
    return f"load average {os.getloadavg()[0]:.2f} at {time.strftime('%H:%M:%S')}"


def peftkit(args: list[str], log: Path) -> None:
    """One peftkit command in its own process, this checkout's code first, output to a log file."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n===== {environment_line()}: peftkit {' '.join(args)} =====\n")
        handle.flush()
        proc = subprocess.run([sys.executable, "-m", "peftkit", *args], cwd=REPO, env=env, stdout=handle,
                              stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"peftkit {' '.join(args)} failed (exit {proc.returncode}); log {log}:\n{tail}")


def train(name: str, recipe: dict) -> dict:
    """Train one arm unless a finished run of the very same recipe is there; returns its timing and metrics."""
    out = Path(recipe["output_dir"])
    recipe_file = WORK / "recipes" / f"{name}.yaml"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    text = f"# python -m peftkit train {recipe_file.relative_to(REPO)}\n" + yaml.safe_dump(recipe, sort_keys=False)
    done = out / "metrics.json"
    if done.is_file() and recipe_file.is_file() and recipe_file.read_text() == text:
        print(f"{name}: reusing the finished run in {out}", flush=True)
    else:
        recipe_file.write_text(text)
        print(f"{name}: training ({environment_line()})", flush=True)
        started = time.time()
        peftkit(["train", str(recipe_file)], WORK / "logs" / f"{name}.log")
        (out / "bench_timing.json").write_text(json.dumps({"wall_s": round(time.time() - started, 1),
                                                           "load_after": os.getloadavg()[0]}))
    return json.loads(done.read_text())


def stage_single(a) -> dict:
    return {"sst2": train("single-sst2", single_recipe("sst2", sst2_data(a.train_rows, a.eval_rows),
                                                        WORK / "single-sst2")),
            "agnews": train("single-agnews", single_recipe("agnews", agnews_data(a.train_rows, a.eval_rows),
                                                            WORK / "single-agnews"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-rows", type=int, default=400, help="training rows per task (seeded subset)")
    p.add_argument("--eval-rows", type=int, default=300, help="eval rows per task (seeded subset of the eval file)")
    p.add_argument("--transfer-rows", type=int, default=200, help="training rows of the small sentiment task")
    p.add_argument("--stages", default="single,multi,merge,transfer")
    p.add_argument("--methods", default="linear,ties,dare_ties", help="merge-adapters methods")
    a = p.parse_args()
    stages = a.stages.split(",")
    results = {"single": stage_single(a) if "single" in stages else None}
    print(json.dumps({k: v and {t: m.get("accuracy") for t, m in v.items()} for k, v in results.items()}))


if __name__ == "__main__":
    main()
