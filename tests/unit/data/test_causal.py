"""Causal-LM data: formats, the loss masks token by token, the truncation audit, and agreement with TRL itself."""

from __future__ import annotations

import pytest

from peftkit.data.causal import IGNORE, CausalData, CausalSplitReport, load_causal_data
from peftkit.data.causal_encode import Encoder, audit, fit_classification_prompts, prepare_examples
from peftkit.errors import PeftkitError
from peftkit.recipe import recipe_from_dict
from tests.helpers.sft_fixtures import (  # noqa: F401
    CHATML_GENERATION_TEMPLATE,
    SHARED_DATA,
    generation_template_file,
    sft_data_files,
    smollm2_tokenizer,
    tiny_causal_dir,
)

PROMPT = "Review: great\nSentiment:"


def recipe(fmt: str, train_file, task: str = "sft", **data):
    return recipe_from_dict({"task": task, "model": {"name_or_path": "x"},
                             "data": {"format": fmt, "train_file": str(train_file), **data}, "train": {}})


def loss_tokens(tokenizer, enc) -> list[str]:
    return tokenizer.convert_ids_to_tokens([t for t in enc.labels if t != IGNORE])


# ---- the masks, token by token ---------------------------------------------------------------


def test_completion_only_loss_masks_the_prompt_token_by_token(smollm2_tokenizer):
    enc = Encoder(smollm2_tokenizer).encode({"prompt": PROMPT, "completion": " positive"})
    tokens = smollm2_tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert tokens == ["Review", ":", "Ġgreat", "Ċ", "Sent", "iment", ":", "Ġpositive", "<|im_end|>"]
    assert enc.labels == [IGNORE] * 7 + enc.input_ids[7:]
    assert not enc.prompt_boundary_merged


def test_completion_only_loss_off_trains_every_token(smollm2_tokenizer):
    enc = Encoder(smollm2_tokenizer, completion_only_loss=False).encode({"prompt": PROMPT, "completion": " positive"})
    assert enc.labels == enc.input_ids


def test_completion_without_leading_space_is_reported_as_merged(smollm2_tokenizer):
    # "Sentiment:" + "positive" tokenizes ':' differently when glued: TRL starts the completion where they diverge
    enc = Encoder(smollm2_tokenizer).encode({"prompt": "Sentiment", "completion": "al"})
    assert enc.prompt_boundary_merged


def test_assistant_only_loss_masks_everything_but_the_assistant_turn(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    enc = Encoder(tokenizer, assistant_only_loss=True, chat_template=CHATML_GENERATION_TEMPLATE).encode(
        {"messages": messages})
    assert tokenizer.decode([t for t in enc.labels if t != IGNORE]) == "hello there<|im_end|>"
    masked = tokenizer.decode([i for i, t in zip(enc.input_ids, enc.labels) if t == IGNORE])
    assert "<|im_start|>user\nhi<|im_end|>" in masked and masked.endswith("<|im_start|>assistant\n\n")
    # the generation template renders exactly like SmolLM2's own
    assert enc.input_ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]


