"""How training cost grows: time per epoch as the training set grows and as max_length grows.

    python -m benchmarks.speed.bench_scaling [--quick] [--sizes 1000,4000,16000] [--lengths 64,128,256]

Model: all-MiniLM-L6-v2 (22.7M) + LoRA, because SmolLM2-135M is ~10x slower per token on this shared CPU and the
16k-example and 256-token points would not fit the time budget; bench_classification.py gives SmolLM2's epoch time.
Both arms at every point: the plain Trainer + PEFT tutorial baseline and `peftkit train` defaults.

* Training-set size: SST-2, recipes/sst2/minilm_lora_cls.yaml (max_length 64), N examples.
* Max sequence length: AG News (recipes/agnews/minilm_lora_cls.yaml, 4,000 news snippets, longer texts), max_length
  64 / 128 / 256; longer texts are truncated at max_length by both arms.

Time per epoch is MODELLED from measured steps: each run trains about --steps of its real epoch's batches, picked
evenly along the batch sizes (short and long batches alike: a length-grouped epoch keeps its few long examples
in a few batches, which plain striding can miss), fits step time = a + b x padded positions, and sums that over
every batch of its real epoch order (the first step's warm-up added once). Model loading and tokenization are
not included. One run per arm and point, A/B order alternating.
Writes benchmarks/results/scaling.json and .md.
"""

from __future__ import annotations

import argparse
import math
import time

from benchmarks.lib.common import (
    RESULTS,
    arg_threads_help,
    cls_arm,
    command_line,
    env_lines,
    environment,
    run_worker,
    write_results,
)

SST2_RECIPE = "recipes/sst2/minilm_lora_cls.yaml"
AGNEWS_RECIPE = "recipes/agnews/minilm_lora_cls.yaml"
BATCH = 32  # both MiniLM recipes


def point(kind: str, label: str, recipe: str, examples: int, steps: int, overrides: list[str]) -> dict:
    batches = math.ceil(examples / BATCH)
    stride = max(1, batches // steps)
    return cls_arm(f"scaling:{label}:{kind}", "hf_cls" if kind == "baseline" else "peftkit_cls", recipe,
                   examples=examples, stride=stride, evaluate=False, overrides=overrides, stride_by_size=True)


def epoch_s(res: dict) -> float:
    """The modelled epoch time; the plain extrapolation only if the fit was impossible (too few steps)."""
    return res.get("epoch_time_model_s") or res["epoch_time_estimate_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="two small points, 4 steps each (development)")
    p.add_argument("--sizes", default="1000,4000,16000")
    p.add_argument("--lengths", default="64,128,256")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps measured per run")
    p.add_argument("--threads", type=int, default=1, help=arg_threads_help())
    a = p.parse_args()
    started = time.time()
    sizes = [1000] if a.quick else [int(x) for x in a.sizes.split(",") if x]
    lengths = [64] if a.quick else [int(x) for x in a.lengths.split(",") if x]
    steps = 4 if a.quick else a.steps
    points = []
    for n in sizes:
        points.append(("size", n, f"sst2-n{n}", SST2_RECIPE, n, []))
    for length in lengths:
        points.append(("length", length, f"agnews-len{length}", AGNEWS_RECIPE, 4000, [f"data.max_length={length}"]))
    env = environment(a.threads)
    table: list[dict] = []
    for i, (axis, value, label, recipe, n, overrides) in enumerate(points):
        arms = [point("baseline", label, recipe, n, steps, overrides),
                point("peftkit", label, recipe, n, steps, overrides)]
        if i % 2:
            arms.reverse()  # alternate which arm goes first
        row = {"axis": axis, "value": value, "examples": n, "recipe": recipe}
        for arm in arms:
            print(f"{arm['name']} ...", flush=True)
            res = run_worker(arm, threads=a.threads, log_dir=RESULTS / "logs")
            kind = "baseline" if arm["kind"] == "hf_cls" else "peftkit"
            row[kind] = res
            print(f"    epoch ~{epoch_s(res)} s, padding {res['epoch_padding_fraction']:.1%}", flush=True)
        row["epoch_ratio"] = round(epoch_s(row["baseline"]) / epoch_s(row["peftkit"]), 2)
        table.append(row)

    def lines(axis: str, header: str) -> list[str]:
        out = [f"| {header} | batches/epoch | baseline: epoch s (model) | baseline padding | peftkit: epoch s (model) "
               "| peftkit padding | peftkit speed-up | useful tokens/example |",
               "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in table if r["axis"] == axis):
            b, k = r["baseline"], r["peftkit"]
            out.append(f"| {r['value']} | {b['epoch_batches']} | {epoch_s(b)} | "
                       f"{b['epoch_padding_fraction']:.1%} | {epoch_s(k)} | "
                       f"{k['epoch_padding_fraction']:.1%} | {r['epoch_ratio']:.2f}x (n=1) | "
                       f"{k['epoch_useful_tokens'] / r['examples']:.1f} |")
        return out

    md = ["# Scaling: time per epoch vs training-set size and max_length (MiniLM-L6 + LoRA)", "",
          f"Command: `{command_line()}`", "",
          f"Epoch times are modelled from ~{steps} measured optimizer steps per run (batches picked evenly along "
          "the sizes of the real epoch's batches; step time = a + b x padded positions, summed over the whole epoch) "
          "and are absolute seconds on a shared 2-core CPU with 1 torch thread: read them for how cost grows "
          "(ratios between rows), not as a promise. One run per arm and point (n=1): the speed-up column is noisier "
          "than the repeated A/B benchmarks.", "",
          "## Training-set size (SST-2, max_length 64, batch 32)", "", *lines("size", "examples"), "",
          "## Max sequence length (AG News, 4,000 examples, batch 32)", "", *lines("length", "max_length"), "",
          env_lines(env, started)]
    payload = {"benchmark": "scaling", "command": command_line(), "steps": steps, "environment": env, "rows": table}
    write_results("scaling" + ("_quick" if a.quick else ""), payload, "\n".join(md))


if __name__ == "__main__":
    main()
