"""Paraphrases for `peftkit augment`: an instruction-tuned causal LM rewrites each training row, told its label.

The model is ``augment.paraphrase_model``: a hub id, a folder, ``packaged:<name>`` (the packaged SmolLM2 by
default), or a peftkit run folder of a causal-LM task (its base model with its trained adapter). Prompts go
through the tokenizer's chat template when it has one. Sampling is seeded (augment.seed), so the same command
writes the same file. Only the first line of an answer is kept, without quotes or a "Paraphrase:" prefix.
"""

from __future__ import annotations

import re
from pathlib import Path

from peftkit.core.console import say
from peftkit.recipe import Recipe

INSTRUCTION = ("Rewrite the following text in different words. Keep its meaning and keep it {label}. "
               "Answer with the rewritten text only.\n\nText: {text}")
BATCH = 8


def load_paraphraser(name: str):
    """(tokenizer, model, short name): a peftkit causal-LM run folder, or any causal LM."""
    from peftkit.model.base import load_causal_lm, load_tokenizer, load_trained_causal_lm
    from peftkit.recipe import ModelSection, QuantizationSection
    from peftkit.recipe.task_traits import traits_of
    from peftkit.runs.layout import RECIPE_FILE
    from peftkit.runs.read import load_run

    if (Path(name) / RECIPE_FILE).is_file():
        run_dir, recipe = load_run(name)
        if traits_of(recipe.task).generates:
            tokenizer, model = load_trained_causal_lm(run_dir, recipe.model, recipe.quantization)
            return tokenizer, model, run_dir.name
    model_section = ModelSection(name_or_path=name)
    tokenizer = load_tokenizer(model_section)
    return tokenizer, load_causal_lm(model_section, QuantizationSection(), tokenizer).eval(), name.split("/")[-1]


def prompt_ids(tokenizer, text: str, label: str) -> list[int]:
    message = INSTRUCTION.format(text=text, label=label)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]
    return tokenizer(message + "\nRewritten:")["input_ids"]


def clean(answer: str) -> str:
    line = next((part.strip() for part in answer.strip().splitlines() if part.strip()), "")
    line = re.sub(r"^(rewritten( text)?|paraphrase|text)\s*:\s*", "", line, flags=re.IGNORECASE)
    return line.strip().strip('"“”\'').strip()


def paraphrase_rows(recipe: Recipe, texts: list[str], label_words: list[str], labels: list[int]) -> list[dict]:
    import torch

    a = recipe.augment
    tokenizer, model, short = load_paraphraser(a.paraphrase_model)
    tokenizer.padding_side = "left"
    say(f"paraphrasing {len(texts)} rows x {a.copies} with {a.paraphrase_model} (max_new_tokens {a.max_new_tokens})")
    torch.manual_seed(a.seed)
    rows = []
    jobs = [(t, w, y) for t, w, y in zip(texts, label_words, labels) for _ in range(a.copies)]
    for start in range(0, len(jobs), BATCH):
        chunk = jobs[start:start + BATCH]
        encoded = [prompt_ids(tokenizer, t, w) for t, w, _ in chunk]
        batch = tokenizer.pad({"input_ids": encoded}, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=a.max_new_tokens, do_sample=True, temperature=0.8,
                                 top_p=0.95, pad_token_id=tokenizer.pad_token_id)
        answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        rows += [{"text": clean(ans), "label": y, "source": f"paraphrase:{short}"} for ans, (_, _, y) in
                 zip(answers, chunk)]
    return rows
