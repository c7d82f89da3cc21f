"""Safe loading: no pickle is unpickled and no model folder's Python code runs unless the recipe says so.

Base models with only pickle weights are covered in test_model.py; here: adapters, and custom model code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import peftkit.model.base
from peftkit.cli import main
from peftkit.recipe import ModelSection, load_recipe
from tests.conftest import tiny_recipe, write_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "gemm_4bit_forward" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_adapter_with_only_pickle_weights_is_refused_on_evaluate(tiny_run, tmp_path, capsys):
    _, trained = tiny_run
    run_dir = Path(shutil.copytree(trained, tmp_path / "run"))
    adapter = run_dir / "adapter"
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    metrics = (run_dir / "metrics.json").read_bytes()

    assert main(["evaluate", str(run_dir)]) == 2
    line = error_line(capsys.readouterr().err)
    assert line == (f"peftkit: error: {adapter} has only pickle adapter weights (adapter_model.bin); pickles can run "
                    "code when loaded. Convert them to adapter_model.safetensors, or set model.allow_pickle: true in "
                    "the run's recipe.yaml if you trust the files")
    assert (run_dir / "metrics.json").read_bytes() == metrics

    # the switch exists and works: the same (pickled) adapter gives the same metrics
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe["model"]["allow_pickle"] = True
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["evaluate", str(run_dir)]) == 0
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["confusion_matrix"] == json.loads(metrics)["confusion_matrix"]


def evil_model(template: Path, folder: Path, model_type: str, marker: Path) -> Path:
    """The tiny model with an auto_map pointing at modeling_evil.py, which creates `marker` when imported."""
    shutil.copytree(template, folder)
    (folder / "modeling_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('custom code ran')\n"
        "from transformers import LlamaConfig, LlamaForSequenceClassification\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
        "class EvilModel(LlamaForSequenceClassification):\n    config_class = EvilConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig",
                          "AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["modeling_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def test_custom_code_of_an_unknown_model_type_is_refused_before_anything_runs(tiny_llama_dir, sst2_small,
                                                                              tmp_path, capsys):
    marker = tmp_path / "PWNED"
    model = evil_model(tiny_llama_dir, tmp_path / "evil", "evil", marker)
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(model, sst2_small, tmp_path / "run"))
    for command in ("validate", "train"):
        assert main([command, str(recipe)]) == 2
        line = error_line(capsys.readouterr().err)
        assert line == (f"peftkit: error: model.name_or_path: {model} needs its own Python code to load "
                        "(modeling_evil.py; model type 'evil' is not built into transformers). peftkit runs a model "
                        "folder's code only with model.trust_remote_code: true; set it only if you trust that code")
    assert not marker.exists(), "the model folder's code was executed"
    assert not (tmp_path / "run").exists()


def test_custom_code_of_a_known_model_type_is_ignored_and_builtin_classes_train(tiny_llama_dir, sst2_small,
                                                                               tmp_path, capsys):
    marker = tmp_path / "PWNED"
    model = evil_model(tiny_llama_dir, tmp_path / "evil", "llama", marker)
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(model, sst2_small, tmp_path / "run",
                                                                evaluate={"enabled": False}))
    assert main(["validate", str(recipe)]) == 0
    assert main(["train", str(recipe), "train.max_steps=1"]) == 0
    assert not marker.exists(), "the model folder's code was executed"
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_trust_remote_code_and_allow_pickle_are_off_unless_set(tiny_llama_dir, sst2_small, tmp_path, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_llama_dir, sst2_small, tmp_path / "run")))
    assert recipe.model.trust_remote_code is False and recipe.model.allow_pickle is False
    seen = {}

    class Recorder:
        __name__ = "AutoModelForSequenceClassification"

        @staticmethod
        def from_pretrained(source, **kwargs):
            seen.update(kwargs)

    peftkit.model.base._from_pretrained(Recorder, str(tiny_llama_dir), ModelSection(name_or_path=str(tiny_llama_dir)))
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_a_hub_model_that_needs_custom_code_gets_one_clear_line(monkeypatch):
    """Where the folder cannot be inspected first (a hub id), transformers' ValueError is turned into our error."""

    class NeedsCode:
        __name__ = "AutoModelForSequenceClassification"

        @staticmethod
        def from_pretrained(source, **kwargs):
            raise ValueError(f"The repository {source} contains custom code which must be executed to correctly "
                             "load the model. Please pass the argument `trust_remote_code=True`")

    with pytest.raises(peftkit.model.base.PeftkitError, match="needs its own Python code to load"):
        peftkit.model.base._from_pretrained(NeedsCode, "someone/custom", ModelSection(name_or_path="someone/custom"))
