"""Classification by label scoring: known answers from a hand-set model, and batching that changes nothing."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from peftkit.data.causal import CausalData, CausalSplitReport
from peftkit.data.causal_encode import Encoded, Encoder
from peftkit.evaluation.causal import evaluate_generative, score_labels, sequence_logprobs
from tests.helpers.sft_fixtures import smollm2_tokenizer, tiny_causal_dir  # noqa: F401

PROMPTS = ["Review: great fun\nSentiment:", "Review: dull\nSentiment:"]


class RuleModel(torch.nn.Module):
    """A language model written by hand: after ':' it gives `boost` to " positive", after either label word it
    gives `boost` to the EOS; every other logit is 0. Its log-likelihoods can be worked out on paper. Each logit
    depends on the current token only, so it needs no key/value cache."""

    def __init__(self, tokenizer, boost: float = 5.0):
        super().__init__()
        self.vocab = len(tokenizer)
        self.colon = tokenizer.convert_tokens_to_ids(":")
        self.positive, self.negative = (tokenizer.convert_tokens_to_ids(t) for t in ("Ġpositive", "Ġnegative"))
        self.eos = tokenizer.eos_token_id
        self.boost = torch.nn.Parameter(torch.tensor(boost), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0,
                past_key_values=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.positive] += self.boost * (input_ids == self.colon)
        after_label = (input_ids == self.positive) | (input_ids == self.negative)
        logits[..., self.eos] += self.boost * after_label
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits, past_key_values=None)


def test_label_scores_are_the_summed_log_likelihoods_worked_out_by_hand(smollm2_tokenizer):
    model = RuleModel(smollm2_tokenizer, boost=5.0)
    scores = score_labels(model, Encoder(smollm2_tokenizer), PROMPTS, [" negative", " positive"], chat=False)
    log_z = math.log(math.exp(5.0) + model.vocab - 1)  # one boosted logit, the rest 0
    boosted, plain = 5.0 - log_z, 0.0 - log_z
    # " positive" then EOS: both boosted; " negative": not boosted, its EOS boosted
    for row in scores:
        assert row[1] == pytest.approx(boosted + boosted, abs=1e-4)
        assert row[0] == pytest.approx(plain + boosted, abs=1e-4)


def test_predictions_and_metrics_come_from_the_scores(smollm2_tokenizer):
    model = RuleModel(smollm2_tokenizer)
    causal = CausalData(splits={"eval": {"prompt": PROMPTS * 2, "completion": [" x"] * 4, "label": [1, 0, 1, 1]}},
                        reports={"eval": CausalSplitReport(source="dev.tsv")},
                        label_names=["negative", "positive"], label_words=[" negative", " positive"])
    metrics = evaluate_generative(model, Encoder(smollm2_tokenizer), causal, chat=False, batch_size=3)
    assert metrics["accuracy"] == 0.75  # the rule always says positive
    assert metrics["confusion_matrix"] == [[0, 1], [0, 3]]
    assert metrics["label_words"] == {"negative": " negative", "positive": " positive"}
    assert metrics["method"].startswith("label scoring: sum")


def test_sum_not_mean_a_multi_token_label_is_not_favoured(smollm2_tokenizer):
    """With the first token decided, the tokens after it are near-certain; a mean would divide that one decision
    by the label's length. The sum keeps the 1-token label the model prefers on top."""
    model = RuleModel(smollm2_tokenizer, boost=5.0)
    scores = score_labels(model, Encoder(smollm2_tokenizer), PROMPTS[:1], [" positive", " negative words"],
                          chat=False)
    assert scores[0][0] > scores[0][1]


def test_sequence_logprobs_match_unbatched_unpadded_forward_passes(tiny_causal_dir, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    encoder = Encoder(smollm2_tokenizer)
    encoded = [encoder.encode({"prompt": p, "completion": c})
               for p in PROMPTS + ["Short:"] for c in (" negative", " positive", " quite long completion here")]
    expected = []
    with torch.no_grad():
        for enc in encoded:
            logp = torch.log_softmax(model(input_ids=torch.tensor([enc.input_ids])).logits[0, :-1], -1)
            expected.append(sum(float(logp[t - 1, tok]) for t, tok in enumerate(enc.labels) if t and tok != -100))
    for batch_size in (1, 4, 32):
        got = sequence_logprobs(model, encoded, smollm2_tokenizer.pad_token_id, batch_size)
        assert [s for s, _ in got] == pytest.approx(expected, abs=1e-4)
        assert [n for _, n in got] == [sum(t != -100 for t in e.labels[1:]) for e in encoded]


def test_sequences_without_labelled_tokens_score_zero(tiny_causal_dir, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    got = sequence_logprobs(model, [Encoded([1, 2, 3], [-100, -100, -100]), Encoded([4, 5], [-100, 5])],
                            smollm2_tokenizer.pad_token_id)
    assert got[0] == (0.0, 0) and got[1][1] == 1


@pytest.mark.parametrize("chat", [False, True])
def test_shared_prompt_scoring_equals_one_full_sequence_per_label(chat, tiny_causal_dir, smollm2_tokenizer):
    """The cached path (prompt once, each label continued on its key/value cache) against full sequences, with
    labels of 1 to 3 tokens and a prompt whose last token merges into a label (scored the full way)."""
    from transformers import AutoModelForCausalLM

    from peftkit.data.causal import completion_part

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    words = [" negative", " positive", " Sci/Tech", "al"]
    prompts = PROMPTS + ["Sentiment", "Review: the acting , costumes , music , cinematography are all astounding\n"]
    if chat:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    scorer = Encoder(smollm2_tokenizer, completion_only_loss=True)
    full = sequence_logprobs(model, [scorer.encode({"prompt": p, "completion": completion_part(w, chat)})
                                     for p in prompts for w in words], smollm2_tokenizer.pad_token_id)
    expected = [[full[i * len(words) + j][0] for j in range(len(words))] for i in range(len(prompts))]
    got = score_labels(model, Encoder(smollm2_tokenizer), prompts, words, chat=chat, batch_size=3)
    for row_got, row_expected in zip(got, expected):
        assert row_got == pytest.approx(row_expected, abs=1e-4)
