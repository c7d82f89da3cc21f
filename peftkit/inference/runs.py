"""Loading run folders for serving: one base model per distinct base, every run's adapter attached to it by name.

Runs whose recipes load the same base the same way (model, dtype, quantization, attention, and for classification
heads the number of classes) share one copy of the base weights: the first run's adapter is loaded with
``PeftModel.from_pretrained`` and the others with ``load_adapter``. Each run keeps its own tokenizer, labels and,
for classification heads, its own trained head (PEFT's ``modules_to_save`` copy, chosen per row like the LoRA
weights when a batch mixes adapters).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftkit.data.causal import resolve_label_words
from peftkit.data.causal_encode import apply_tokenizer_settings, encoder_for
from peftkit.errors import PeftkitError
from peftkit.evaluation.calibration import saved_temperature
from peftkit.model.base import load_causal_lm, load_classifier, load_tokenizer
from peftkit.recipe.task_traits import TaskTraits, tasks_where, traits_of
from peftkit.runs.layout import ADAPTER_DIR, LABEL_MAP_FILE
from peftkit.runs.read import label_names_of, load_run, refuse_multitask

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass
class BaseGroup:
    """One base model in memory and the runs (adapters) attached to it."""

    index: int
    head: bool
    """A sequence-classification base (classification runs) or a causal LM (sft, generative_classification)."""
    description: str
    model: Any = None
    pad_token_id: int = 0
    padding_side: str = "right"
    merged: bool = False
    """The only adapter of this base is merged into its weights (see load_group)."""
    runs: list[ServedRun] = field(default_factory=list)


@dataclass
class ServedRun:
    """A run folder as the server answers for it: `name` is what requests put in their `model` field."""

    name: str
    run_dir: Path
    recipe: Any
    adapter: str
    """PEFT adapter name inside the group's model (a safe identifier; public names may contain dots)."""
    group: BaseGroup | None = None
    tokenizer: Any = None
    labels: list[str] | None = None
    label_words: list[str] | None = None
    encoder: Any = None
    temperature: float = 1.0
    """From the run's calibration.json (fitted on its validation split); 1.0 when it has none."""

    @property
    def task(self) -> str:
        return self.recipe.task

    @property
    def traits(self) -> TaskTraits:
        return traits_of(self.task)

    @property
    def classifies(self) -> bool:
        return self.traits.labelled

    @property
    def generates(self) -> bool:
        return self.traits.generates

    @property
    def max_length(self) -> int:
        return self.recipe.data.max_length

    def describe(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "owned_by": "peftkit", "task": self.task,
                "labels": self.labels, "base": self.recipe.model.name_or_path, "base_group": self.group.index,
                "temperature": self.temperature if self.classifies else None,
                "endpoints": (["/v1/classify"] if self.classifies else [])
                + (["/v1/completions", "/v1/chat/completions"] if self.generates else [])}


def parse_run_arg(text: str) -> tuple[str, Path]:
    """RUN_DIR or NAME=RUN_DIR; the default name is the folder's name."""
    name, sep, path = text.partition("=")
    if not sep or Path(text).exists():
        name, path = Path(text).resolve().name, text
    if not NAME.match(name):
        raise PeftkitError(f"model name {name!r} (from {text!r}): use letters, digits and . _ : - (give NAME=RUN_DIR)")
    return name, Path(path)


def open_runs(run_args: list[str]) -> list[ServedRun]:
    """Check every run folder (cheap: recipe, adapter files, labels) before any weights are read."""
    runs: list[ServedRun] = []
    for i, text in enumerate(run_args):
        name, path = parse_run_arg(text)
        if any(r.name == name for r in runs):
            raise PeftkitError(f"two runs are named {name!r}; name them apart with NAME=RUN_DIR")
        run_dir, recipe = load_run(path)
        refuse_multitask(run_dir, recipe, "serve")
        if not traits_of(recipe.task).servable:
            raise PeftkitError(f"{run_dir} is a task: {recipe.task} run; peftkit serve answers for runs of task "
                               f"{', '.join(tasks_where('servable'))}")
        run = ServedRun(name=name, run_dir=run_dir, recipe=recipe, adapter=f"run{i}")
        if run.classifies:
            if not (run_dir / LABEL_MAP_FILE).is_file():
                raise PeftkitError(f"{run_dir} has no {LABEL_MAP_FILE}; did the train run finish?")
            run.labels = label_names_of(run_dir)
            run.temperature = saved_temperature(run_dir)
        runs.append(run)
    return runs