def test_assistant_only_loss_without_generation_markers_stops_before_the_model(smollm2_tokenizer, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    r = recipe_from_dict({"task": "sft", "model": {"name_or_path": "packaged:smollm2-135m-instruct"},
                          "data": {"format": "messages", "train_file": str(path)},
                          "train": {"assistant_only_loss": True}})
    causal = load_causal_data(r.data, r.task, r.seed)
    with pytest.raises(PeftkitError, match=r"assistant_only_loss.*generation.*chat_template_path"):
        prepare_examples(r, smollm2_tokenizer, causal)


# ---- agreement with TRL's own preparation ------------------------------------------------------

FORMATS = {
    "text": {},
    "prompt_completion": {},
    "prompt_completion_chat": {"use_chat_template": True},
    "messages": {},
    "alpaca": {},
}


@pytest.mark.parametrize("name", list(FORMATS) + ["messages_assistant_only"])
def test_encoder_matches_trl_prepared_dataset(name, sft_data_files, tiny_causal_dir, generation_template_file,
                                              tmp_path):
    """The audit is only as good as its mirror of TRL: compare input ids and labels with SFTTrainer's own."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    fmt = name.removesuffix("_chat").removesuffix("_assistant_only")
    train = {"assistant_only_loss": True, "chat_template_path": str(generation_template_file)} \
        if name == "messages_assistant_only" else {}
    r = recipe_from_dict({"task": "sft", "model": {"name_or_path": str(tiny_causal_dir)},
                          "data": {"format": fmt, "train_file": str(sft_data_files[fmt]), "max_length": 512,
                                   "max_train_samples": 8, **FORMATS.get(name, {})},
                          "train": train})
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    causal = load_causal_data(r.data, r.task, r.seed)
    encoder = prepare_examples(r, tokenizer, causal)
    examples = causal.examples("train")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_causal_dir),
                         args=SFTConfig(output_dir=str(tmp_path), max_length=None, report_to=[], bf16=False,
                                        **{k: v for k, v in r.train.items() if k in train}),
                         train_dataset=datasets.Dataset.from_list(examples), processing_class=tokenizer)
    prepared = trainer.train_dataset
    assert len(prepared) == len(examples)
    for row, example in zip(prepared, examples):
        enc = encoder.encode(example)
        assert row["input_ids"] == enc.input_ids
        assert row["labels"] == enc.labels
    assert any(t == IGNORE for t in enc.labels) == (fmt not in ("text", "messages") or name.endswith("only"))


# ---- the audit ---------------------------------------------------------------------------------


def pairs(prompts_and_completions) -> CausalData:
    prompts, completions = zip(*prompts_and_completions)
    return CausalData(splits={"train": {"prompt": list(prompts), "completion": list(completions)}},
                      reports={"train": CausalSplitReport(source="t.jsonl", rows_read=len(prompts))})


def test_audit_drops_examples_whose_completion_is_cut_off_and_counts_them(smollm2_tokenizer):
    long_prompt = "word " * 40 + "\nAnswer:"
    causal = pairs([(PROMPT, " positive")] * 3 + [(long_prompt, " yes")])
    audit(causal, Encoder(smollm2_tokenizer), max_length=16, max_dropped_fraction=0.5)
    report = causal.reports["train"]
    assert report.no_loss_dropped == 1 and report.truncated == 1 and report.rows_used == 3
    assert causal.splits["train"]["prompt"] == [PROMPT] * 3
    assert report.loss_tokens == 3 * 2  # " positive" and the EOS, per example
    assert "no token to learn from" in report.examples_of_bad_rows[0]


def test_audit_counts_partly_cut_completions(smollm2_tokenizer):
    causal = pairs([(PROMPT, " positive and negative and more")])
    audit(causal, Encoder(smollm2_tokenizer), max_length=9, max_dropped_fraction=0.5)
    assert causal.reports["train"].loss_cut == 1 and causal.reports["train"].loss_tokens == 2


def test_audit_stops_when_truncation_would_drop_most_of_the_data(smollm2_tokenizer):
    long_prompt = "word " * 40 + "\nAnswer:"
    causal = pairs([(long_prompt, " yes")] * 3 + [(PROMPT, " positive")])
    with pytest.raises(PeftkitError, match=r"leaves 3 of 4 train examples with no token to learn from.*max_length"):
        audit(causal, Encoder(smollm2_tokenizer), max_length=16, max_dropped_fraction=0.5)


def test_audit_stops_when_nothing_is_left_even_if_allowed(smollm2_tokenizer):
    causal = pairs([("word " * 40, " yes")])
    with pytest.raises(PeftkitError, match="1 of 1"):
        audit(causal, Encoder(smollm2_tokenizer), max_length=16, max_dropped_fraction=1.0)


# ---- formats -----------------------------------------------------------------------------------


def test_alpaca_rows_use_the_stanford_prompt_with_and_without_input(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "Add.", "input": "1 2", "output": "3"}\n'
                    '{"instruction": "Say hi.", "input": "", "output": "hi"}\n'
                    '{"instruction": "Empty.", "input": "", "output": " "}\n')
    r = recipe("alpaca", path)
    causal = load_causal_data(r.data, r.task, r.seed)
    all_prompts = causal.splits["train"]["prompt"] + causal.splits["eval"]["prompt"]
    assert any("### Input:\n1 2\n\n### Response:\n" in p for p in all_prompts)
    assert any("### Input" not in p and "Say hi." in p for p in all_prompts)
    assert causal.reports["train"].empty_text == 1  # empty output: nothing to learn, skipped and counted


def test_prompt_completion_templates_build_instruction_pairs_from_a_headerless_tsv(tmp_path):
    path = tmp_path / "agnews.tsv"
    path.write_text("Stocks fell sharply today.\tBusiness\nThe team won the cup.\tSports\n")
    r = recipe("prompt_completion", path, has_header=False, column_names=["text", "label"],
               prompt_template="Classify the topic of this news article.\n\n{text}\n\nTopic:",
               completion_template=" {label}", eval_fraction=0.5)
    causal = load_causal_data(r.data, r.task, r.seed)
    examples = causal.examples("train") + causal.examples("eval")
    assert {e["completion"] for e in examples} == {" Business", " Sports"}
    assert all(e["prompt"].startswith("Classify the topic") and e["prompt"].endswith("\n\nTopic:") for e in examples)


def test_a_template_naming_a_missing_column_is_an_error_naming_it(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n')
    r = recipe("prompt_completion", path, prompt_template="Q: {quest}", completion_template=" {answer}")
    with pytest.raises(PeftkitError, match=r"column 'quest' \(data.prompt_template\) not found.*question, answer"):
        load_causal_data(r.data, r.task, r.seed)


def test_messages_rows_are_checked(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                    '{"messages": []}\n{"messages": [{"role": "user"}]}\n')
    r = recipe("messages", path, eval_fraction=0.5)
    causal = load_causal_data(r.data, r.task, r.seed)
    assert causal.reports["train"].empty_text == 2
    assert "messages is empty" in causal.reports["train"].examples_of_bad_rows[0]


def test_generative_classification_shortens_texts_never_the_label(smollm2_tokenizer):
    r = recipe("classification", SHARED_DATA / "sst2" / "dev.tsv", task="generative_classification",
               eval_file=str(SHARED_DATA / "sst2" / "dev.tsv"), text_column="sentence",
               label_names=["negative", "positive"], prompt_template="Review: {text}\nSentiment:",
               max_length=24, max_train_samples=50, max_eval_samples=10)
    causal = load_causal_data(r.data, r.task, r.seed)
    assert causal.label_words == [" negative", " positive"]
    encoder = Encoder(smollm2_tokenizer)
    fit_classification_prompts(causal, r.data, smollm2_tokenizer, 24, encoder)
    report = causal.reports["train"]
    assert report.text_shortened > 0
    for example, label in zip(causal.examples("train"), causal.splits["train"]["label"]):
        enc = encoder.encode(example)
        assert len(enc.input_ids) <= 24
        assert example["completion"] == [" negative", " positive"][label]
        assert example["prompt"].startswith("Review: ") and example["prompt"].endswith("\nSentiment:")
    audit(causal, encoder, 24, 0.5)
    assert report.no_loss_dropped == 0 and report.truncated == 0


def test_label_words_must_name_every_class(tmp_path):
    r = recipe("classification", SHARED_DATA / "sst2" / "dev.tsv", task="generative_classification",
               text_column="sentence", label_names=["negative", "positive"], label_words={"negative": " bad"})
    with pytest.raises(PeftkitError, match=r"label_words must name every class.*missing \['positive'\]"):
        load_causal_data(r.data, r.task, r.seed)
