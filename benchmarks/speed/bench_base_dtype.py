"""Two levers of issue 18 side by side on the real `peftkit train` path: a bf16 frozen base, and 2 torch threads.

    python -m benchmarks.speed.bench_base_dtype [--examples 500] [--eval-examples 400] [--repeats 1] [--arms ...]

Arms (same recipe, same SST-2 subset, one full epoch, same seed, evaluated on the same dev rows):
  fp32-base     today's default: fp32 weights, bf16 autocast, 1 thread (1.00x)
  bf16-base     model.dtype=bfloat16: the frozen base stored in bf16; LoRA and head fp32 (adapter.trainable_dtype
                float32, the default), optimizer state fp32; autocast on as today
  bf16-base-bf16-head   as bf16-base, but the head trains in bf16 (adapter.trainable_dtype=model: before this option)
  fp32-base-2threads    today's default on 2 torch threads in one process
The matmul peak is measured on 1 and on 2 threads, before and after the arms; each arm's MFU is against the peak
on its own thread count. Writes benchmarks/results/levers_<name>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.lib.common import (
    MODELS,
    RESULTS,
    best_peak,
    cls_arm,
    command_line,
    environment,
    fmt_mfu,
    fmt_ratio,
    matmul_peak,
    median_mfu,
    median_of,
    peak_line,
    ratio_stats,
    run_worker,
    write_results,
)

# arm -> (recipe overrides, torch threads, what it is)
ARMS = {
    "fp32-base": ([], 1, "fp32 weights + bf16 autocast, 1 thread (today's default)"),
    "bf16-base": (["model.dtype=bfloat16"], 1, "base stored in bf16, LoRA + head + optimizer state fp32, autocast"),
    "bf16-base-bf16-head": (["model.dtype=bfloat16", "adapter.trainable_dtype=model"], 1,
                            "base in bf16, head trained in bf16 (LoRA fp32)"),
    "fp32-base-2threads": ([], 2, "today's default on 2 torch threads"),
}


def run_arms(arms: list[dict], threads: dict[str, int], repeats: int, after_round) -> dict[str, list[dict]]:
    """Each arm in a fresh process, rotating order per round (no arm always first), with its own thread count.

    ``after_round(results)`` writes the tables after every round, so a run stopped early keeps its finished rounds."""
    results = {arm["name"]: [] for arm in arms}
    for rnd in range(repeats):
        order = arms[rnd % len(arms):] + arms[: rnd % len(arms)]
        for arm in order:
            print(f"[round {rnd + 1}/{repeats}] {arm['name']} ({threads[arm['name']]} thread(s)) ...", flush=True)
            load_before = round(os.getloadavg()[0], 2)
            res = run_worker(arm, threads=threads[arm["name"]], log_dir=RESULTS / "logs")
            res.update(round=rnd, load_avg_before=load_before)
            results[arm["name"]].append(res)
            print(f"    train {res['train_s']:.1f} s, useful {res['useful_tokens_per_s']:.1f} tok/s, accuracy "
                  f"{res.get('accuracy')}, peak RSS {res['peak_rss_train_mb']:.0f} MB, load {res['load_avg_after']}",
                  flush=True)
        after_round(results)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    p.add_argument("--examples", type=int, default=500, help="SST-2 training subset, one full epoch")
    p.add_argument("--eval-examples", type=int, default=400, help="SST-2 dev rows scored after training")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS))
    p.add_argument("--stride", type=int, default=None,
                   help="train every k-th batch of the epoch only (speed and memory; no accuracy)")
    p.add_argument("--reference", default="fp32-base", help="the arm ratios are taken against")
    p.add_argument("--name", default="bf16_base_threads", help="results/levers_<name>.json/.md")
    a = p.parse_args()
    started = time.time()
    recipe = MODELS[a.model]
    names = [n for n in a.arms.split(",") if n]
    if a.reference not in names:
        p.error(f"--reference {a.reference} is not among --arms")
    arms = [cls_arm(n, "peftkit_cls", recipe, examples=a.examples, stride=a.stride, evaluate=not a.stride,
                    overrides=ARMS[n][0], eval_examples=a.eval_examples) for n in names]
    threads = {n: ARMS[n][1] for n in names}
    env = environment(1)
    peaks = {t: [matmul_peak(t)] for t in sorted(set(threads.values()))}
    run_arms(arms, threads, a.repeats, lambda results: report(a, names, threads, results, peaks, env, started))


def report(a, names: list[str], threads: dict[str, int], results: dict[str, list[dict]], peaks: dict, env: dict,
           started: float) -> None:
    """The tables from the rounds finished so far; the peaks are measured again at each write."""
    recipe, reference = MODELS[a.model], a.reference
    for t in peaks:
        peaks[t].append(matmul_peak(t))
    rounds = min(len(r) for r in results.values())
    results = {n: r[:rounds] for n, r in results.items()}
    ref = results[reference]
    rows = []
    for n in names:
        res = results[n]
        rows.append({"arm": n, "note": ARMS[n][2], "threads": threads[n],
                     "useful_tok_s_ratio": ratio_stats(ref, res, "useful_tokens_per_s"),
                     "peak_rss_mb": median_of(res, "peak_rss_train_mb", 0),
                     "peak_rss_ratio": ratio_stats(ref, res, "peak_rss_train_mb", higher_is_better=False),
                     "useful_tok_s": median_of(res, "useful_tokens_per_s", 1), "train_s": median_of(res, "train_s", 1),
                     "accuracy": [r.get("accuracy") for r in res], "eval_examples": res[0].get("eval_examples"),
                     "load_avg": [(r["load_avg_before"], r["load_avg_after"]) for r in res],
                     "mfu": median_mfu(res, best_peak(*peaks[threads[n]]))})
    md = [f"# Levers: bf16 frozen base, and 2 torch threads ({a.model}, SST-2, peftkit train path)", "",
          f"Command: `{command_line()}`", "",
          (f"Each arm trains every {a.stride}th batch of the same {a.examples}-example SST-2 epoch" if a.stride else
           f"Each arm trains one full epoch of the same {a.examples}-example SST-2 subset")
          + f" (recipe `{recipe}`, same seed) in a fresh process"
          + (", no evaluation. " if a.stride else f" and is scored on the same {rows[0]['eval_examples']} dev rows. ")
          + "Ratios are "
          f"against `{reference}` in the same round ({rounds} of {a.repeats} round(s) finished, rotating order). Times "
          "are under load (load averages per run below): the machine is shared, so the 2-thread figure is a lower "
          "bound.", "",
          f"| arm | what | threads | useful tok/s vs {reference} | peak RSS MB (vs {reference}) | dev accuracy | "
          "useful tok/s (abs.) | train s (abs.) | model GFLOP/s (MFU, peak on the arm's threads) | load before/after |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = ", ".join(f"{x:.4f}" for x in r["accuracy"] if x is not None) or "n/a"
        load = "; ".join(f"{b}/{e}" for b, e in r["load_avg"])
        md.append(f"| {r['arm']} | {r['note']} | {r['threads']} | {fmt_ratio(r['useful_tok_s_ratio'])} | "
                  f"{r['peak_rss_mb']:.0f} ({fmt_ratio(r['peak_rss_ratio'])} smaller) | {acc} | {r['useful_tok_s']} | "
                  f"{r['train_s']} | {fmt_mfu(r['mfu'])} | {load} |")
    md += [""] + [peak_line(peaks[t]) for t in sorted(peaks)]
    md += ["", f"Machine: {env['cpu']}, {env['cpu_count']} cores ({', '.join(env['cpu_bf16_flags'])}), shared with "
           f"other jobs (load average {env['load_avg_at_start'][0]} at start). torch {env['torch']}, transformers "
           f"{env['transformers']}, peft {env['peft']}, trl {env['trl']}. Measured {env['date']}, benchmark wall time "
           f"{time.time() - started:.0f} s."]
    payload = {"benchmark": "levers_bf16_base_threads", "command": command_line(), "model": a.model, "recipe": recipe,
               "examples": a.examples, "eval_examples": a.eval_examples, "repeats": a.repeats,
               "rounds_finished": rounds, "environment": env,
               "rows": rows, "matmul_peaks": {str(t): v for t, v in peaks.items()}, "runs": results}
    write_results(f"levers_{a.name}", payload, "\n".join(md))


if __name__ == "__main__":
    main()
