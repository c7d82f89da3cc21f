"""evaluate.label_score (sum | mean | calibrated) and evaluate.bf16: worked out by hand on a hand-set model, and the
recipe options that choose them (peftkit/evaluation/label_scoring.py)."""

from __future__ import annotations

import math

import pytest
import torch

from peftkit.data.causal_encode import Encoder
from peftkit.errors import PeftkitError
from peftkit.evaluation.label_scoring import LabelScoring, apply_label_score, score_labels, summed_label_scores
from tests.helpers.sft_fixtures import REPO, smollm2_tokenizer, tiny_causal_dir  # noqa: F401
from tests.unit.evaluation.test_causal import PROMPTS, RuleModel


def test_apply_label_score_by_hand():
    sums, counts = [[-2.0, -3.0]], [[2, 3]]
    assert apply_label_score(sums, counts, "sum") == [[-2.0, -3.0]]
    assert apply_label_score(sums, counts, "mean") == [[-1.0, -1.0]]
    assert apply_label_score(sums, counts, "calibrated", offsets=[-1.0, -4.0]) == [[-1.0, 1.0]]
    with pytest.raises(ValueError, match="unknown label score"):
        apply_label_score(sums, counts, "max")


def test_mean_divides_by_the_completion_tokens_eos_included(smollm2_tokenizer):
    model = RuleModel(smollm2_tokenizer, boost=5.0)
    words = [" positive", " negative words"]  # 1 + EOS and 2 + EOS tokens
    sums, counts = summed_label_scores(model, Encoder(smollm2_tokenizer), PROMPTS[:1], words, chat=False)
    assert counts == [[2, 3]]
    mean = score_labels(model, Encoder(smollm2_tokenizer), PROMPTS[:1], words, chat=False,
                        scoring=LabelScoring("mean"))
    assert mean[0] == pytest.approx([sums[0][0] / 2, sums[0][1] / 3])


def test_calibrated_subtracts_the_label_score_after_the_content_free_prompt(smollm2_tokenizer):
    """The rule model boosts " positive" after ':' and the EOS after a label word. After "N/A" (no ':') no label
    word is boosted, so calibration leaves the boost the prompt's ':' gave " positive" (and the two normalisers)."""
    model = RuleModel(smollm2_tokenizer, boost=5.0)
    scores = score_labels(model, Encoder(smollm2_tokenizer), PROMPTS, [" negative", " positive"], chat=False,
                          scoring=LabelScoring("calibrated", content_free_prompt="N/A"))
    boosted_z, plain_z = math.log(math.exp(5.0) + model.vocab - 1), math.log(model.vocab)
    # after ':': first token -boosted_z (negative) or 5 - boosted_z (positive); after "N/A": -plain_z for both;
    # the EOS after the label word is 5 - boosted_z in all four and cancels
    for row in scores:
        assert row == pytest.approx([plain_z - boosted_z, 5.0 + plain_z - boosted_z], abs=1e-4)
    with pytest.raises(ValueError, match="content_free_prompt"):
        score_labels(model, Encoder(smollm2_tokenizer), PROMPTS, [" negative"], chat=False,
                     scoring=LabelScoring("calibrated"))


def test_bf16_scoring_is_close_and_leaves_the_lm_head_as_it_was(tiny_causal_dir, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    words = [" negative", " positive", " Sci/Tech"]
    exact = score_labels(model, Encoder(smollm2_tokenizer), PROMPTS, words, chat=False)
    fast = score_labels(model, Encoder(smollm2_tokenizer), PROMPTS, words, chat=False, scoring=LabelScoring(bf16=True))
    assert fast != exact  # bf16 really ran: the scores moved ...
    for a, b in zip(exact, fast):
        assert a == pytest.approx(b, abs=0.05)  # ... by little
    head = model.get_output_embeddings()
    assert "forward" not in vars(head) and head.weight.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_recipe_options_reach_the_scoring_and_are_refused_where_nothing_scores_labels():
    from peftkit.evaluation.causal import label_scoring
    from peftkit.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes/sst2/smollm2_lora_gen.yaml", ["evaluate.label_score=calibrated",
                                                                         "evaluate.bf16=true"])
    scoring = label_scoring(recipe)
    assert scoring == LabelScoring("calibrated", "Review: N/A\nSentiment:", True)
    assert label_scoring(load_recipe(REPO / "recipes/sst2/smollm2_lora_gen.yaml")).method == "sum"
    with pytest.raises(PeftkitError, match="evaluate.label_score.*generative_classification"):
        load_recipe(REPO / "recipes/sst2/minilm_lora_cls.yaml", ["evaluate.label_score=mean"])
    with pytest.raises(PeftkitError, match="evaluate.label_score"):
        load_recipe(REPO / "recipes/sst2/smollm2_lora_gen.yaml", ["evaluate.label_score=max"])
