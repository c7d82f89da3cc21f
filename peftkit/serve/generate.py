"""`peftkit generate`: a causal-LM run's answer to one text, asked the way the run was trained.

- task generative_classification: TEXT goes through the run's ``data.prompt_template`` (default
  ``"{text}\\nLabel:"``), as a user turn through the chat template only if the run trained with
  ``data.use_chat_template``; every label word is scored as in evaluation (generative.score_labels) and the
  label names are printed with their probabilities (a softmax over the labels' scores), the prediction first.
- task sft: the prompt is built as in training (``data.prompt_template`` with TEXT as its one field; the chat
  template when the run used it, i.e. ``data.use_chat_template`` or ``data.format: messages``), then greedy
  generation.
- ``raw``: TEXT as it is, no template of any kind, greedy generation.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

from peftkit.errors import PeftkitError


def generate(run_dir: str | Path, prompt: str, max_new_tokens: int = 128, raw: bool = False) -> str:
    """What `peftkit generate` prints (see the module docstring)."""
    from peftkit.model.base import load_trained_causal_lm
    from peftkit.recipe.task_traits import tasks_where, traits_of
    from peftkit.runs.read import load_run, refuse_multitask

    if max_new_tokens <= 0:
        raise PeftkitError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    run_dir, recipe = load_run(run_dir)
    refuse_multitask(run_dir, recipe, "generate")
    if not traits_of(recipe.task).generates:
        raise PeftkitError(f"{run_dir} is a task: {recipe.task} run (a classification head, no text to generate); "
                           f"generate needs a run of task {' or '.join(tasks_where('generates'))}. Score files with "
                           f"`peftkit evaluate {run_dir} --data FILE`")
    tokenizer, model = load_trained_causal_lm(run_dir, recipe.model, recipe.quantization)
    if raw:
        return greedy(model, tokenizer, tokenizer(prompt, return_tensors="pt")["input_ids"], max_new_tokens)
    if traits_of(recipe.task).label_words:
        return format_label_probabilities(label_probabilities(run_dir, recipe, tokenizer, model, prompt))
    return greedy(model, tokenizer, sft_prompt_ids(recipe, tokenizer, prompt), max_new_tokens)


def label_probabilities(run_dir: Path, recipe, tokenizer, model, text: str) -> list[tuple[str, float]]:
    """(label name, probability) for every label, most likely first: the run's prompt and label scoring."""
    from peftkit.data.causal import classification_prompt, pair, resolve_label_words
    from peftkit.data.causal_encode import apply_tokenizer_settings, encoder_for
    from peftkit.evaluation.calibration import saved_temperature
    from peftkit.evaluation.causal import label_scoring, score_labels
    from peftkit.runs.layout import LABEL_MAP_FILE
    from peftkit.runs.read import label_names_of

    names = label_names_of(run_dir) if (run_dir / LABEL_MAP_FILE).is_file() else recipe.data.label_names
    words = resolve_label_words(recipe.data, names)
    apply_tokenizer_settings(tokenizer, recipe.train)
    encoder = encoder_for(recipe, tokenizer)
    chat = recipe.data.use_chat_template
    example = pair(classification_prompt(recipe.data, text), words[0], chat)
    model.eval()
    (scores,) = score_labels(model, encoder, [example["prompt"]], words, chat, batch_size=1,
                             scoring=label_scoring(recipe))
    temperature = saved_temperature(run_dir)  # fitted on the run's validation split; 1.0 without one
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = sum(weights)
    return sorted(((n, w / total) for n, w in zip(names, weights)), key=lambda item: -item[1])


def format_label_probabilities(ranked: list[tuple[str, float]]) -> str:
    width = max(len(n) for n, _ in ranked)
    return "\n".join(f"{name:<{width}}  {p:.4f}" for name, p in ranked)


def sft_prompt_ids(recipe, tokenizer, text: str):
    """The prompt's token ids as the sft run saw its prompts: its template, and its chat template if it used one."""
    from peftkit.data.causal_encode import apply_tokenizer_settings

    d = recipe.data
    apply_tokenizer_settings(tokenizer, recipe.train)
    if d.prompt_template is not None:
        fields = {name for _, name, _, _ in string.Formatter().parse(d.prompt_template) if name}
        if len(fields) != 1:
            raise PeftkitError(f"the run's data.prompt_template has {len(fields)} fields "
                               f"({', '.join(sorted(fields))}); generate fills one: pass the whole prompt with --raw")
        text = d.prompt_template.format_map({fields.pop(): text})
    if (d.use_chat_template or d.format == "messages") and tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)["input_ids"]
    return tokenizer(text, return_tensors="pt")["input_ids"]


def greedy(model, tokenizer, ids, max_new_tokens: int) -> str:
    import torch

    ids = ids.to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
