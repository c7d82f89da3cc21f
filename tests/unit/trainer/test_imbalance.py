"""Imbalanced classes: the auto decision, the weighted loss, balanced sampling, and the never-predicted warning."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from peftkit.evaluation.metrics import classification_metrics, format_metrics
from peftkit.recipe import recipe_from_dict
from peftkit.trainer.imbalance import decide, with_imbalance_handling
from tests.conftest import SST2, tiny_recipe, write_recipe


def _recipe(strategy="auto", task="classification", ratio=3.0):
    raw = tiny_recipe(Path("m"), {"train": Path("t.tsv"), "dev": Path("d.tsv")}, Path("run"),
                      imbalance={"strategy": strategy, "auto_ratio": ratio}, task=task)
    return recipe_from_dict(raw)


def test_auto_weights_the_loss_only_above_the_ratio_and_says_so():
    names = ["a", "b", "c"]
    balanced = decide(_recipe(), [0] * 10 + [1] * 9 + [2] * 8, names)
    assert balanced.strategy == "none" and balanced.class_weights is None and "unweighted" in balanced.line
    skewed = decide(_recipe(), [0] * 40 + [1] * 40 + [2] * 4, names)
    assert skewed.strategy == "class_weights" and "auto turned on" in skewed.line and "10.0x" in skewed.line
    assert skewed.class_weights == pytest.approx([84 / 120, 84 / 120, 84 / 12])
    assert decide(_recipe(ratio=20), [0] * 40 + [1] * 40 + [2] * 4, names).strategy == "none"
    assert decide(_recipe("none"), [0] * 40 + [1] * 4, names[:2]).strategy == "none"
    assert decide(_recipe("class_weights"), [0] * 5 + [1] * 5, names[:2]).class_weights == [1.0, 1.0]
    sampled = decide(_recipe("balanced_sampling"), [0] * 8 + [1] * 2, names[:2])
    assert sampled.strategy == "balanced_sampling" and sampled.sample_weights[0] * 4 == sampled.sample_weights[-1]


def test_generative_classification_is_never_weighted():
    d = decide(_recipe(task="generative_classification"), [0] * 40 + [1] * 4, ["a", "b"])
    assert d.strategy == "none" and "trains unweighted" in d.line


def test_weighted_loss_is_the_weighted_mean_cross_entropy():
    import torch
    import torch.nn.functional as F

    class Base:
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            raise AssertionError("the weighted path must not fall back")

    trainer = with_imbalance_handling(Base)()
    trainer.class_weights = [0.5, 4.0]
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    model = lambda **inputs: {"logits": logits}  # noqa: E731
    loss = trainer.compute_loss(model, {"input_ids": torch.zeros(3, 2), "labels": labels})
    per_row = F.cross_entropy(logits, labels, reduction="none")
    w = torch.tensor([0.5, 4.0, 0.5])
    assert float(loss) == pytest.approx(float((w * per_row).sum() / w.sum()))
    assert float(loss) != pytest.approx(float(per_row.mean()))


def test_balanced_sampler_draws_classes_evenly_and_repeatably():
    import torch

    class Base:
        args = type("A", (), {"data_seed": 3, "seed": 42})()

    trainer = with_imbalance_handling(Base)()
    labels = [0] * 900 + [1] * 100
    trainer.sample_weights = decide(_recipe("balanced_sampling"), labels, ["a", "b"]).sample_weights
    drawn = list(trainer._get_train_sampler())
    counts = Counter(labels[i] for i in drawn)
    assert 400 < counts[1] < 600  # ~50% instead of 10%
    assert list(with_imbalance_handling(Base)._get_train_sampler(trainer)) == drawn
    assert isinstance(trainer._get_train_sampler(), torch.utils.data.WeightedRandomSampler)


def test_report_warns_about_a_class_never_predicted():
    metrics = classification_metrics([0, 1, 2, 2], [0, 0, 2, 2], ["World", "Sports", "Business"])
    assert metrics["never_predicted"] == ["Sports"]
    assert "WARNING: never predicted: Sports" in format_metrics(metrics)
    fine = classification_metrics([0, 1], [0, 1], ["a", "b"])
    assert fine["never_predicted"] == [] and "never predicted" not in format_metrics(fine)


def test_an_imbalanced_run_turns_class_weights_on(tmp_path, tiny_llama_dir, one_torch_thread, capsys):
    from peftkit.recipe import load_recipe
    from peftkit.run import run

    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    negatives = [line for line in lines[1:400] if line.endswith("\t0")][:60]
    positives = [line for line in lines[1:400] if line.endswith("\t1")][:6]
    train = tmp_path / "train.tsv"
    train.write_text("\n".join([lines[0], *negatives, *positives]) + "\n", encoding="utf-8")
    dev = tmp_path / "dev.tsv"
    dev.write_text("\n".join((SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()[:21]) + "\n")
    raw = tiny_recipe(tiny_llama_dir, {"train": train, "dev": dev}, tmp_path / "run")
    run(load_recipe(write_recipe(tmp_path / "recipe.yaml", raw)))
    out = capsys.readouterr().out
    assert "largest/smallest training class 10.0x (negative 60, positive 6)" in out and "class-weighted loss" in out
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["imbalance"]["strategy"] == "class_weights"
    assert summary["imbalance"]["class_weights"] == pytest.approx([66 / 120, 66 / 12])
