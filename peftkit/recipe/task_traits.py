"""Facts about each task, one row per task name: what the later commands read instead of comparing names.

A command asks ``traits_of(recipe.task).head`` ("does this run have a classification head?"), never
``recipe.task == "classification"``; adding a task is one row here plus its module in ``peftkit.tasks``.
Nothing is imported: every floor of the package may read this table (tests/unit/test_task_seam.py keeps task
names out of the modules outside ``recipe/`` and ``tasks/``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

SEQ_CLS, CAUSAL_LM = "SEQ_CLS", "CAUSAL_LM"
TRAINING_ARGUMENTS, SFT_CONFIG = "TrainingArguments", "SFTConfig"


@dataclass(frozen=True)
class TaskTraits:
    """What a run of one task is made of and which commands take it."""

    name: str
    head: bool
    """The model is a sequence-classification head (``AutoModelForSequenceClassification``); else a causal LM."""
    peft_task_type: str
    """The ``peft.TaskType`` of its adapter: SEQ_CLS or CAUSAL_LM (an adapter only starts a run of the same type)."""
    trainer_config: str
    """The class its ``train`` section becomes: TrainingArguments, or trl's SFTConfig."""
    labelled: bool
    """The run folder has one label_map.json: the classes the run predicts, in id order."""
    label_words: bool
    """A causal LM that classifies by scoring label words after a prompt (no head)."""
    generates: bool
    """A causal LM that writes text: `peftkit generate`, serve's completions, a paraphraser for augment."""
    subtasks: bool
    """Several tasks in one run (``tasks:``), each in its own folder; commands for one task refuse it."""
    class_weights: bool
    """Its loss is the head's cross-entropy, which imbalance.strategy may weight or rebalance."""
    teacher: bool
    """Its run can be a distillation teacher (it gives label probabilities for any text)."""
    servable: bool
    """`peftkit serve` answers for it (classify when labelled, completions when it generates)."""
    mergeable: bool
    """`peftkit merge` merges and verifies it (the logits of the merged model against the adapter's)."""
    adapters_mergeable: bool
    """`peftkit merge-adapters` merges it with others (per-task label scoring to compare; no head to average)."""
    init_writes: bool
    """`peftkit init` writes recipes of it from a labelled file (``--task``)."""


# One row per task; every fact spelled out, so a row reads on its own.
TRAITS: dict[str, TaskTraits] = {t.name: t for t in (
    TaskTraits("classification", head=True, peft_task_type=SEQ_CLS, trainer_config=TRAINING_ARGUMENTS,
               labelled=True, label_words=False, generates=False, subtasks=False, class_weights=True, teacher=True,
               servable=True, mergeable=True, adapters_mergeable=False, init_writes=True),
    TaskTraits("sft", head=False, peft_task_type=CAUSAL_LM, trainer_config=SFT_CONFIG,
               labelled=False, label_words=False, generates=True, subtasks=False, class_weights=False, teacher=False,
               servable=True, mergeable=False, adapters_mergeable=False, init_writes=False),
    TaskTraits("generative_classification", head=False, peft_task_type=CAUSAL_LM, trainer_config=SFT_CONFIG,
               labelled=True, label_words=True, generates=True, subtasks=False, class_weights=False, teacher=True,
               servable=True, mergeable=False, adapters_mergeable=True, init_writes=True),
    # a head student trained on a teacher's soft labels: its own loss (no class weights), not served or merged
    TaskTraits("distillation", head=True, peft_task_type=SEQ_CLS, trainer_config=TRAINING_ARGUMENTS,
               labelled=True, label_words=False, generates=False, subtasks=False, class_weights=False, teacher=True,
               servable=False, mergeable=False, adapters_mergeable=False, init_writes=False),
    # several generative_classification tasks on one adapter: their label maps live in the tasks' folders
    TaskTraits("multitask", head=False, peft_task_type=CAUSAL_LM, trainer_config=SFT_CONFIG,
               labelled=False, label_words=False, generates=False, subtasks=True, class_weights=False, teacher=False,
               servable=False, mergeable=False, adapters_mergeable=True, init_writes=False),
)}

DEFAULT_TASK = "classification"
"""The task of a recipe (or a run's recipe.yaml) that names none."""
MULTITASK = next(name for name, t in TRAITS.items() if t.subtasks)
"""The task whose run holds several tasks (merge-adapters writes such a recipe)."""
TRAIT_NAMES = tuple(f.name for f in fields(TaskTraits) if f.name != "name")


def traits_of(task: str) -> TaskTraits:
    """The facts of task `task`; an unknown name is a KeyError (recipes are validated before anything asks)."""
    return TRAITS[task]


def tasks_where(trait: str) -> tuple[str, ...]:
    """Names of the tasks with `trait` true, in table order (for messages such as "needs a run of task ...")."""
    if trait not in TRAIT_NAMES:
        raise KeyError(f"no task trait {trait!r}; traits: {', '.join(TRAIT_NAMES)}")
    return tuple(name for name, t in TRAITS.items() if getattr(t, trait) is True)


def classifier_task(causal: bool) -> str:
    """The task `peftkit init` writes for a base model: label words on a causal LM, a head on an encoder."""
    return next(name for name in tasks_where("init_writes") if TRAITS[name].head != causal)
