"""Imbalanced AG News: macro F1 on the official test set with and without class weighting (imbalance.strategy).

Builds the imbalanced variant of ``../shared/data/agnews/train_subset10k.tsv`` (two classes, Business and Sci/Tech by
default, each keeping a seeded ``--keep`` share of its rows; the others whole), then trains
``recipes/agnews/minilm_lora_cls.yaml`` on it once per strategy with the real ``peftkit train`` command (each in
its own process under ``/usr/bin/time -v`` for peak RSS) and evaluates on the official AG News test file
(``test.tsv``; ``--eval-samples`` rows drawn by peftkit's seeded subsample, the same rows for every arm; the test
file chooses nothing: every hyperparameter is the shipped recipe's).

    OMP_NUM_THREADS=1 python -m benchmarks.quality.bench_imbalance                      # none vs class_weights (auto)
    OMP_NUM_THREADS=1 python -m benchmarks.quality.bench_imbalance --strategies none auto balanced_sampling

Writes benchmarks/results/imbalance_agnews.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.lib.common import SHARED_DATA, local_data

REPO = Path(__file__).resolve().parents[2]
AGNEWS = SHARED_DATA / "agnews"
RESULTS = REPO / "benchmarks" / "results"
RECIPE = REPO / "recipes" / "agnews" / "minilm_lora_cls.yaml"


def build_imbalanced(source: Path, out: Path, rare: list[str], keep: float, seed: int) -> dict[str, int]:
    """Keep every row of the other classes and a seeded `keep` share of each class in `rare` (file order kept)."""
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_label: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        by_label.setdefault(line.rsplit("\t", 1)[1], []).append(i)
    rng = random.Random(seed)
    kept = set(range(len(lines)))
    for label in rare:
        rows = by_label[label]
        kept -= set(rows) - set(rng.sample(rows, max(1, round(len(rows) * keep))))
    chosen = [lines[i] for i in sorted(kept)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return dict(Counter(line.rsplit("\t", 1)[1] for line in chosen))


def train(strategy: str, train_file: Path, out_dir: Path, eval_samples: int, extra: list[str]) -> dict:
    overrides = [*local_data(RECIPE), f"output_dir={out_dir}", "overwrite_output_dir=true",
                 f"data.train_file={train_file}", "data.max_train_samples=null",
                 f"data.max_eval_samples={eval_samples}", f"imbalance.strategy={strategy}",
                 "train.report_to=[]", "train.save_strategy=\"no\"", *extra]
    command = ["python", "-m", "peftkit", "train", str(RECIPE.relative_to(REPO)), *overrides]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    started = time.time()
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, *command[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{strategy} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    metrics = json.loads((out_dir / "metrics.json").read_text())
    summary = json.loads((out_dir / "train_summary.json").read_text())
    line = next((out for out in proc.stdout.splitlines() if out.startswith("imbalance:")), "")
    return {"strategy": strategy, "imbalance_line": line, "command": " ".join(command),
            "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
            "never_predicted": metrics.get("never_predicted", []), "eval_examples": metrics["num_examples"],
            "wall_seconds": round(wall, 1),
            "train_seconds": summary.get("train_runtime_s", summary.get("train_seconds")),
            "peak_rss_gib": round(peak_kib / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=["none", "auto"])
    parser.add_argument("--rare", nargs="+", default=["Business", "Sci/Tech"])
    parser.add_argument("--keep", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-samples", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-imbalance")
    parser.add_argument("--name", default="imbalance_agnews")
    parser.add_argument("overrides", nargs="*", help="extra peftkit overrides for every arm")
    args = parser.parse_args()
    train_file = args.work / "agnews_imbalanced.tsv"
    counts = build_imbalanced(AGNEWS / "train_subset10k.tsv", train_file, args.rare, args.keep, args.seed)
    print(f"imbalanced AG News: {counts} -> {train_file}", flush=True)
    rows = []
    for strategy in args.strategies:
        row = train(strategy, train_file, args.work / strategy, args.eval_samples, args.overrides)
        print(json.dumps(row), flush=True)
        rows.append(row)
    meta = {"train_counts": counts, "rare": args.rare, "keep": args.keep, "seed": args.seed,
            "eval": f"AG News official test.tsv, {args.eval_samples} rows (peftkit's seeded subsample, seed 42)",
            "recipe": str(RECIPE.relative_to(REPO)), "load": os.getloadavg(), "cpus": os.cpu_count(),
            "builder": f"python -m benchmarks.quality.bench_imbalance --keep {args.keep} --seed {args.seed} "
                       f"--rare {' '.join(args.rare)}"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    labels = list(rows[0]["per_class_f1"])
    md = [f"# Imbalanced AG News ({', '.join(f'{k} {v}' for k, v in counts.items())} training rows)", "",
          f"Recipe `{meta['recipe']}` (all-MiniLM-L6-v2 + LoRA r16, 1 epoch), evaluated on {meta['eval']}.", "",
          "| imbalance.strategy | accuracy | macro F1 | " + " | ".join(f"F1 {label}" for label in labels)
          + " | never predicted | wall | peak RSS |",
          "|---|---|---|" + "---|" * len(labels) + "---|---|---|"]
    for r in rows:
        md.append(f"| {r['strategy']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
                  + " | ".join(f"{r['per_class_f1'][label]:.3f}" for label in labels)
                  + f" | {', '.join(r['never_predicted']) or '-'} | {r['wall_seconds']:.0f} s"
                  + f" | {r['peak_rss_gib']} GiB |")
    md += ["", *[f"- `{r['strategy']}`: {r['imbalance_line']}" for r in rows], "",
           "Commands (from the repository root):", "", *[f"    {r['command']}" for r in rows], ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