def base_key(run: ServedRun) -> tuple:
    """Runs with equal keys can share one base model in memory."""
    recipe = run.recipe
    head = run.traits.head
    model = dataclasses.asdict(recipe.model)
    quant = dataclasses.asdict(recipe.quantization)
    return (head, repr(sorted(model.items())), repr(sorted(quant.items())), len(run.labels) if head else None)


def group_runs(runs: list[ServedRun]) -> list[BaseGroup]:
    groups: dict[tuple, BaseGroup] = {}
    for run in runs:
        key = base_key(run)
        if key not in groups:
            head = key[0]
            what = "sequence classification" if head else "causal LM"
            groups[key] = BaseGroup(index=len(groups), head=head,
                                    description=f"{run.recipe.model.name_or_path} ({what}, {run.recipe.model.dtype})")
        groups[key].runs.append(run)
        run.group = groups[key]
    return list(groups.values())


def load_runs(run_args: list[str], say=print) -> list[ServedRun]:
    """Open, group and load every run: one base per group, each run's adapter attached by name."""
    runs = open_runs(run_args)
    for group in group_runs(runs):
        load_group(group)
        names = ", ".join(r.name for r in group.runs)
        say(f"peftkit serve: base {group.index}: {group.description} <- adapters: {names}")
    return runs


def load_group(group: BaseGroup) -> None:
    from peft import PeftModel

    for run in group.runs:
        run.tokenizer = load_tokenizer(run.recipe.model, str(run.run_dir / ADAPTER_DIR))
        if not run.traits.head:
            apply_tokenizer_settings(run.tokenizer, run.recipe.train)
    first = group.runs[0]
    check_same_tokenizers(group)
    recipe = first.recipe
    if group.head:
        base = load_classifier(recipe.model, recipe.quantization, first.labels, first.tokenizer)
    else:
        base = load_causal_lm(recipe.model, recipe.quantization, first.tokenizer)
    model = PeftModel.from_pretrained(base, str(first.run_dir / ADAPTER_DIR), adapter_name=first.adapter,
                                      is_trainable=False)
    for run in group.runs[1:]:
        model.load_adapter(str(run.run_dir / ADAPTER_DIR), adapter_name=run.adapter, is_trainable=False)
    group.model = model.eval()
    if len(group.runs) == 1 and not recipe.quantization.enabled:
        # One adapter on this base: fold it into the weights (PEFT keeps it, flagged merged), so each pass costs
        # what the plain model costs. Not for 4/8-bit bases, where merging would round the adapter away.
        group.model.merge_adapter()
        group.merged = True
    group.pad_token_id = first.tokenizer.pad_token_id
    group.padding_side = first.tokenizer.padding_side
    for run in group.runs:
        if run.traits.label_words:
            run.label_words = resolve_label_words(run.recipe.data, run.labels)
            run.encoder = encoder_for(run.recipe, run.tokenizer)


def check_same_tokenizers(group: BaseGroup) -> None:
    """Rows of different runs are padded together: their tokenizers must agree on the vocabulary and pad token."""
    first = group.runs[0].tokenizer
    for run in group.runs[1:]:
        tok = run.tokenizer
        if len(tok) != len(first) or tok.pad_token_id != first.pad_token_id:
            raise PeftkitError(f"runs {group.runs[0].name!r} and {run.name!r} share a base model but their "
                               "tokenizers differ (vocabulary size or pad token); serve them from two processes")
