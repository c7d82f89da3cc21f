"""Model card: hub metadata with measured metrics, a complete body, parseable by huggingface_hub, offline."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from peftkit.errors import PeftkitError
from peftkit.push.card import build_model_card
from tests.helpers.fake_run import BASE_HUB_ID, LABELS, METRICS, build_run

REPO_ID = "someone/smollm2-sentiment-lora"
EXPECTED_MODEL_INDEX = {
    "accuracy": METRICS["accuracy"],
    "f1": METRICS["macro_f1"],
    "precision": METRICS["macro_precision"],
    "recall": METRICS["macro_recall"],
}


@pytest.fixture(scope="module")
def template_run(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("template"))


@pytest.fixture
def run_dir(template_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template_run, tmp_path / "run"))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Building a card must not touch the network (ModelCard.validate would)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access while building a model card")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_recipe(run_dir: Path, section: str, **changes) -> None:
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe.setdefault(section, {}).update(changes)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def test_card_round_trips_through_text_and_file(run_dir, tmp_path):
    card = build_model_card(run_dir, merged=False, repo_id=REPO_ID)
    reparsed = ModelCard(str(card))
    assert reparsed.data.to_dict() == card.data.to_dict()
    assert reparsed.text == card.text
    card.save(tmp_path / "README.md")
    assert ModelCard.load(tmp_path / "README.md").data.to_dict() == card.data.to_dict()


def test_model_index_holds_the_measured_metrics(run_dir):
    data = ModelCard(str(build_model_card(run_dir, merged=False, repo_id=REPO_ID))).data
    assert data.model_name == REPO_ID
    assert {r.metric_type: r.metric_value for r in data.eval_results} == EXPECTED_MODEL_INDEX
    for result in data.eval_results:
        assert result.task_type == "text-classification"
        assert result.dataset_split == "eval"
        assert result.dataset_name == "sentiment_eval.jsonl"  # the file's name, not the local path
    model_index = data.to_dict()["model-index"]
    assert len(model_index[0]["results"]) == 1  # one task/dataset, four metrics


def test_adapter_card_metadata(run_dir):
    meta = build_model_card(run_dir, merged=False, repo_id=REPO_ID).data.to_dict()
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == BASE_HUB_ID
    assert meta["base_model_relation"] == "adapter"
    assert meta["pipeline_tag"] == "text-classification"
    assert {"peftkit", "lora", "text-classification"} <= set(meta["tags"])
    assert "datasets" not in meta and "license" not in meta  # neither is known for this run


def test_merged_card_uses_plain_transformers(run_dir):
    card = build_model_card(run_dir, merged=True, repo_id=REPO_ID)
    assert card.data.library_name == "transformers"
    assert card.data.base_model_relation == "finetune"
    assert "AutoModelForSequenceClassification.from_pretrained(\"someone/smollm2-sentiment-lora\")" in card.text
    assert "AutoPeftModel" not in card.text and "PeftModel" not in card.text


def test_body_has_metrics_recipe_usage_hardware_and_limitations(run_dir):
    text = build_model_card(run_dir, merged=False, repo_id=REPO_ID).text
    assert "| Accuracy | 0.8125 |" in text
    assert "| Macro F1 | 0.7984 |" in text
    for label in LABELS:
        assert re.search(rf"^\| {label} \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| \d+ \|$", text, re.M)
    assert "| negative | 5 | 1 | 0 |" in text  # confusion matrix row
    assert f"[`{BASE_HUB_ID}`]" in text
    assert "`sentiment_train.jsonl`" in text and "/home/someone" not in text.split("```yaml")[0]
    assert "AutoPeftModelForSequenceClassification.from_pretrained(" in text
    assert "num_labels=3" in text and "'negative': 0" in text
    assert "CPU: 2 cores (test machine)" in text and "413 s" in text
    assert "## Limitations" in text


def test_recipe_block_is_the_recipe(run_dir):
    text = build_model_card(run_dir, merged=False, repo_id=REPO_ID).text
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    assert yaml.safe_load(block) == yaml.safe_load((run_dir / "recipe.yaml").read_text())


def test_credentials_in_recipe_are_not_shown(run_dir):
    _edit_recipe(run_dir, "train", hub_token="hf_NOTONTHECARD")
    card = build_model_card(run_dir, merged=False, repo_id=REPO_ID)
    assert "hf_NOTONTHECARD" not in str(card)
    assert "hub_token" not in str(card)


def test_hub_dataset_and_license_become_metadata(run_dir):
    _edit_recipe(run_dir, "data", dataset="someone/sentiment-small")
    _edit_json(run_dir / "train_summary.json", base_model_license="apache-2.0")
    card = ModelCard(str(build_model_card(run_dir, merged=False, repo_id=REPO_ID)))
    assert card.data.datasets == ["someone/sentiment-small"]
    assert card.data.license == "apache-2.0"
    assert {r.dataset_type for r in card.data.eval_results} == {"someone/sentiment-small"}


def test_quantized_training_is_tagged_and_explained(run_dir):
    _edit_recipe(run_dir, "quantization", load_in_4bit=True)  # the recipe's own key (a fake `mode` key hid a bug)
    card = build_model_card(run_dir, merged=False, repo_id=REPO_ID)
    assert "qlora" in card.data.tags
    assert "4-bit quantized base" in card.text


def test_unknown_base_model_asks_for_base_model_id(run_dir):
    _edit_json(run_dir / "train_summary.json", base_model_hub_id=None)  # recipe points at a local path
    with pytest.raises(PeftkitError, match="--base-model-id"):
        build_model_card(run_dir, merged=False, repo_id=REPO_ID)
    card = build_model_card(run_dir, merged=False, repo_id=REPO_ID, base_model_id="someone/base")
    assert card.data.base_model == "someone/base"


def test_hub_id_in_recipe_is_used_when_summary_has_none(run_dir):
    _edit_json(run_dir / "train_summary.json", base_model_hub_id=None)
    _edit_recipe(run_dir, "model", name_or_path="someone/other-base")
    assert build_model_card(run_dir, merged=False, repo_id=REPO_ID).data.base_model == "someone/other-base"


def test_missing_run_files_are_named(run_dir):
    (run_dir / "metrics.json").unlink()
    (run_dir / "label_map.json").unlink()
    with pytest.raises(PeftkitError, match=r"missing metrics\.json, label_map\.json"):
        build_model_card(run_dir, merged=False, repo_id=REPO_ID)


def test_corrupt_run_file_is_a_clear_error(run_dir):
    (run_dir / "metrics.json").write_text("{not json")
    with pytest.raises(PeftkitError, match="metrics.json is not valid JSON"):
        build_model_card(run_dir, merged=False, repo_id=REPO_ID)


def _make_sft_run(run_dir: Path) -> None:
    """The fake run as an SFT run leaves it: no label map, loss metrics."""
    _edit_recipe_top(run_dir, task="sft")
    _edit_recipe(run_dir, "data", format="prompt_completion", label_names=None)
    (run_dir / "label_map.json").unlink()
    (run_dir / "metrics.json").write_text(json.dumps({"eval_loss": 1.2345, "perplexity": 3.437, "loss_tokens": 900,
                                                      "num_examples": 40, "split": "eval"}))


def _edit_recipe_top(run_dir: Path, **values) -> None:
    path = run_dir / "recipe.yaml"
    recipe = yaml.safe_load(path.read_text())
    recipe.update(values)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def test_sft_run_card_describes_generation_and_its_loss(run_dir):
    _make_sft_run(run_dir)
    card = ModelCard(str(build_model_card(run_dir, merged=False, repo_id=REPO_ID)))
    assert card.data.pipeline_tag == "text-generation"
    assert "text-generation" in card.data.tags and "text-classification" not in card.data.tags
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"loss": 1.2345, "perplexity": 3.437}
    assert "**text generation**" in card.text and "**Eval loss:** 1.2345" in card.text
    assert "classification head" not in card.text and "Per class" not in card.text
    assert "AutoPeftModelForCausalLM" in card.text


def test_generative_classification_card_names_labels_and_label_scoring(run_dir):
    _edit_recipe_top(run_dir, task="generative_classification")
    _edit_json(run_dir / "metrics.json", label_words={name: f" {name}" for name in LABELS})
    card = ModelCard(str(build_model_card(run_dir, merged=False, repo_id=REPO_ID)))
    assert card.data.pipeline_tag == "text-generation"
    assert {r.metric_type for r in card.data.eval_results} == set(EXPECTED_MODEL_INDEX)
    assert "by label scoring" in card.text and "label_words" in card.text
    assert "AutoPeftModelForSequenceClassification" not in card.text


def test_labelled_run_without_label_map_is_named(run_dir):
    (run_dir / "label_map.json").unlink()
    with pytest.raises(PeftkitError, match=r"missing label_map\.json"):
        build_model_card(run_dir, merged=False, repo_id=REPO_ID)
