"""Pad to a multiple of 8 or to the longest sequence? Paired, in one process, on the same real batches.

    python -m benchmarks.speed.bench_pad_multiple [--quick] [--batches 8] [--model smollm2|minilm]

Why a separate in-process benchmark: the effect is ~10-30% per step, smaller than the run-to-run noise of whole
runs on a shared CPU (bench_levers.py could not separate the two). Here every real training batch (length-grouped,
as peftkit draws them from the recipe's 2,000 SST-2 examples) is trained once padded to its longest sequence and
once padded to the next multiple of 8, in alternating order (ABBA), with peftkit's model, adapter and precision
(bf16 autocast on CPUs with native bf16). The ratio per batch is time(multiple of 8) / time(longest).
Writes benchmarks/results/pad_multiple_<model>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from benchmarks.lib.common import MODELS, arg_threads_help, command_line, env_lines, environment, write_results

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help=arg_threads_help())
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(a.threads)
    from transformers import DataCollatorWithPadding, set_seed

    from peftkit.data.classification import load_classification_data, tokenize_split
    from peftkit.model.adapter import attach_adapter
    from peftkit.model.base import load_classifier, load_tokenizer, local_path
    from peftkit.recipe import load_recipe
    from peftkit.trainer.speed import EpochSeededLengthGroupedSampler, cpu_has_native_bf16

    started = time.time()
    env = environment(a.threads)
    os.chdir(REPO)
    recipe = load_recipe(REPO / MODELS[a.model])
    set_seed(recipe.seed)
    data = load_classification_data(recipe.data, recipe.seed)
    source = local_path(recipe.model)
    tokenizer = load_tokenizer(recipe.model, source)
    model = load_classifier(recipe.model, recipe.quantization, data.label_names, tokenizer, source)
    model = attach_adapter(model, recipe.adapter, task_type="SEQ_CLS")
    train = tokenize_split(data.splits["train"], tokenizer, recipe.data.max_length, data.reports["train"])
    batch_size = recipe.train["per_device_train_batch_size"]
    order = list(EpochSeededLengthGroupedSampler([len(x) for x in train["input_ids"]], batch_size, recipe.seed))
    all_batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    n = 3 if a.quick else a.batches
    picked = all_batches[:: max(1, len(all_batches) // n)][:n]
    bf16 = cpu_has_native_bf16()
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    collators = {"longest": DataCollatorWithPadding(tokenizer),
                 "multiple of 8": DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)}

    def step(batch) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - t

    model.train()
    step(collators["longest"]([train[i] for i in picked[0]]))  # warm-up
    rows = []
    for b, idx in enumerate(picked):
        examples = [{k: train[i][k] for k in ("input_ids", "attention_mask", "labels")} for i in idx]
        batches = {k: c(examples) for k, c in collators.items()}
        times = {k: [] for k in collators}
        for k in (["longest", "multiple of 8", "multiple of 8", "longest"] if b % 2 == 0 else
                  ["multiple of 8", "longest", "longest", "multiple of 8"]):
            times[k].append(step(batches[k]))
        row = {"batch": b, "width_longest": batches["longest"]["input_ids"].shape[1],
               "width_multiple_of_8": batches["multiple of 8"]["input_ids"].shape[1],
               "s_longest": round(statistics.mean(times["longest"]), 3),
               "s_multiple_of_8": round(statistics.mean(times["multiple of 8"]), 3)}
        row["ratio"] = round(row["s_multiple_of_8"] / row["s_longest"], 3)
        rows.append(row)
        print(row, flush=True)
    ratios = [r["ratio"] for r in rows]
    equal = [r for r in rows if r["width_longest"] == r["width_multiple_of_8"]]
    md = [f"# Padding to a multiple of 8 vs to the longest sequence ({a.model}, CPU, paired in one process)", "",
          f"Command: `{command_line()}`", "",
          f"{len(rows)} real length-grouped training batches of {batch_size} (every k-th batch of the epoch), each "
          f"trained twice per padding (ABBA order); precision: {'bf16 autocast' if bf16 else 'fp32'}. "
          "Ratio = step time padded to a multiple of 8 / step time padded to the longest (>1: multiple of 8 is "
          "slower).",
          "", "| batch | width (longest) | width (multiple of 8) | s (longest) | s (multiple of 8) | ratio |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['width_longest']} | {r['width_multiple_of_8']} | {r['s_longest']} | "
           f"{r['s_multiple_of_8']} | {r['ratio']:.2f} |" for r in rows]
    md += ["", f"Median ratio **{statistics.median(ratios):.2f}x** (min {min(ratios):.2f}, max {max(ratios):.2f}, "
           f"n={len(ratios)}); {len(equal)} batch(es) had the same width either way.", "", env_lines(env, started)]
    payload = {"benchmark": "pad_multiple", "command": command_line(), "model": a.model, "bf16": bf16,
               "environment": env, "rows": rows,
               "median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios)}
    write_results(f"pad_multiple_{a.model}" + ("_quick" if a.quick else ""), payload, "\n".join(md))


if __name__ == "__main__":
    main()
