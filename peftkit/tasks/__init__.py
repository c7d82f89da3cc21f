"""The kinds of run peftkit trains, one module each; ``peftkit.run`` is the one checklist they all go through.

What a task module provides is listed in ``peftkit.tasks.interface``. Adding a task: write its module, add it
here, and add its name to ``recipe.sections.TASKS`` (the recipe checks names without importing any task).
"""

from __future__ import annotations

from types import ModuleType

from peftkit.errors import PeftkitError
from peftkit.tasks import causal, classification, distillation, multitask

REGISTRY: dict[str, ModuleType] = {
    "classification": classification,
    "sft": causal,
    "generative_classification": causal,
    "distillation": distillation,
    "multitask": multitask,
}


def task_for(name: str) -> ModuleType:
    """The module that trains, evaluates and describes runs of task `name`."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise PeftkitError(f"unknown task {name!r}; known tasks: {', '.join(REGISTRY)}") from None
