"""How a multitask run mixes its tasks' training examples: how many of each, and in which order.

proportional: every task's rows once, so a task's share of the training is its share of the rows.
temperature T: task i gets a share n_i^(1/T) / sum_j n_j^(1/T) of the same total (T=1: proportional; larger T:
closer to equal shares, so a small task is not drowned by a large one; the rule of multilingual BERT / T5's
"temperature-scaled mixing"). A task that needs more examples than it has repeats all its rows, then a seeded
sample of them; one that needs fewer gets a seeded sample without repeats.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any


def task_counts(sizes: dict[str, int], rule: str, temperature: float = 1.0) -> dict[str, int]:
    """Examples of each task in the mixed training set; the total is always sum(sizes)."""
    if rule == "proportional":
        return dict(sizes)
    if rule != "temperature":
        raise ValueError(f"unknown mixing rule {rule!r}")
    total = sum(sizes.values())
    weights = {name: n ** (1.0 / temperature) if n else 0.0 for name, n in sizes.items()}
    norm = sum(weights.values())
    exact = {name: total * w / norm for name, w in weights.items()}
    counts = {name: int(x) for name, x in exact.items()}
    # largest remainder: the rounding keeps the total exactly (ties broken by task order, stable)
    by_remainder = sorted(exact, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def mix(examples: dict[str, Sequence[Any]], counts: dict[str, int], seed: int) -> list[Any]:
    """The mixed training examples, seeded: each task's rows drawn as ``counts`` says, then shuffled together."""
    rng = random.Random(seed)
    mixed: list[Any] = []
    for name, rows in examples.items():
        n = counts[name]
        whole, rest = divmod(n, len(rows)) if rows else (0, 0)
        mixed.extend(list(rows) * whole)
        mixed.extend(rng.sample(list(rows), rest))
    rng.shuffle(mixed)
    return mixed


def describe(sizes: dict[str, int], counts: dict[str, int], rule: str, temperature: float) -> str:
    how = "proportional" if rule == "proportional" else f"temperature T={temperature:g}"
    parts = [f"{name} {counts[name]:,} of {sizes[name]:,} rows ({counts[name] / max(sum(counts.values()), 1):.0%})"
             for name in sizes]
    return f"task mixing ({how}): " + ", ".join(parts)
