"""`peftkit generate` on sft runs builds the prompt as the run was trained: its template, and the chat template
only when the run used one."""

from __future__ import annotations

import pytest

from peftkit.errors import PeftkitError
from peftkit.recipe import recipe_from_dict
from peftkit.serve.generate import format_label_probabilities, sft_prompt_ids
from tests.helpers.sft_fixtures import smollm2_tokenizer  # noqa: F401


def sft_recipe(**data):
    return recipe_from_dict({"task": "sft", "model": {"name_or_path": "x"},
                             "data": {"train_file": "t.jsonl", "format": "prompt_completion", **data}})


def test_template_applied_without_chat_unless_the_run_used_it(smollm2_tokenizer):
    plain = sft_recipe(prompt_template="Question: {question}\nAnswer:", completion_template=" {answer}")
    ids = sft_prompt_ids(plain, smollm2_tokenizer, "why?")[0].tolist()
    assert ids == smollm2_tokenizer("Question: why?\nAnswer:")["input_ids"]
    chat = sft_recipe(prompt_template="Question: {question}", completion_template="{answer}", use_chat_template=True)
    text = smollm2_tokenizer.decode(sft_prompt_ids(chat, smollm2_tokenizer, "why?")[0])
    assert "<|im_start|>user\nQuestion: why?<|im_end|>" in text and text.rstrip().endswith("assistant")
    bare = sft_recipe()
    assert sft_prompt_ids(bare, smollm2_tokenizer, "hi")[0].tolist() == smollm2_tokenizer("hi")["input_ids"]


def test_a_template_with_several_fields_asks_for_raw(smollm2_tokenizer):
    recipe = sft_recipe(prompt_template="{instruction}\n{context}", completion_template="{answer}")
    with pytest.raises(PeftkitError, match="--raw"):
        sft_prompt_ids(recipe, smollm2_tokenizer, "x")


def test_label_probabilities_print_best_first():
    assert format_label_probabilities([("World", 0.7), ("Sci/Tech", 0.3)]) == "World     0.7000\nSci/Tech  0.3000"
