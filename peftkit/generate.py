"""`peftkit generate`: the trained adapter model's answer to one prompt, as a chat turn."""

from __future__ import annotations

from pathlib import Path

from peftkit.errors import PeftkitError


def generate(run_dir: str | Path, prompt: str, max_new_tokens: int = 128, raw: bool = False) -> str:
    """Greedy answer of base + adapter to `prompt`, sent as a user turn through the tokenizer's chat template
    (the way instruct models and peftkit's chat-format runs are trained); `raw` sends the text as it is."""
    import torch

    from peftkit.model import load_trained_causal_lm
    from peftkit.recipe import CAUSAL_TASKS
    from peftkit.runfolder import load_run

    if max_new_tokens <= 0:
        raise PeftkitError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    run_dir, recipe = load_run(run_dir)
    if recipe.task not in CAUSAL_TASKS:
        raise PeftkitError(f"{run_dir} is a task: {recipe.task} run (a classification head, no text to generate); "
                           f"generate needs a run of task {' or '.join(CAUSAL_TASKS)}")
    tokenizer, model = load_trained_causal_lm(run_dir, recipe.model, recipe.quantization)
    if raw or not tokenizer.chat_template:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    ids = ids.to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
