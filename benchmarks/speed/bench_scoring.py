"""Label-scoring speed (issue 18): today's scoring against the new one, side by side in one process.

    python -m benchmarks.speed.bench_scoring [--texts 256] [--repeats 3] [--recipes sst2,agnews]

One SmolLM2-135M-Instruct base model (no adapter: evaluation after training scores the same way, the LoRA layers
add their own small cost to both arms), the first N prompts of each recipe's eval file, rendered exactly as
`peftkit evaluate` renders them. Arms, timed in rotating order within each round:

  today          peftkit/evaluation/causal.py as of commit 51ed3c3 (benchmarks/speed/scoring_baseline.py, a verbatim
  copy):
                 prompts once with a key/value cache, then one forward pass per label on a deep copy of the cache
  one-pass       the new scoring in float32: all labels' continuations in one forward pass over the cache repeated
                 along the batch, no copies, under inference_mode
  one-pass+bf16  the same under bf16 autocast, the LM head kept in float32 (evaluate.bf16: true)
  one-pass+bf16 b64  the same with 64 prompts per batch instead of 32

Every arm's scores are compared with today's (largest absolute difference in log-probability, and how many
predictions differ); accuracy on these N texts is context, not a choice (nothing is selected here).
Writes benchmarks/results/scoring.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks.lib.common import REPO, command_line, environment, local_data, matmul_peak, write_results

RECIPES = {"sst2": "recipes/sst2/smollm2_lora_gen.yaml", "agnews": "recipes/agnews/smollm2_lora_gen.yaml"}
ARMS = {"today": ("baseline", 32, False), "one-pass": ("new", 32, False), "one-pass+bf16": ("new", 32, True),
        "one-pass+bf16 b64": ("new", 64, True)}


def prepared(recipe_path: str, texts: int):
    """(model, encoder, prompts, label words, chat, gold labels) as peftkit evaluate would have them."""
    from peftkit.model.base import load_tokenizer, local_path, resolve_model_source
    from peftkit.recipe import load_recipe
    from peftkit.tasks import causal

    recipe = load_recipe(REPO / recipe_path, [*local_data(recipe_path), f"data.max_eval_samples={texts}",
                                              "data.max_train_samples=16"])
    resolve_model_source(recipe.model)
    raw = causal.read_data(recipe)
    source = local_path(recipe.model)
    tokenizer = load_tokenizer(recipe.model, source)
    data = causal.prepare_data(recipe, tokenizer, raw)
    model = causal.load_model(recipe, tokenizer, data, source).eval()
    split = raw.splits["eval"]
    return (model, data.prepared["encoder"], split["prompt"], raw.label_words, recipe.data.use_chat_template,
            split["label"])


def score(arm: str, model, encoder, prompts, words, chat):
    from benchmarks.speed import scoring_baseline
    from peftkit.evaluation.label_scoring import LabelScoring, score_labels

    kind, batch, bf16 = ARMS[arm]
    started = time.perf_counter()
    if kind == "baseline":
        scores = scoring_baseline.score_labels(model, encoder, prompts, words, chat, batch)
    else:
        scores = score_labels(model, encoder, prompts, words, chat, batch, LabelScoring(bf16=bf16))
    return scores, time.perf_counter() - started


def argmax(row):
    return max(range(len(row)), key=row.__getitem__)


def measure(name: str, recipe: str, texts: int, repeats: int, arms: list[str]) -> dict:
    model, encoder, prompts, words, chat, gold = prepared(recipe, texts)
    tokens = [len(encoder.tokenizer(p)["input_ids"]) for p in prompts] if not chat else None
    times: dict[str, list[float]] = {a: [] for a in arms}
    ratios: dict[str, list[float]] = {a: [] for a in arms}
    scores: dict[str, list] = {}
    score(arms[0], model, encoder, prompts[:8], words, chat)  # warm-up: first-call allocations
    for rnd in range(repeats):
        order = arms[rnd % len(arms):] + arms[:rnd % len(arms)]
        for arm in order:
            scores[arm], seconds = score(arm, model, encoder, prompts, words, chat)
            times[arm].append(seconds)
            print(f"[{name} round {rnd + 1}] {arm}: {seconds:.1f} s ({len(prompts) / seconds:.1f} texts/s), "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        for arm in arms:
            ratios[arm].append(times["today"][-1] / times[arm][-1])
    ref = scores["today"]
    rows = {}
    for arm in arms:
        diffs = [abs(a - b) for r1, r2 in zip(ref, scores[arm]) for a, b in zip(r1, r2)]
        predictions = [argmax(r) for r in scores[arm]]
        rows[arm] = {"seconds": [round(t, 2) for t in times[arm]],
                     "texts_per_s_median": round(len(prompts) / statistics.median(times[arm]), 2),
                     "speedup_vs_today": [round(r, 2) for r in ratios[arm]],
                     "speedup_median": round(statistics.median(ratios[arm]), 2),
                     "max_abs_score_diff": max(diffs), "mean_abs_score_diff": statistics.mean(diffs),
                     "predictions_differing": sum(p != argmax(r) for p, r in zip(predictions, ref)),
                     "accuracy": round(sum(p == g for p, g in zip(predictions, gold)) / len(gold), 4)}
    return {"recipe": recipe, "texts": len(prompts), "label_words": words,
            "prompt_tokens_mean": round(statistics.mean(tokens), 1) if tokens else None, "arms": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--recipes", default="sst2,agnews")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="scoring")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    started = time.time()
    env = environment(a.threads)
    uptime_before = os.popen("uptime").read().strip()
    peak = matmul_peak(a.threads)
    arms = [x for x in a.arms.split(",") if x]
    assert arms[0] == "today", "the first arm is the reference"
    results = {n: measure(n, RECIPES[n], a.texts, a.repeats, arms) for n in a.recipes.split(",") if n}
    uptime_after = os.popen("uptime").read().strip()
    md = ["# Label-scoring speed: today's scoring vs one pass for all labels (+ bf16 autocast)", "",
          f"Command: `OMP_NUM_THREADS={a.threads} {command_line()}`", "",
          "SmolLM2-135M-Instruct base, the first N eval prompts of each recipe, every label word scored (EOS "
          f"included). {a.repeats} rounds, arms in rotating order within each round, all in one process; speed-up "
          "= today's time / the arm's time in the same round, median (min-max). Score differences are against "
          "today's float32 scores. Times are under load (the CPU is shared with other jobs): "
          f"`uptime` before: {uptime_before}; after: {uptime_after}.", "",
          f"Matmul peak measured in this run ({a.threads} thread(s)): bf16 {peak['bfloat16']['gflops']:.0f} "
          f"GFLOP/s, fp32 {peak['float32']['gflops']:.0f} GFLOP/s.", "",
          "| eval set | arm | texts/s | speed-up vs today | max abs score diff | predictions differing | accuracy |",
          "|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        for arm, r in res["arms"].items():
            spread = f"{min(r['speedup_vs_today']):.2f}-{max(r['speedup_vs_today']):.2f}"
            md.append(f"| {name} ({res['texts']} texts, {len(res['label_words'])} labels) | {arm} | "
                      f"{r['texts_per_s_median']} | **{r['speedup_median']:.2f}x** ({spread}) | "
                      f"{r['max_abs_score_diff']:.2e} | {r['predictions_differing']} / {res['texts']} | "
                      f"{r['accuracy']} |")
    md += ["", f"Machine: {env['cpu']} ({', '.join(env['cpu_bf16_flags'])}), torch {env['torch']}, transformers "
           f"{env['transformers']}; wall time {time.time() - started:.0f} s."]
    payload = {"benchmark": "label_scoring", "command": command_line(), "environment": env, "matmul_peak": peak,
               "uptime_before": uptime_before, "uptime_after": uptime_after, "results": results}
    write_results(a.name, payload, "\n".join(md))


if __name__ == "__main__":
    main()
