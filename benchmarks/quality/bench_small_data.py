"""Small labelled data: plain training vs edit augmentation, and distillation of a SmolLM2 teacher into MiniLM.

One command; flags choose datasets, sizes, seeds and arms. Every run is the real CLI (`python -m peftkit ...` from
this checkout) in its own process, with the shipped recipe's hyperparameters (no tuning on the dev set, which is
evaluated once per run, after training).

Arms
  plain       MiniLM (recipes/sst2/minilm_lora_cls.yaml or recipes/agnews/minilm_lora_cls.yaml) on N rows
  edit        the same N rows + `peftkit augment` edits (1 copy per row; dedup and eval-leak filter on)
  dup         control for edit: the same N rows, each written twice (as many optimizer steps as edit, no new text)
  teacher     SmolLM2 generative LoRA (recipes/sst2/smollm2_lora_gen.yaml) on the same N rows (first seed only)
  distill     MiniLM distilled from that teacher (task: distillation, T=2, alpha=0.5, int8 export on)
  distill_unl the same + UNLABELLED other train rows, their labels dropped (--unlabelled)
  speed       teacher vs float vs int8 student texts/s on the dev texts, side by side in this process

Row subsets: for size N and seed S, N rows drawn with random.Random(S) from the train file (the same rows for every
arm of that seed); training seed S too. Unlabelled rows: drawn from the rows not in that subset.

  python -m benchmarks.quality.bench_small_data --dataset sst2 --sizes 200 500 --seeds 1 2 3 --arms plain edit
  python -m benchmarks.quality.bench_small_data --dataset sst2 --sizes 500 --seeds 1 \\
      --arms teacher distill distill_unl speed
Results: benchmarks/results/small_data_<dataset>.{json,md} (runs accumulate: a finished run is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.lib.common import REPO, SHARED_DATA, command_line, environment, local_data, write_results

DATASETS = {
    "sst2": {"train": SHARED_DATA / "sst2" / "train.tsv", "eval": SHARED_DATA / "sst2" / "dev.tsv",
             "recipe": "recipes/sst2/minilm_lora_cls.yaml", "teacher": "recipes/sst2/smollm2_lora_gen.yaml",
             "header": True},
    "agnews": {"train": SHARED_DATA / "agnews" / "train_subset10k.tsv", "eval": SHARED_DATA / "agnews" / "test.tsv",
               "recipe": "recipes/agnews/minilm_lora_cls.yaml", "teacher": None, "header": False},
}
ARMS = ("plain", "edit", "dup", "teacher", "distill", "distill_unl", "speed")


def subset_files(work: Path, ds: dict, size: int, seed: int, unlabelled: int) -> tuple[Path, Path]:
    lines = ds["train"].read_text(encoding="utf-8").splitlines()
    header, rows = (lines[0], lines[1:]) if ds["header"] else (None, lines)
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    picked, rest = order[:size], order[size:size + unlabelled]
    out = work / "data" / f"train_n{size}_s{seed}.tsv"
    unl = work / "data" / f"unlabelled_n{size}_s{seed}.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(([header] if header else []) + [rows[i] for i in picked]) + "\n", encoding="utf-8")
    text_col = header.split("\t")[0] if header else "text"
    unl.write_text("\n".join([text_col] + [rows[i].split("\t")[0] for i in rest]) + "\n", encoding="utf-8")
    return out, unl


def peftkit(*args: str, log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    started = time.time()
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "peftkit", *args], cwd=REPO, env=env, stdout=f,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"peftkit {' '.join(args)} failed ({code}); see {log}")
    return time.time() - started


REPORT_ONLY = False
"""--report-only: tabulate the finished runs, train nothing (arms without a finished run are left out)."""


def train(name: str, recipe: str, overrides: list[str], work: Path) -> dict:
    run_dir = work / "runs" / name
    metrics = run_dir / "metrics.json"
    if REPORT_ONLY and not (run_dir / "bench_timing.json").is_file():
        return {}
    if not metrics.is_file():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()[0]
        seconds = peftkit("train", recipe, f"output_dir={run_dir}", "overwrite_output_dir=true",
                          "train.report_to=[]", *overrides, log=work / "runs" / f"{name}.log")
        (run_dir / "bench_timing.json").write_text(json.dumps({"wall_s": seconds, "load_avg_1m_at_start": load}))
    result = json.loads(metrics.read_text())
    timing = json.loads((run_dir / "bench_timing.json").read_text())
    export = run_dir / "export_report.json"
    print(f"{name}: accuracy {result['accuracy']:.4f} ({timing['wall_s']:.0f} s)", flush=True)
    return {"arm": name, "accuracy": result["accuracy"], "macro_f1": result["macro_f1"], **timing,
            "export": json.loads(export.read_text()) if export.is_file() else None, "run_dir": str(run_dir)}


def data_overrides(ds: dict, train_file: Path, seed: int) -> list[str]:
    extra = [] if ds["header"] else ["data.has_header=true", "data.column_names=null"]
    return [*local_data(ds["recipe"]), f"data.train_file={train_file}", "data.max_train_samples=null",
            f"train.seed={seed}", f"train.data_seed={seed}", *extra]


def augmented(ds: dict, train_file: Path, seed: int, work: Path) -> tuple[Path, dict]:
    out = train_file.with_name(train_file.stem + ".edit.tsv")
    if not out.is_file():
        peftkit("augment", ds["recipe"], *data_overrides(ds, train_file, seed), "augment.methods=[edit]",
                "augment.copies=1", f"augment.seed={seed}", "--out", str(out),
                log=work / "data" / f"{out.stem}.log")
    return out, json.loads(Path(f"{out}.report.json").read_text())


def doubled(train_file: Path, ds: dict) -> Path:
    lines = train_file.read_text(encoding="utf-8").splitlines()
    header, rows = (lines[:1], lines[1:]) if ds["header"] else ([], lines)
    out = train_file.with_name(train_file.stem + ".dup.tsv")
    out.write_text("\n".join(header + rows + rows) + "\n", encoding="utf-8")
    return out


def speed(work: Path, ds: dict, size: int, seed: int) -> dict:
    """Teacher vs float vs int8 student, texts/s on the dev texts, alternating, in this process (1 thread)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftkit.inference.teacher import load_teacher, softmax_in_batches
    from peftkit.runs.read import load_run
    from peftkit.tasks.distillation.student import load_int8_student

    torch.set_num_threads(1)
    texts = [line.split("\t")[0] for line in ds["eval"].read_text(encoding="utf-8").splitlines()[1:]][:256]
    teacher_dir, teacher_recipe = load_run(work / "runs" / f"teacher_n{size}_s{seed}")
    student = work / "runs" / f"distill_unl_n{size}_s{seed}"
    if not student.is_dir():
        student = work / "runs" / f"distill_n{size}_s{seed}"
    tok = AutoTokenizer.from_pretrained(student / "student")
    float_model = AutoModelForSequenceClassification.from_pretrained(student / "student").eval()
    _, int8 = load_int8_student(student / "student-int8")
    score_teacher = load_teacher(teacher_dir, teacher_recipe)
    arms = {"teacher": lambda: score_teacher(texts),
            "student_float32": lambda: softmax_in_batches(float_model, tok, texts, 64, 32),
            "student_int8": lambda: softmax_in_batches(int8, tok, texts, 64, 32)}
    best = {k: 0.0 for k in arms}
    load = os.getloadavg()[0]
    for _ in range(2):
        for name, fn in arms.items():
            started = time.perf_counter()
            fn()
            best[name] = max(best[name], len(texts) / (time.perf_counter() - started))
    return {"texts": len(texts), "texts_per_second_best_of_2": best, "load_avg_1m_at_start": load,
            "student": str(student), "note": "models loaded once; batch 32; best of 2 alternating rounds"}


