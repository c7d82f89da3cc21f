"""Quality next to speed: full training epochs of the baseline and of peftkit, then SST-2 dev accuracy.

    python -m benchmarks.quality.bench_quality [--quick] [--model smollm2|minilm] [--examples N] [--repeats 1]

Same two arms as bench_classification.py (plain Trainer + PEFT tutorial setup vs `peftkit train` defaults), but
every batch of the epoch is trained (no striding) and each arm then predicts the SST-2 dev set (872 sentences):
final training loss (mean over the epoch, as Trainer reports it), dev accuracy, and the speed of the full epoch
as a further A/B sample. So speed is never bought with quality.

Writes benchmarks/results/quality_<model>.json and .md.
"""

from __future__ import annotations

import argparse
import math
import time

from benchmarks.lib.common import (
    MODELS,
    RESULTS,
    arg_threads_help,
    cls_arm,
    command_line,
    env_lines,
    environment,
    fmt_ratio,
    interleaved,
    median_of,
    ratio_stats,
    write_results,
)

DEFAULT_EXAMPLES = {"smollm2": 1000, "minilm": 2000}


def ci95(acc: float, n: int) -> float:
    return 1.96 * math.sqrt(acc * (1 - acc) / n) if n else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run (development): 128 examples, 128 dev sentences")
    p.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    p.add_argument("--examples", type=int, default=None, help="training examples (default: smollm2 1000, minilm 2000)")
    p.add_argument("--eval-examples", type=int, default=None, help="dev sentences (default: all 872)")
    p.add_argument("--repeats", type=int, default=1, help="A/B pairs (same seed: repeats measure speed noise)")
    p.add_argument("--seed", type=int, default=42, help="seed of both arms: training subset, adapter init, order")
    p.add_argument("--threads", type=int, default=1, help=arg_threads_help())
    a = p.parse_args()
    started = time.time()
    examples = 128 if a.quick else (a.examples or DEFAULT_EXAMPLES[a.model])
    eval_examples = 128 if a.quick else a.eval_examples
    recipe = MODELS[a.model]
    base_name, peft_name = f"{a.model}:hf-trainer-baseline:quality", f"{a.model}:peftkit:quality"
    common = dict(examples=examples, stride=None, evaluate=True, eval_examples=eval_examples,
                  overrides=[f"train.seed={a.seed}"])
    arms = [cls_arm(base_name, "hf_cls", recipe, **common), cls_arm(peft_name, "peftkit_cls", recipe, **common)]
    env = environment(a.threads)
    results = interleaved(arms, a.repeats, threads=a.threads, log_dir=RESULTS / "logs")
    base, peft = results[base_name], results[peft_name]
    n_eval = base[0].get("eval_examples") or eval_examples or 872
    rows = []
    for label, res in (("plain Trainer + PEFT (baseline)", base), ("peftkit defaults", peft)):
        acc = median_of(res, "accuracy", 4)
        rows.append(f"| {label} | {median_of(res, 'train_loss', 4)} | {acc:.4f} ± {ci95(acc, n_eval):.3f} | "
                    f"{median_of(res, 'useful_tokens_per_s')} | {median_of(res, 'padding_fraction', 3):.1%} | "
                    f"{median_of(res, 'train_s')} | {median_of(res, 'eval_s')} | "
                    f"{median_of(res, 'peak_rss_train_mb', 0):.0f} |")
    speed = ratio_stats(base, peft, "useful_tokens_per_s")
    memory = ratio_stats(base, peft, "peak_rss_train_mb", higher_is_better=False)
    md = [f"# Classification quality with speed: full epochs ({a.model}, SST-2)", "",
          f"Command: `{command_line()}`", "",
          f"Recipe `{recipe}`, {examples} training examples (seeded subset, the same for both arms), the recipe's full "
          f"epochs ({peft[0]['steps']} optimizer steps), then the SST-2 dev set ({n_eval} sentences). Accuracy ± 95% "
          f"binomial interval. Both arms seed {a.seed}. The baseline's dev predictions are made in length-sorted order "
          "to save benchmark time (same logits as unsorted for right padding).", "",
          "| arm | train loss (epoch mean) | dev accuracy | useful tok/s (abs.) | padding | train s (abs.) | "
          "eval s (abs.) | peak RSS MB |",
          "|---|---|---|---|---|---|---|---|", *rows, "",
          f"peftkit vs baseline over these full epochs: useful tokens/s {fmt_ratio(speed)}; "
          f"peak RSS {fmt_ratio(memory)} less.", "", env_lines(env, started)]
    payload = {"benchmark": "quality", "command": command_line(), "model": a.model, "recipe": recipe,
               "examples": examples, "eval_examples": n_eval, "environment": env,
               "ratios": {"useful_tokens_per_s": speed, "peak_rss_less": memory}, "runs": results}
    suffix = ("_quick" if a.quick else "") + ("" if a.seed == 42 else f"_seed{a.seed}")
    write_results(f"quality_{a.model}{suffix}", payload, "\n".join(md))


if __name__ == "__main__":
    main()
