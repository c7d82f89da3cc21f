"""Recipe loading: defaults in one place, overrides, pass-through to TrainingArguments, clear errors."""

from __future__ import annotations

import pytest

from peftkit.errors import PeftkitError
from peftkit.recipe import TRAIN_DEFAULTS, load_recipe, recipe_from_dict

MINIMAL = {"model": {"name_or_path": "org/model"}, "data": {"train_file": "train.tsv"}}


def test_defaults_fill_every_section():
    recipe = recipe_from_dict(MINIMAL)
    assert recipe.task == "classification"
    assert recipe.adapter.r == 16 and recipe.adapter.target_modules == "all-linear"
    assert recipe.quantization.enabled is False
    assert recipe.model.trust_remote_code is False and recipe.model.allow_pickle is False
    assert recipe.train == TRAIN_DEFAULTS


def test_train_section_goes_straight_to_training_arguments(tmp_path):
    from transformers import TrainingArguments

    recipe = recipe_from_dict({**MINIMAL, "train": {"learning_rate": "3e-4", "gradient_accumulation_steps": 2,
                                                     "lr_scheduler_type": "cosine"}})
    assert recipe.train["learning_rate"] == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string
    args = TrainingArguments(output_dir=str(tmp_path), **recipe.train)
    assert args.gradient_accumulation_steps == 2 and args.lr_scheduler_type == "cosine"


def test_overrides_parse_values_as_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name_or_path: org/model}\ndata: {train_file: t.tsv}\n")
    recipe = load_recipe(path, ["train.learning_rate=1e-4", "adapter.r=8", "data.label_names=[a, b]",
                                "quantization.load_in_4bit=true"])
    assert recipe.train["learning_rate"] == pytest.approx(1e-4)
    assert recipe.adapter.r == 8 and recipe.data.label_names == ["a", "b"]
    assert recipe.quantization.load_in_4bit is True


def test_resolved_recipe_round_trips():
    recipe = recipe_from_dict({**MINIMAL, "adapter": {"use_dora": True}})
    again = recipe_from_dict(recipe.to_dict())
    assert again.to_dict() == recipe.to_dict()


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(PeftkitError, match=r"unknown key 'adapter.lora_alhpa'; did you mean 'adapter.lora_alpha'"):
        recipe_from_dict({**MINIMAL, "adapter": {"lora_alhpa": 16}})


def test_unknown_train_key_is_checked_against_training_arguments():
    with pytest.raises(PeftkitError, match=r"train.learnig_rate'; did you mean 'train.learning_rate'"):
        recipe_from_dict({**MINIMAL, "train": {"learnig_rate": 1e-4}})