def summarise(results: list[dict]) -> dict:
    acc = [r["accuracy"] for r in results]
    return {"n": len(acc), "mean": statistics.mean(acc), "min": min(acc), "max": max(acc),
            "stdev": statistics.stdev(acc) if len(acc) > 1 else 0.0}


def run_arms(args, ds: dict, work: Path) -> dict:
    out: dict = {"runs": [], "augment": [], "speed": None}
    for size in args.sizes:
        for seed in args.seeds:
            train_file, unl = subset_files(work, ds, size, seed, args.unlabelled)
            base = data_overrides(ds, train_file, seed)
            if "plain" in args.arms:
                out["runs"].append(train(f"plain_n{size}_s{seed}", ds["recipe"], base, work)
                                   | {"size": size, "seed": seed})
            if "edit" in args.arms:
                aug_file, report = augmented(ds, train_file, seed, work)
                out["augment"].append({"size": size, "seed": seed, **report})
                out["runs"].append(train(f"edit_n{size}_s{seed}", ds["recipe"], data_overrides(ds, aug_file, seed),
                                         work) | {"size": size, "seed": seed})
            if "dup" in args.arms:
                out["runs"].append(train(f"dup_n{size}_s{seed}", ds["recipe"],
                                         data_overrides(ds, doubled(train_file, ds), seed), work)
                                   | {"size": size, "seed": seed})
            if seed != args.seeds[0] or ds["teacher"] is None:
                continue  # the SmolLM2 teacher and the distilled students: first seed only (CPU time)
            teacher_dir = work / "runs" / f"teacher_n{size}_s{seed}"
            if "teacher" in args.arms:
                out["runs"].append(train(f"teacher_n{size}_s{seed}", ds["teacher"], base, work)
                                   | {"size": size, "seed": seed})
            distill = ["task=distillation", f"distill.teacher={teacher_dir}"]
            if "distill" in args.arms:
                out["runs"].append(train(f"distill_n{size}_s{seed}", ds["recipe"], base + distill, work)
                                   | {"size": size, "seed": seed})
            if "distill_unl" in args.arms:
                out["runs"].append(train(f"distill_unl_n{size}_s{seed}", ds["recipe"],
                                         base + distill + [f"distill.unlabelled_file={unl}"], work)
                                   | {"size": size, "seed": seed, "unlabelled": args.unlabelled})
            if "speed" in args.arms:
                out["speed"] = speed(work, ds, size, seed)
    return out


