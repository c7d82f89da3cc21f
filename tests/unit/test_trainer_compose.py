"""The class that trains is composed in one place (peftkit.trainer.trainer), in one named order, with the
state of its layers given when it is made; no task nests wrappers or attaches layer state afterwards."""

from __future__ import annotations

import ast
from pathlib import Path

from peftkit.trainer.attention import AttentionKernel
from peftkit.trainer.guards import NonFiniteLossGuard
from peftkit.trainer.imbalance import ImbalanceHandling
from peftkit.trainer.selection import LabelScoringEvaluation
from peftkit.trainer.speed import SeededLengthGrouping
from peftkit.trainer.trainer import TrainerSetup, trainer_class, trainer_layers

TASKS_DIR = Path(__file__).resolve().parents[2] / "peftkit" / "tasks"
LAYER_STATE = {"attention_kernel", "nonfinite_policy", "max_skipped_batches", "class_weights", "sample_weights",
               "validation_scoring", "distill_temperature", "distill_alpha", "facts", "imbalance_facts",
               "distill_facts"}


class Base:
    """Stands in for transformers.Trainer: the methods the layers override, each saying who answered."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def _get_train_sampler(self, train_dataset=None):
        return "base sampler"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return "base loss"


class TaskLoss:
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return f"task loss ({self.distill_alpha})"


def test_the_layers_come_in_one_fixed_order():
    everything = TrainerSetup(attention_kernel="math", imbalance=True, label_scoring=True, task_loss=TaskLoss)
    assert trainer_layers(everything) == (NonFiniteLossGuard, AttentionKernel, LabelScoringEvaluation,
                                          ImbalanceHandling, SeededLengthGrouping, TaskLoss)
    assert trainer_layers(TrainerSetup(attention_kernel="default")) == (NonFiniteLossGuard, AttentionKernel,
                                                                         SeededLengthGrouping)


def test_the_state_is_given_when_the_class_is_made():
    setup = TrainerSetup(attention_kernel="math", nonfinite_policy="skip", max_skipped_batches=3, imbalance=True,
                         class_weights=[0.5, 2.0], facts={"strategy": "class_weights"}, task_loss=TaskLoss,
                         task_state={"distill_alpha": 0.25})
    trainer = trainer_class(Base, setup)(model=None)
    assert (trainer.attention_kernel, trainer.nonfinite_policy, trainer.max_skipped_batches) == ("math", "skip", 3)
    assert trainer.class_weights == [0.5, 2.0] and trainer.sample_weights is None
    assert trainer.facts == {"strategy": "class_weights"} and trainer.kwargs == {"model": None}
    assert type(trainer).__name__ == "GuardedBase"


def test_each_layer_passes_on_what_it_does_not_handle():
    plain = trainer_class(Base, TrainerSetup(attention_kernel="default", imbalance=True))()
    plain.args = type("Args", (), {"train_sampling_strategy": "random"})()
    plain.train_dataset = None
    assert plain._get_train_sampler() == "base sampler"  # no sample weights, no length grouping
    assert plain.compute_loss(None, {}) == "base loss"  # no class weights
    distilling = trainer_class(Base, TrainerSetup(attention_kernel="default", task_loss=TaskLoss,
                                                  task_state={"distill_alpha": 0.25}))()
    assert distilling.compute_loss(None, {}) == "task loss (0.25)"


def attached_state(source: str) -> list[str]:
    """`trainer.X = ...` assignments of layer state in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "trainer" \
                        and t.attr in LAYER_STATE:
                    found.append(f"{node.lineno}: trainer.{t.attr}")
    return found


def test_the_search_for_attached_state_finds_one():
    assert attached_state("trainer.class_weights, trainer.x = w, 1\ntrainer.data_collator = c\n") == [
        "1: trainer.class_weights"]


def test_no_task_attaches_layer_state_or_nests_wrappers():
    for path in sorted(TASKS_DIR.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        assert not attached_state(source), f"{path.name}: pass it in TrainerSetup: {attached_state(source)}"
        assert "guarded(" not in source and "with_attention_kernel(" not in source, path.name
