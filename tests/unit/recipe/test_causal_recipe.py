"""Recipes for causal-LM tasks: the train section is a trl.SFTConfig, checked before anything is loaded."""

from __future__ import annotations

import pytest

from peftkit.errors import PeftkitError
from peftkit.recipe import recipe_from_dict, validate


def build(task: str = "sft", fmt: str = "prompt_completion", train: dict | None = None, model: dict | None = None,
          **data):
    recipe = recipe_from_dict({"task": task, "model": {"name_or_path": "x", **(model or {})},
                               "data": {"format": fmt, "train_file": "t.jsonl", **data}, "train": train or {}})
    validate(recipe)
    return recipe


def test_sft_train_keys_are_sftconfig_fields():
    recipe = build(train={"packing_strategy": "bfd", "completion_only_loss": True, "eval_packing": False})
    assert recipe.train["completion_only_loss"] is True


def test_sft_only_keys_are_unknown_for_classification():
    with pytest.raises(PeftkitError, match="unknown key 'train.packing'"):
        recipe_from_dict({"model": {"name_or_path": "x"}, "data": {"train_file": "t.tsv"},
                          "train": {"packing": True}})


def test_typo_in_sft_key_gets_did_you_mean():
    with pytest.raises(PeftkitError, match="unknown key 'train.compleiton_only_loss'; did you mean "
                                           "'train.completion_only_loss'"):
        build(train={"compleiton_only_loss": True})


def test_old_trl_name_max_seq_length_points_to_data_max_length():
    with pytest.raises(PeftkitError, match="unknown key 'train.max_seq_length'; use data.max_length"):
        build(train={"max_seq_length": 64})


@pytest.mark.parametrize("key,hint", [("max_length", "data.max_length"), ("dataset_text_field", "data.text_column"),
                                      ("model_init_kwargs", "model section"), ("output_dir", "top-level output_dir")])
def test_keys_peftkit_sets_are_reserved_with_a_pointer(key, hint):
    with pytest.raises(PeftkitError, match=f"'train.{key}' is set by peftkit; .*{hint}"):
        build(train={key: 1})


def test_sft_defaults_keep_checkpointing_opt_in_leave_precision_to_speed_defaults_and_pack_where_exact():
    train = build().train
    assert "bf16" not in train  # peftkit.trainer.speed chooses it, the same way as for classification
    assert train["activation_checkpointing"] is False and train["packing"] is True
    assert build(model={"attn_implementation": None}).train["packing"] is False
    assert build(train={"packing": False}).train["packing"] is False
    # naming either checkpointing spelling leaves the choice to the recipe
    assert "activation_checkpointing" not in build(train={"gradient_checkpointing": True}).train


@pytest.mark.parametrize("kwargs,message", [
    ({"task": "generative_classification", "fmt": "prompt_completion"}, "set data.format: classification"),
    ({"task": "sft", "fmt": "classification"}, "use task: generative_classification"),
    ({"fmt": "text", "train": {"completion_only_loss": True}}, "silently train on every token"),
    ({"fmt": "messages", "train": {"completion_only_loss": True}}, "use train.assistant_only_loss"),
    ({"fmt": "prompt_completion", "train": {"assistant_only_loss": True}}, "needs chat data"),
    ({"train": {"padding_free": True, "packing": False}}, "keep train.packing: true"),
    ({"fmt": "text", "prompt_template": "Q: {text}"}, "data.format text has none"),
    ({"fmt": "messages", "use_chat_template": True}, "rendered with the chat template already"),
    ({"prompt_template": "Review: {text"}, "not a valid template"),
    ({"prompt_template": "Review: {0}"}, "placeholders must be column names"),
    ({"label_words": {"a": " a"}}, "for task generative_classification"),
    ({"task": "generative_classification", "fmt": "classification", "label_words": {"a": " x", "b": " x"}},
     "same word"),
    ({"max_dropped_fraction": 1.5}, "between 0 and 1"),
    ({"train": {"chat_template_path": "template.txt"}}, ".jinja or .j2"),
])
def test_impossible_causal_combinations_are_named(kwargs, message):
    with pytest.raises(PeftkitError, match=message):
        build(**kwargs)


def test_causal_keys_are_rejected_on_the_classification_task():
    with pytest.raises(PeftkitError, match="'data.prompt_template' is for causal-LM tasks"):
        validate(recipe_from_dict({"model": {"name_or_path": "x"},
                                   "data": {"train_file": "t.tsv", "prompt_template": "{text}"}}))