def paired(runs: list[dict]) -> list[str]:
    by = {(r["size"], r["seed"], r["arm"].split("_n")[0]): r["accuracy"] for r in runs}
    lines = []
    for size in sorted({k[0] for k in by}):
        for a, b in (("edit", "plain"), ("dup", "plain"), ("edit", "dup")):
            diffs = [100 * (by[(size, s, a)] - by[(size, s, b)]) for s in sorted({k[1] for k in by})
                     if (size, s, a) in by and (size, s, b) in by]
            if diffs:
                lines.append(f"- N={size}: {a} - {b}: " + ", ".join(f"{d:+.2f}" for d in diffs)
                             + f" (mean {statistics.mean(diffs):+.2f})")
    return lines


def markdown(args, out: dict, env: dict, started: float) -> str:
    lines = [f"# Small labelled data: augmentation and distillation ({args.dataset})", "",
             f"Command: `{command_line()}`", "",
             "Dev accuracy (evaluated once per run, after training; no choice made on it). Hyperparameters: the "
             "shipped recipes unchanged. Seeds: each seed draws its own N training rows and seeds training; "
             "plain and edit share the rows of a seed. mean (min-max) over seeds.", "",
             "| N | arm | seeds | dev accuracy mean | min-max | stdev | wall s per run (under load) |",
             "|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in out["runs"]:
        groups.setdefault((r["size"], r["arm"].split("_n")[0]), []).append(r)
    for (size, arm), runs in sorted(groups.items()):
        s = summarise(runs)
        wall = statistics.mean(r["wall_s"] for r in runs)
        lines.append(f"| {size} | {arm} | {s['n']} | {s['mean']:.4f} | {s['min']:.4f}-{s['max']:.4f} | "
                     f"{s['stdev']:.4f} | {wall:.0f} |")
    for a in out["augment"]:
        c = a["per_method"].get("edit", {})
        lines.append(f"\nedit augment n{a['size']} s{a['seed']}: generated {c.get('generated')}, kept {c.get('kept')}, "
                     f"dropped {({k: v for k, v in c.items() if k.startswith('dropped')})}; original rows equal to "
                     f"an eval sentence: {a.get('original_rows_equal_to_eval')}")
    lines += ["", "Paired by seed (same rows), dev accuracy points:"] + paired(out["runs"])
    exports = [r for r in out["runs"] if r.get("export")]
    if exports:
        lines += ["", "| student | float32 acc | int8 acc | float32 MB | int8 MB | float32 texts/s | int8 texts/s |",
                  "|---|---|---|---|---|---|---|"]
        for r in exports:
            e = r["export"]
            lines.append(f"| {r['arm']} | {e['float32']['accuracy']:.4f} | {e['int8']['accuracy']:.4f} | "
                         f"{e['float32']['size_bytes'] / 1e6:.1f} | {e['int8']['size_bytes'] / 1e6:.1f} | "
                         f"{e['float32']['texts_per_second']:.0f} | {e['int8']['texts_per_second']:.0f} |")
    if out["speed"]:
        sp = out["speed"]
        t = sp["texts_per_second_best_of_2"]
        lines += ["", f"Inference speed, {sp['texts']} dev texts, side by side in one process (1 thread, load "
                      f"{sp['load_avg_1m_at_start']:.2f}): " + ", ".join(f"{k} {v:.1f} texts/s" for k, v in t.items())
                  + f"; float student / teacher {t['student_float32'] / t['teacher']:.1f}x, int8 student / teacher "
                    f"{t['student_int8'] / t['teacher']:.1f}x"]
    lines += ["", f"Machine: {env['cpu']}, {env['cpu_count']} cores, shared with other jobs (load average "
                  f"{env['load_avg_at_start']} at start; times are under load). torch {env['torch']}, transformers "
                  f"{env['transformers']}, peft {env['peft']}. {env['date']}, wall {time.time() - started:.0f} s."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="sst2")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=["plain", "edit"])
    parser.add_argument("--unlabelled", type=int, default=2000, help="unlabelled rows for distill_unl")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench_small_data"))
    parser.add_argument("--report-only", action="store_true", help="tabulate finished runs; train nothing")
    parser.add_argument("--name", default=None, help="results/small_data_NAME (default: the dataset)")
    args = parser.parse_args()
    started = time.time()
    env = environment(1)
    ds = DATASETS[args.dataset]
    global REPORT_ONLY
    REPORT_ONLY = args.report_only
    out = run_arms(args, ds, Path(args.work) / args.dataset)
    out["runs"] = [r for r in out["runs"] if "arm" in r]
    payload = {"command": command_line(), "args": vars(args), "environment": env, **out}
    write_results(f"small_data_{args.name or args.dataset}", payload, markdown(args, out, env, started))


if __name__ == "__main__":
    main()
