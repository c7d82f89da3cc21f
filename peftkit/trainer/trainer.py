"""The class that trains, composed in one place: peftkit's Trainer mixins over ``Trainer`` or ``trl.SFTTrainer``.

Every task builds its Trainer here. The layers are stacked in one fixed order, outermost first, each overriding
only the methods it names, and each layer's state is given when the class is made (`TrainerSetup`), not attached
to the instance afterwards:

1. ``NonFiniteLossGuard`` (guards): ``training_step``; a NaN/inf loss stops the run or skips the batch.
2. ``AttentionKernel`` (attention): ``compute_loss_context_manager``; training forwards under the CPU kernel.
3. ``LabelScoringEvaluation`` (selection, label-word tasks): ``evaluate``; label scoring on the validation split.
4. ``ImbalanceHandling`` (imbalance, head tasks): ``compute_loss`` and ``_get_train_sampler``; class weights or
   class-balanced batches, and otherwise the layers below.
5. ``SeededLengthGrouping`` (speed): ``_get_train_sampler``; length-grouped batches seeded per epoch.
6. the task's own loss, if it has one (distillation): ``compute_loss``.
7. the base class: ``transformers.Trainer`` or ``trl.SFTTrainer``.

Layers 3, 4 and 6 are present only when a task asks for them. (Before this module each task nested the wrappers
itself, in four different orders; the order here is the one all four had in common.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftkit.trainer.attention import AttentionKernel, trainer_attention_kernel
from peftkit.trainer.guards import NonFiniteLossGuard
from peftkit.trainer.imbalance import ImbalanceHandling
from peftkit.trainer.selection import LabelScoringEvaluation
from peftkit.trainer.speed import SeededLengthGrouping


@dataclass(frozen=True)
class TrainerSetup:
    """What the layers need to know, given when the class is composed."""

    attention_kernel: str
    """AttentionKernel: math or default (``trainer_attention_kernel(recipe, args)``)."""
    nonfinite_policy: str = "stop"
    """NonFiniteLossGuard: stop | skip (``safety.on_nonfinite_loss``)."""
    max_skipped_batches: int = 10
    """NonFiniteLossGuard: how many batches skip may drop (``safety.max_skipped_batches``)."""
    imbalance: bool = False
    """Add ImbalanceHandling (tasks trained with the head's cross-entropy)."""
    class_weights: list[float] | None = None
    sample_weights: list[float] | None = None
    """ImbalanceHandling: what ``imbalance.decide`` chose (None: unweighted loss, the usual sampler)."""
    label_scoring: bool = False
    """Add LabelScoringEvaluation (tasks that score label words)."""
    validation_scoring: tuple | None = None
    """LabelScoringEvaluation: (encoder, causal data, chat, batch size, LabelScoring); None: the base evaluate."""
    task_loss: type | None = None
    """A mixin whose ``compute_loss`` is the task's own (the distillation loss)."""
    task_state: dict[str, Any] = field(default_factory=dict)
    """Class attributes the task's loss reads (distill_temperature, distill_alpha)."""
    facts: dict[str, Any] = field(default_factory=dict)
    """What the task measured while building the trainer, for its ``training_facts`` (``trainer.facts``)."""


def setup_for(recipe, args, **choices) -> TrainerSetup:
    """What every task's trainer has (the attention kernel, the recipe's safety section) and the task's `choices`
    (TrainerSetup fields)."""
    return TrainerSetup(attention_kernel=trainer_attention_kernel(recipe, args),
                        nonfinite_policy=recipe.safety.on_nonfinite_loss,
                        max_skipped_batches=recipe.safety.max_skipped_batches, **choices)


def trainer_layers(setup: TrainerSetup) -> tuple[type, ...]:
    """The mixins of `setup`, outermost first (the order in the module docstring)."""
    layers: list[type] = [NonFiniteLossGuard, AttentionKernel]
    if setup.label_scoring:
        layers.append(LabelScoringEvaluation)
    if setup.imbalance:
        layers.append(ImbalanceHandling)
    layers.append(SeededLengthGrouping)
    if setup.task_loss is not None:
        layers.append(setup.task_loss)
    return tuple(layers)


def layer_state(setup: TrainerSetup) -> dict[str, Any]:
    """The class attributes the layers read, from `setup` (an instance may still set its own, as tests do)."""
    state: dict[str, Any] = {"attention_kernel": setup.attention_kernel, "nonfinite_policy": setup.nonfinite_policy,
                             "max_skipped_batches": setup.max_skipped_batches, "facts": dict(setup.facts)}
    if setup.imbalance:
        state |= {"class_weights": setup.class_weights, "sample_weights": setup.sample_weights}
    if setup.label_scoring:
        state["validation_scoring"] = setup.validation_scoring
    return state | dict(setup.task_state)


def trainer_class(base: type, setup: TrainerSetup) -> type:
    """``base`` (Trainer or SFTTrainer) under peftkit's layers, with their state."""
    return type(f"Guarded{base.__name__}", (*trainer_layers(setup), base), layer_state(setup))


def build_trainer(base: type, setup: TrainerSetup, **trainer_kwargs):
    """The run's Trainer: ``trainer_class(base, setup)(**trainer_kwargs)``."""
    return trainer_class(base, setup)(**trainer_kwargs)
