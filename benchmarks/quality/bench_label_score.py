"""Which evaluate.label_score for label words of different lengths (issue 14 item 5): sum, mean or calibrated,
chosen on a validation split carved from the training data, then evaluated once on the eval file.

    python -m benchmarks.quality.bench_label_score [--recipe recipes/agnews/smollm2_lora_gen.yaml] [--validation 0.15]
                                           [--eval-texts 500] [--run-dir runs/...]

The recipe's own data loading carves the validation split (selection.validation_fraction, seeded and stratified,
from the recipe's max_train_samples rows), exactly as `peftkit train` would. One scoring pass per split gives the
three scores: summed log-probabilities, each label's token count (mean) and the labels' sums after the
content-free prompt (calibrated). The method with the best validation macro-F1 is the choice; the eval-file
figures of the other methods are printed for context only, marked as not used for the choice.
Zero-shot (the base model) by default; ``--run-dir`` scores a trained run's adapter instead.
Writes benchmarks/results/label_score_<name>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.lib.common import REPO, command_line, environment, local_data, write_results


def load(recipe_path: str, validation: float, eval_texts: int, run_dir: str | None):
    from peftkit.model.base import load_tokenizer, load_trained_causal_lm, local_path, resolve_model_source
    from peftkit.recipe import load_recipe
    from peftkit.tasks import causal

    recipe = load_recipe(REPO / recipe_path, [*local_data(recipe_path), f"selection.validation_fraction={validation}",
                                              "train.save_strategy=epoch", f"data.max_eval_samples={eval_texts}"])
    resolve_model_source(recipe.model)
    raw = causal.read_data(recipe)
    source = local_path(recipe.model)
    tokenizer = load_tokenizer(recipe.model, source)
    data = causal.prepare_data(recipe, tokenizer, raw)
    if run_dir:
        tokenizer, model = load_trained_causal_lm(REPO / run_dir, recipe.model, recipe.quantization)
    else:
        model = causal.load_model(recipe, tokenizer, data, source).eval()
    return recipe, raw, data.prepared["encoder"], model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/agnews/smollm2_lora_gen.yaml")
    p.add_argument("--validation", type=float, default=0.15, help="share of the training rows held out")
    p.add_argument("--eval-texts", type=int, default=500)
    p.add_argument("--run-dir", default=None, help="a trained run folder (default: the base model, zero-shot)")
    p.add_argument("--name", default="agnews_zero_shot")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import torch

    from peftkit.evaluation.causal import label_scoring
    from peftkit.evaluation.label_scoring import LABEL_SCORES, apply_label_score, summed_label_scores
    from peftkit.evaluation.metrics import classification_metrics

    torch.set_num_threads(a.threads)
    started, uptime_before = time.time(), os.popen("uptime").read().strip()
    recipe, raw, encoder, model = load(a.recipe, a.validation, a.eval_texts, a.run_dir)
    chat, words = recipe.data.use_chat_template, raw.label_words
    content_free = label_scoring(recipe).content_free_prompt
    offsets = summed_label_scores(model, encoder, [content_free], words, chat, 1)[0][0]
    figures: dict[str, dict] = {}
    for split in ("validation", "eval"):
        prompts, gold = raw.splits[split]["prompt"], raw.splits[split]["label"]
        t = time.time()
        sums, counts = summed_label_scores(model, encoder, prompts, words, chat, recipe.evaluate.batch_size)
        print(f"{split}: {len(prompts)} texts scored in {time.time() - t:.0f} s", flush=True)
        for method in LABEL_SCORES:
            scores = apply_label_score(sums, counts, method, offsets)
            predictions = [max(range(len(r)), key=r.__getitem__) for r in scores]
            m = classification_metrics(gold, predictions, raw.label_names)
            figures.setdefault(method, {})[split] = {
                "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
                "predicted_per_class": [predictions.count(c) for c in range(len(words))], "texts": len(gold)}
    chosen = max(LABEL_SCORES, key=lambda method: figures[method]["validation"]["macro_f1"])
    uptime_after = os.popen("uptime").read().strip()
    counts_line = ", ".join(f"{n} {w!r}" for n, w in zip(raw.label_names, words))
    md = [f"# Label scores for label words of different lengths ({a.name})", "",
          f"Command: `OMP_NUM_THREADS={a.threads} {command_line()}`", "",
          f"Recipe `{a.recipe}`, {'adapter of ' + a.run_dir if a.run_dir else 'the base model, zero-shot'}; label "
          f"words {counts_line}. Validation: {figures[chosen]['validation']['texts']} rows carved from the training "
          f"rows (selection.validation_fraction={a.validation}, seeded, stratified); eval: "
          f"{figures[chosen]['eval']['texts']} rows of the eval file (data.max_eval_samples: a seeded subset). "
          f"Content-free prompt: {content_free!r}; its label log-probabilities: {[round(o, 3) for o in offsets]}.", "",
          f"**Chosen on validation macro-F1: `{chosen}`.** Eval figures of the other methods are context only "
          "(not used for the choice).", "",
          "| label_score | validation accuracy | validation macro-F1 | eval accuracy | eval macro-F1 | "
          "eval predictions per class |", "|---|---|---|---|---|---|"]
    for method in LABEL_SCORES:
        v, e = figures[method]["validation"], figures[method]["eval"]
        mark = " (chosen)" if method == chosen else ""
        md.append(f"| {method}{mark} | {v['accuracy']} | {v['macro_f1']} | {e['accuracy']} | {e['macro_f1']} | "
                  f"{e['predicted_per_class']} |")
    md += ["", f"`uptime` before: {uptime_before}; after: {uptime_after}. Wall time {time.time() - started:.0f} s "
               "(under load: the CPU is shared with other jobs)."]
    payload = {"benchmark": "label_score", "command": command_line(), "recipe": a.recipe, "run_dir": a.run_dir,
               "environment": environment(a.threads), "chosen_on_validation": chosen, "figures": figures,
               "content_free_prompt": content_free, "content_free_offsets": offsets, "label_words": words}
    write_results(f"label_score_{a.name}", payload, "\n".join(md))


if __name__ == "__main__":
    main()
