"""Speed and memory: `peftkit train` against the plain transformers.Trainer + PEFT tutorial setup, side by side.

    python -m benchmarks.speed.bench_classification [--quick] [--model smollm2|minilm] [--repeats 3]

Baseline (what a user following the Hugging Face text-classification tutorial writes, benchmarks/lib/worker.py
``run_hf_cls``): AutoModelForSequenceClassification + LoraConfig(task_type=SEQ_CLS), tokenizer(truncation=True),
DataCollatorWithPadding, Trainer with its defaults (fp32, random sampler). Same model, same training examples,
same LoRA (r, alpha, dropout, target modules), learning rate, batch size, epoch and number of optimizer steps as
the peftkit recipe. peftkit: ``peftkit train RECIPE`` with its defaults, nothing else set.

Both arms run every k-th batch of their own epoch order over the same training subset (``--stride``), so a few
steps carry the same mix of lengths as the whole epoch; the tables also give the padding of the whole epoch.
Quality (loss, dev accuracy) is measured by bench_quality.py on full epochs.

Writes benchmarks/results/classification_<model>.json and .md.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.lib.common import (
    MODELS,
    RESULTS,
    arg_threads_help,
    best_peak,
    cls_arm,
    command_line,
    env_lines,
    environment,
    fmt_mfu,
    fmt_ratio,
    interleaved,
    matmul_peak,
    median_mfu,
    median_of,
    peak_line,
    ratio_stats,
    write_results,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one pair, fewer steps (development)")
    p.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    p.add_argument("--examples", type=int, default=2000, help="training subset (the recipe's own size)")
    p.add_argument("--stride", type=int, default=None, help="run every k-th batch of the epoch (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="A/B pairs")
    p.add_argument("--threads", type=int, default=1, help=arg_threads_help())
    a = p.parse_args()
    started = time.time()
    stride = a.stride or (32 if a.quick else 8)
    repeats = 1 if a.quick else a.repeats
    recipe = MODELS[a.model]
    base_name, peft_name = f"{a.model}:hf-trainer-baseline", f"{a.model}:peftkit"
    arms = [cls_arm(base_name, "hf_cls", recipe, examples=a.examples, stride=stride, evaluate=False),
            cls_arm(peft_name, "peftkit_cls", recipe, examples=a.examples, stride=stride, evaluate=False)]
    env = environment(a.threads)
    peaks = [matmul_peak(a.threads)]  # the machine's peak, measured before and after the arms (MFU)
    results = interleaved(arms, repeats, threads=a.threads, log_dir=RESULTS / "logs")
    peaks.append(matmul_peak(a.threads))
    peak = best_peak(*peaks)
    base, peft = results[base_name], results[peft_name]
    speed = ratio_stats(base, peft, "epoch_useful_tokens_per_s_model")
    measured = ratio_stats(base, peft, "useful_tokens_per_s")
    steps = ratio_stats(base, peft, "steps_per_s")
    memory = ratio_stats(base, peft, "peak_rss_train_mb", higher_is_better=False)
    used = peft[0].get("training_arguments", {})
    levers = ", ".join(f"{k}={used[k]}" for k in ("train_sampling_strategy", "bf16", "torch_compile") if k in used)
    md = [f"# Classification speed: peftkit vs plain Trainer + PEFT ({a.model}, SST-2)", "",
          f"Command: `{command_line()}`", "",
          f"Recipe `{recipe}` ({a.examples} training examples, its batch size, learning rate and LoRA settings for "
          f"both arms). Each run trains every {stride}th batch of its own epoch order, from batch {stride // 2} "
          f"({base[0]['steps']} optimizer steps per run, the same in both arms). {repeats} A/B pair(s), alternating "
          "which arm goes first. Ratios: peftkit / baseline within a pair; median (min-max, n). Memory: baseline peak "
          "RSS / peftkit peak RSS (>1 means peftkit uses less). Absolute numbers are context only (shared CPU).", "",
          f"peftkit's defaults in these runs: {levers}.", "",
          "Whole-epoch figures are predicted from each run's own steps: step time = a + b x padded positions, "
          "fitted on the measured steps (after the first, whose warm-up is added once), summed over every batch of "
          "that run's real epoch order. Both arms train the same examples per epoch, so the ratio of whole-epoch "
          "useful tokens/s is the ratio of epoch times. bench_quality.py measures full epochs directly.", "",
          "| figure | baseline (median) | peftkit (median) | peftkit vs baseline |",
          "|---|---|---|---|",
          f"| **useful tokens/s, whole epoch (modelled)** | {median_of(base, 'epoch_useful_tokens_per_s_model')} | "
          f"{median_of(peft, 'epoch_useful_tokens_per_s_model')} | {fmt_ratio(speed)} |",
          f"| epoch time, modelled (s) | {median_of(base, 'epoch_time_model_s')} | "
          f"{median_of(peft, 'epoch_time_model_s')} | |",
          f"| useful tokens/s, measured steps only | {median_of(base, 'useful_tokens_per_s')} | "
          f"{median_of(peft, 'useful_tokens_per_s')} | {fmt_ratio(measured)} |",
          f"| optimizer steps/s | {median_of(base, 'steps_per_s', 4)} | {median_of(peft, 'steps_per_s', 4)} | "
          f"{fmt_ratio(steps)} |",
          "| model GFLOP/s, whole epoch (modelled) | "
          f"{fmt_mfu(median_mfu(base, peak, 'epoch_useful_tokens_per_s_model'))} | "
          f"{fmt_mfu(median_mfu(peft, peak, 'epoch_useful_tokens_per_s_model'))} | |",
          f"| model GFLOP/s, measured steps only | {fmt_mfu(median_mfu(base, peak))} | "
          f"{fmt_mfu(median_mfu(peft, peak))} | |",
          f"| padding fraction, measured batches | {median_of(base, 'padding_fraction', 3):.1%} | "
          f"{median_of(peft, 'padding_fraction', 3):.1%} | |",
          f"| padding fraction, whole epoch | {median_of(base, 'epoch_padding_fraction', 3):.1%} | "
          f"{median_of(peft, 'epoch_padding_fraction', 3):.1%} | |",
          f"| peak RSS during training (MB) | {median_of(base, 'peak_rss_train_mb', 0):.0f} | "
          f"{median_of(peft, 'peak_rss_train_mb', 0):.0f} | {fmt_ratio(memory)} less |",
          "", "Per pair (whole-epoch useful tokens/s ratio): " + ", ".join(f"{r:.2f}x" for r in speed["ratios"])
          + "; measured steps only: " + ", ".join(f"{r:.2f}x" for r in measured["ratios"]), "",
          peak_line(peaks), "", env_lines(env, started)]
    payload = {"benchmark": "classification_speed", "command": command_line(), "model": a.model, "recipe": recipe,
               "examples": a.examples, "stride": stride, "repeats": repeats, "environment": env,
               "matmul_peaks": peaks, "mfu": {"baseline": median_mfu(base, peak), "peftkit": median_mfu(peft, peak)},
               "ratios": {"epoch_useful_tokens_per_s_model": speed, "useful_tokens_per_s_measured": measured,
                          "steps_per_s": steps, "peak_rss_less": memory},
               "runs": results}
    write_results(f"classification_{a.model}" + ("_quick" if a.quick else ""), payload, "\n".join(md))


if __name__ == "__main__":
    main()
