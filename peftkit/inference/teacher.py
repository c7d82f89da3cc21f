"""A trained classification run used as a teacher: its label probabilities for any texts, and their cache.

Distillation (``task: distillation``) and the consistency filter of ``peftkit augment`` both ask a finished run
"how likely is each label for this text". Head runs (classification, distillation) answer with the softmax of
their head; generative_classification runs with the softmax over the scores of their label completions, exactly
as ``peftkit evaluate`` and ``peftkit serve`` score them (peftkit.evaluation.causal.score_labels).

The soft labels of a distillation run are computed once and cached in the run folder as safetensors, with a
fingerprint of the teacher (its adapter weights, recipe and labels) and of the texts in order: a resume or a
rerun reuses them; a different teacher or different data recomputes them, never mixes them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from peftkit.core.console import say
from peftkit.errors import PeftkitError
from peftkit.recipe.task_traits import tasks_where, traits_of
from peftkit.runs.layout import ADAPTER_DIR, ADAPTER_WEIGHTS_FILE, LABEL_MAP_FILE, RECIPE_FILE
from peftkit.runs.read import label_names_of, load_run


def open_teacher(path: str | os.PathLike, label_names: list[str] | None, field: str):
    """(run folder, recipe, labels) of a finished classification run, checked cheaply (nothing loaded).

    `field` names the recipe key that gave the folder, so every refusal says what to change.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise PeftkitError(f"{field}: teacher run folder {folder} does not exist; give the output_dir of a trained "
                           "peftkit classification run")
    try:
        run_dir, recipe = load_run(folder)
    except PeftkitError as e:
        raise PeftkitError(f"{field}: {e}") from None
    if not traits_of(recipe.task).teacher:
        raise PeftkitError(f"{field}: {run_dir} is a run of task {recipe.task}; a teacher must be a classification "
                           f"run ({', '.join(tasks_where('teacher'))})")
    if not (run_dir / LABEL_MAP_FILE).is_file():
        raise PeftkitError(f"{field}: {run_dir} has no {LABEL_MAP_FILE}; did its train run finish?")
    labels = label_names_of(run_dir)
    if label_names is not None and list(labels) != list(label_names):
        raise PeftkitError(f"{field}: the teacher's labels {labels} are not this recipe's labels {list(label_names)} "
                           "(same names in the same order); set data.label_names to the teacher's order, or choose a "
                           "teacher trained on the same label set")
    return run_dir, recipe, labels


def fingerprint(run_dir: Path, texts: Sequence[str]) -> str:
    """sha256 of what the soft labels depend on: the teacher's weights, recipe and labels, and the texts in order."""
    digest = hashlib.sha256()
    for name in (f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS_FILE}", RECIPE_FILE, LABEL_MAP_FILE):
        path = run_dir / name
        digest.update(name.encode())
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def teacher_probabilities(run_dir: Path, recipe, texts: Sequence[str], batch_size: int = 32):
    """float32 tensor [len(texts), labels]: the teacher's label probabilities (no gradients)."""
    return load_teacher(run_dir, recipe, batch_size)(texts)


def load_teacher(run_dir: Path, recipe, batch_size: int = 32):
    """The teacher loaded once: a function texts -> float32 tensor of label probabilities."""
    import torch

    if traits_of(recipe.task).head:
        from peftkit.model.base import load_trained_classifier

        tokenizer, model = load_trained_classifier(run_dir, recipe.model, recipe.quantization, label_names_of(run_dir))
        return lambda texts: softmax_in_batches(model, tokenizer, texts, recipe.data.max_length, batch_size)
    from peftkit.inference.forward import classify_generative
    from peftkit.inference.runs import load_runs

    (run,) = load_runs([str(run_dir)], say=lambda line: None)
    return lambda texts: torch.tensor(classify_generative(run, list(texts), batch_size, on_forward=lambda f: None),
                                      dtype=torch.float32)


def softmax_in_batches(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int):
    """Label probabilities of a sequence-classification model, batches sorted by length (little padding)."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros((len(texts), model.config.num_labels), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in chunk], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")
            out[chunk] = torch.softmax(model(**batch).logits.float(), -1)
    return out


def cached_soft_labels(cache: Path, run_dir: Path, recipe, texts: Sequence[str], batch_size: int):
    """The teacher's probabilities for `texts`, from `cache` when its fingerprint matches, else computed and saved
    there atomically (a crash while writing leaves no half file to be trusted)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    expected = fingerprint(run_dir, texts)
    if cache.is_file():
        try:
            with safe_open(str(cache), framework="pt") as f:
                found = (f.metadata() or {}).get("fingerprint")
                probs = f.get_tensor("probs") if found == expected else None
        except Exception as e:  # a damaged cache is recomputed, not trusted
            say(f"teacher soft labels: {cache} is unreadable ({type(e).__name__}); computing them again")
            probs = None
        else:
            if probs is None:
                say(f"teacher soft labels: {cache} was computed for another teacher or other texts; computing again")
        if probs is not None and tuple(probs.shape)[0] == len(texts):
            say(f"teacher soft labels: reused {cache} ({len(texts)} texts)")
            return probs
    say(f"teacher soft labels: scoring {len(texts)} texts with {run_dir} ({recipe.task})")
    probs = teacher_probabilities(run_dir, recipe, texts, batch_size).contiguous()
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    try:
        save_file({"probs": probs}, str(tmp), metadata={"fingerprint": expected, "teacher": str(run_dir)})
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)
    return probs
