"""Multi-task, merging and transfer on the project's data: SmolLM2-135M generative LoRA on SST-2 and AG News.

    python -m benchmarks.quality.bench_multitask [--train-rows 400] [--eval-rows 300] [--transfer-rows 200]
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
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
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


def multi_recipe(a, out: Path) -> dict:
    """Both tasks in one shared adapter: the same rows as the single-task arms, proportional mixing (equal sizes:
    the same examples the two single-task adapters saw together, in one run)."""
    recipe = base_recipe()
    sst2, agnews = sst2_data(a.train_rows, a.eval_rows), agnews_data(a.train_rows, a.eval_rows)
    recipe.update(task="multitask", output_dir=str(out), overwrite_output_dir=True,
                  data={"format": "classification", "max_length": max(sst2["max_length"], agnews["max_length"])},
                  multitask={"mixing": "proportional"},
                  tasks=[{"name": "sst2", "data": sst2}, {"name": "agnews", "data": agnews}])
    recipe["train"] = dict(recipe["train"], report_to=[])
    return recipe


def stage_multi(a) -> dict:
    return train("multi", multi_recipe(a, WORK / "multi"))["tasks"]


def stage_merge(a) -> dict:
    """The two single-task adapters merged with each method (default weights 1 each, density 0.5, seed 42)."""
    out = {}
    for method in a.methods.split(","):
        folder = WORK / f"merged-{method}"
        if not (folder / "merge_report.json").is_file():
            print(f"merge {method} ({environment_line()})", flush=True)
            started = time.time()
            peftkit(["merge-adapters", str(WORK / "single-sst2"), str(WORK / "single-agnews"), "--method", method,
                     "--out", str(folder)], WORK / "logs" / f"merged-{method}.log")
            (folder / "bench_timing.json").write_text(json.dumps({"wall_s": round(time.time() - started, 1),
                                                                  "load_after": os.getloadavg()[0]}))
        out[method] = json.loads((folder / "merge_report.json").read_text())
    return out


def transfer_files(rows: int) -> Path:
    """The small sentiment task: the LAST `rows` rows of SST-2 train (the single-task arm samples 400 of 67,349
    rows at random, so about rows*400/67,349 sentences may be shared by chance), labels 0/1 named bad/good."""
    lines = (DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    path = WORK / "transfer-data" / f"sst2_last{rows}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([lines[0], *lines[-rows:]]) + "\n", encoding="utf-8")
    return path


def transfer_recipe(a, out: Path, init_from: Path | None) -> dict:
    recipe = base_recipe()
    data = sst2_data(None, a.eval_rows)
    data.update(train_file=str(transfer_files(a.transfer_rows)), label_names=["bad", "good"],
                prompt_template="Movie review: {text}\nVerdict:", label_words={"bad": " bad", "good": " good"})
    recipe.update(output_dir=str(out), data=data, overwrite_output_dir=True)
    recipe["adapter"] = dict(recipe["adapter"], init_from=str(init_from) if init_from else None)
    recipe["train"] = dict(recipe["train"], report_to=[])
    return recipe


def stage_transfer(a) -> dict:
    n = a.transfer_rows
    return {"from_sst2_adapter": train(f"transfer{n}-from-sst2",
                                       transfer_recipe(a, WORK / f"transfer{n}-from-sst2", WORK / "single-sst2")),
            "from_scratch": train(f"transfer{n}-scratch", transfer_recipe(a, WORK / f"transfer{n}-scratch", None))}


def timing(folder: Path) -> dict:
    path = folder / "bench_timing.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-rows", type=int, default=400, help="training rows per task (seeded subset)")
    p.add_argument("--eval-rows", type=int, default=300, help="eval rows per task (seeded subset of the eval file)")
    p.add_argument("--transfer-rows", type=int, default=200, help="training rows of the small sentiment task")
    p.add_argument("--stages", default="single,multi,merge,transfer")
    p.add_argument("--methods", default="ties,dare_ties,linear", help="merge-adapters methods")
    p.add_argument("--write", action="store_true", help="write benchmarks/results/multitask.json and .md from the "
                                                          "arms run (or reused) by this command")
    a = p.parse_args()
    stages = a.stages.split(",")
    results = {"single": stage_single(a) if "single" in stages else None,
               "multi": stage_multi(a) if "multi" in stages else None,
               "merge": stage_merge(a) if "merge" in stages else None,
               "transfer": stage_transfer(a) if "transfer" in stages else None}
    if a.write:
        write_results(a, results)


def acc(m: dict | None) -> str:
    return "not run" if not m else f"{m['accuracy']:.4f} / {m['macro_f1']:.4f}"


def write_results(a, results: dict) -> None:
    """multitask.json (every metric, timing and load) and multitask.md (the tables)."""
    single, multi, merge, transfer = (results[k] or {} for k in ("single", "multi", "merge", "transfer"))
    rows = ["| adapter | SST-2 acc / macro-F1 | AG News acc / macro-F1 | wall s (load after) |", "|---|---|---|---|"]
    for name, folder in (("sst2", "single-sst2"), ("agnews", "single-agnews")):
        t = timing(WORK / folder)
        cells = [acc(single.get(name)) if name == task else "-" for task in ("sst2", "agnews")]
        rows.append(f"| single-task {name} | {cells[0]} | {cells[1]} | {t.get('wall_s')} "
                    f"({t.get('load_after', 0):.1f}) |")
    if multi:
        t = timing(WORK / "multi")
        rows.append(f"| multi-task (one shared adapter) | {acc(multi.get('sst2'))} | {acc(multi.get('agnews'))} | "
                    f"{t.get('wall_s')} ({t.get('load_after', 0):.1f}) |")
    for method, report in merge.items():
        t, cells = timing(WORK / f"merged-{method}"), []
        for name in ("single-sst2", "single-agnews"):
            r = report["tasks"][name]
            cells.append(f"{r['merged_accuracy']:.4f} / {r['merged_macro_f1']:.4f} ({r['accuracy_change']:+.4f} acc)")
        rows.append(f"| merged {method} ({report['merge']}) | {cells[0]} | {cells[1]} | {t.get('wall_s')} "
                    f"({t.get('load_after', 0):.1f}) |")
    lines = ["# Multi-task, merging and transfer: SmolLM2-135M-Instruct, generative LoRA", "",
             f"Command: `python -m benchmarks.quality.bench_multitask --train-rows {a.train_rows} --eval-rows "
             f"{a.eval_rows} --transfer-rows {a.transfer_rows} --stages {a.stages} --methods {a.methods} --write`", "",
             f"{a.train_rows} training rows per task (seeded subset), 1 epoch, hyperparameters of "
             f"recipes/sst2/smollm2_lora_gen.yaml; {a.eval_rows} eval rows per task (seeded subset of SST-2 dev / "
             "AG News test, the same rows for every arm). Accuracy / macro-F1; merged rows give the change in "
             "accuracy against the single-task adapter of that task. Times are wall seconds of the whole "
             "command (train + eval) on a shared, heavily loaded 2-core CPU (load average after each arm in "
             f"brackets): not comparable between arms. Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{environment_line()}.", "", *rows, ""]
    if transfer:
        lines += ["## Transfer: a small sentiment task (last rows of SST-2 train, labels bad/good, another prompt)", "",
                  "| start | acc / macro-F1 on SST-2 dev rows asked the new way | wall s (load after) |",
                  "|---|---|---|"]
        for key, folder in (("from_scratch", f"transfer{a.transfer_rows}-scratch"),
                            ("from_sst2_adapter", f"transfer{a.transfer_rows}-from-sst2")):
            t = timing(WORK / folder)
            lines.append(f"| {key} ({a.transfer_rows} rows) | {acc(transfer.get(key))} | {t.get('wall_s')} "
                         f"({t.get('load_after', 0):.1f}) |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "multitask.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=1, default=str))
    (RESULTS / "multitask.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
