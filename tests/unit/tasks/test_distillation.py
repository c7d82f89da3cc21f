"""Distillation (loss, teacher checks, soft-label cache, int8 export, recipe values), on hand-made numbers and the
tiny random run of conftest."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from peftkit.errors import PeftkitError
from peftkit.runs.layout import SOFT_LABELS_FILE


def test_distillation_loss_matches_a_hand_computation():
    import torch

    from peftkit.tasks.distillation.loss import distillation_loss

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    labels = torch.tensor([0, -100])  # the second row is unlabelled: KL only
    t, alpha = 2.0, 0.3

    def softmax(xs):
        e = [math.exp(x) for x in xs]
        return [v / sum(e) for v in e]

    kl = 0.0
    for row_logits, row_teacher in zip(logits.tolist(), teacher.tolist()):
        p_t = softmax([math.log(p) / t for p in row_teacher])  # the teacher softened by T
        p_s = softmax([x / t for x in row_logits])
        kl += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s))
    kl = kl / 2 * t * t
    ce = -math.log(softmax([2.0, 0.0])[0])  # the labelled row only
    expected = alpha * kl + (1 - alpha) * ce
    assert distillation_loss(logits, labels, teacher, t, alpha).item() == pytest.approx(expected, rel=1e-5)
    # no teacher probabilities (evaluation): plain cross-entropy on the labelled rows
    assert distillation_loss(logits, labels, None, t, alpha).item() == pytest.approx(ce, rel=1e-5)


def fake_teacher_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "teacher"
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"weights-1")
    (folder / "recipe.yaml").write_text("task: classification\n")
    (folder / "label_map.json").write_text("{}")
    return folder


def test_soft_labels_are_cached_reused_and_recomputed_when_stale(tmp_path, monkeypatch):
    import torch

    from peftkit.inference import teacher

    calls = []

    def fake_probabilities(run_dir, recipe, texts, batch_size=32):
        calls.append(list(texts))
        return torch.full((len(texts), 2), 0.5)

    monkeypatch.setattr(teacher, "teacher_probabilities", fake_probabilities)
    folder = fake_teacher_folder(tmp_path)
    recipe = SimpleNamespace(task="classification")
    cache = tmp_path / "run" / SOFT_LABELS_FILE
    cache.parent.mkdir()
    teacher.cached_soft_labels(cache, folder, recipe, ["a", "b"], 8)
    teacher.cached_soft_labels(cache, folder, recipe, ["a", "b"], 8)  # a resume: reused
    assert len(calls) == 1 and cache.is_file()
    teacher.cached_soft_labels(cache, folder, recipe, ["a", "c"], 8)  # other texts: recomputed
    assert len(calls) == 2
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"weights-2")  # a retrained teacher
    teacher.cached_soft_labels(cache, folder, recipe, ["a", "c"], 8)
    assert len(calls) == 3
    cache.write_bytes(b"not safetensors")  # a damaged cache is recomputed, never trusted
    assert teacher.cached_soft_labels(cache, folder, recipe, ["a", "c"], 8).shape == (2, 2)
    assert len(calls) == 4
    assert not list(cache.parent.glob(".*tmp*"))


def test_teacher_checks_name_the_field(tiny_run, tmp_path):
    from peftkit.inference.teacher import open_teacher

    _, run_dir = tiny_run
    with pytest.raises(PeftkitError, match=r"distill.teacher: .*does not exist"):
        open_teacher(tmp_path / "nowhere", ["negative", "positive"], "distill.teacher")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PeftkitError, match=r"distill.teacher: .*not a peftkit run folder"):
        open_teacher(tmp_path / "empty", ["negative", "positive"], "distill.teacher")
    with pytest.raises(PeftkitError, match=r"distill.teacher: the teacher's labels \['negative', 'positive'\] are "
                                           r"not this recipe's labels \['positive', 'negative'\]"):
        open_teacher(run_dir, ["positive", "negative"], "distill.teacher")
    assert open_teacher(run_dir, ["negative", "positive"], "distill.teacher")[2] == ["negative", "positive"]


def test_int8_student_round_trips_through_safetensors(tmp_path, tiny_llama_dir, one_torch_thread):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftkit.tasks.distillation.student import load_int8_student, quantize_int8, save_int8

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=2).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    batch = tokenizer(["a film", "another film here"], padding=True, return_tensors="pt")
    for per_channel in (True, False):
        quantized = quantize_int8(model, per_channel=per_channel)
        folder = tmp_path / f"int8-{per_channel}"
        save_int8(quantized, model.config, tokenizer, folder)
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
        _, reloaded = load_int8_student(folder)
        with torch.inference_mode():
            assert torch.equal(quantized(**batch).logits, reloaded(**batch).logits)
            assert not torch.equal(model(**batch).logits, reloaded(**batch).logits)  # it really is quantized


def test_neftune_noise_alpha_reaches_sft_config(tmp_path):
    from peftkit.recipe import recipe_from_dict
    from peftkit.tasks import causal

    recipe = recipe_from_dict({"task": "sft", "output_dir": str(tmp_path / "r"),
                               "model": {"name_or_path": "x"},
                               "data": {"train_file": "t.jsonl", "format": "prompt_completion"},
                               "train": {"neftune_noise_alpha": 5.0}}, where="test")
    assert causal.training_arguments(recipe, tmp_path / "r").neftune_noise_alpha == 5.0


def test_distillation_recipe_values_are_checked(tmp_path):
    from peftkit.recipe import recipe_from_dict, validate

    def load(raw, where):
        validate(recipe_from_dict(raw, where=where))

    base = {"task": "distillation", "model": {"name_or_path": "x"}, "data": {"train_file": "t.tsv"}}
    with pytest.raises(PeftkitError, match="distill.teacher"):
        load(base, where="r.yaml")
    with pytest.raises(PeftkitError, match="distill.alpha"):
        load(base | {"distill": {"teacher": "runs/t", "alpha": 1.5}}, where="r.yaml")
    with pytest.raises(PeftkitError, match="augment.methods"):
        load({**base, "task": "classification", "augment": {"methods": ["backtranslate"]}}, where="r.yaml")
