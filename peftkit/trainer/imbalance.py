"""Imbalanced classes: a class-weighted loss or class-balanced batches for the classification head.

``imbalance.strategy: auto`` (the default) looks at the training rows: when the largest class has more than
``imbalance.auto_ratio`` times the rows of the smallest, the loss is weighted by n / (classes x n_class) (the
"balanced" weights of scikit-learn) and the run says so in one line; otherwise nothing changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peftkit.recipe import Recipe
from peftkit.recipe.task_traits import traits_of


@dataclass
class Decision:
    strategy: str
    """none | class_weights | balanced_sampling (what the run does, auto resolved)."""
    counts: list[int]
    ratio: float
    line: str
    class_weights: list[float] | None = None
    sample_weights: list[float] | None = None

    def facts(self) -> dict[str, Any]:
        return {"imbalance": {"strategy": self.strategy, "train_class_counts": self.counts,
                              "largest_to_smallest": round(self.ratio, 2), "class_weights": self.class_weights}}


def decide(recipe: Recipe, labels: Sequence[int], label_names: list[str]) -> Decision:
    """What the run does about class sizes in its training rows, and the line that says it."""
    counts = Counter(labels)
    sizes = [counts.get(i, 0) for i in range(len(label_names))]
    present = [n for n in sizes if n > 0]
    ratio = max(present) / min(present) if present else 1.0
    big, small = max(range(len(sizes)), key=sizes.__getitem__), min(range(len(sizes)), key=sizes.__getitem__)
    shape = (f"largest/smallest training class {ratio:.1f}x ({label_names[big]} {sizes[big]}, "
             f"{label_names[small]} {sizes[small]})")
    wanted = recipe.imbalance.strategy
    if wanted == "auto":
        if ratio <= recipe.imbalance.auto_ratio:
            return Decision("none", sizes, ratio, f"imbalance: {shape}, at most {recipe.imbalance.auto_ratio:g}x: "
                                                    "unweighted loss")
        wanted = "class_weights"
        why = f"above imbalance.auto_ratio {recipe.imbalance.auto_ratio:g}x, so imbalance.strategy auto turned on"
    else:
        why = f"imbalance.strategy {wanted}"
    if not traits_of(recipe.task).class_weights:
        return Decision("none", sizes, ratio, f"imbalance: {shape}; task {recipe.task} trains unweighted "
                                                "(class weights are for the classification head)")
    if wanted == "none":
        return Decision("none", sizes, ratio, f"imbalance: {shape}; unweighted loss (imbalance.strategy none)")
    n, k = sum(sizes), len(sizes)
    weights = [n / (k * c) if c else 0.0 for c in sizes]
    if wanted == "class_weights":
        pretty = ", ".join(f"{name} {w:.2f}" for name, w in zip(label_names, weights))
        return Decision("class_weights", sizes, ratio, f"imbalance: {shape}, {why}: class-weighted loss ({pretty})",
                        class_weights=weights)
    return Decision("balanced_sampling", sizes, ratio,
                    f"imbalance: {shape}, {why}: batches drawn with replacement, each class equally likely "
                    "(replaces length-grouped batches)", sample_weights=[weights[y] for y in labels])


class ImbalanceHandling:
    """Trainer mixin: an optional class-weighted cross-entropy and an optional class-balanced sampler.

    The weighted loss is the per-batch weighted mean, sum_i w_yi * CE_i / sum_i w_yi, the same convention as the
    unweighted mean loss it replaces: with ``distributed.disable_token_count_loss_scaling`` the Trainer divides it
    by the accumulation steps and DDP averages gradients over ranks, as for the plain loss.
    """

    class_weights: list[float] | None = None
    sample_weights: list[float] | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.class_weights is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        import torch
        import torch.nn.functional as F

        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weight = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.view(-1), weight=weight)
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        import torch

        generator = torch.Generator()
        generator.manual_seed(self.args.data_seed if self.args.data_seed is not None else self.args.seed)
        return torch.utils.data.WeightedRandomSampler(self.sample_weights, num_samples=len(self.sample_weights),
                                                      replacement=True, generator=generator)


def with_imbalance_handling(trainer_class: type) -> type:
    """``trainer_class`` with the :class:`ImbalanceHandling` mixin (the one layer alone)."""
    return type(trainer_class.__name__, (ImbalanceHandling, trainer_class), {})

