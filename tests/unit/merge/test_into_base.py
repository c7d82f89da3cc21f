"""`peftkit merge` on tiny real runs: LoRA, QLoRA (4-bit) and 8-bit adapters trained by the real
`python -m peftkit train` on a tiny random Llama classifier (MiniLM tokenizer, offline), then merged.

What is checked: the merged folder reloads with plain transformers (no peft) as a sequence classifier
with its trained head and reproduces the adapter model's logits; 4-bit adapters are merged into the
dequantized weights they were trained against; a merge that loses accuracy fails loudly and leaves
nothing in place.

Tolerances (absolute, on logits of magnitude ~1):
- float32 merges of LoRA and 4-bit adapters: 1e-5. Merging changes only float32 rounding, (W + BA)x
  against Wx + B(Ax): measured ~1.5e-7. A real mistake (lost head, missing LoRA scaling, original
  instead of dequantized 4-bit weights) moves logits by 1e-2 or more.
- 8-bit: 3e-2. LLM.int8() also rounds the *activations* to int8 (through float16) in every layer, which
  no float model reproduces: measured 3e-3 here.
- bfloat16 saves: 5e-2 (8-bit mantissa, relative rounding 4e-3 per weight).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import peftkit
from peftkit.cli import main
from peftkit.errors import PeftkitError
from peftkit.merge import into_base as merge_module
from peftkit.recipe import load_recipe
from tests.conftest import SST2

REPO_ROOT = Path(peftkit.__file__).resolve().parents[1]
FP32_TOLERANCE = 1e-5
INT8_TOLERANCE = 3e-2
BF16_TOLERANCE = 5e-2
SHARD_SIZE = "3MB"  # the tiny model is ~8 MB: the merge must write several shards and an index


# ---------------------------------------------------------------------------------------------
# Tiny runs, trained once per module by the real CLI
# ---------------------------------------------------------------------------------------------


def _tiny_base(folder: Path) -> Path:
    """A 2-layer random LlamaForSequenceClassification (hidden 64) with the offline MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from peftkit.model.packaged import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("packaged:all-minilm-l6-v2"))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, num_labels=2)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _head_of(source: Path, target: Path, rows: int) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines()
    target.write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def merge_workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (SST2 / "train.tsv").is_file():
        pytest.skip(f"SST-2 data not found at {SST2}")
    root = tmp_path_factory.mktemp("merge")
    return {
        "root": root,
        "base": _tiny_base(root / "base"),
        "train": _head_of(SST2 / "train.tsv", root / "train.tsv", 40),
        "dev": _head_of(SST2 / "dev.tsv", root / "dev.tsv", 24),
    }


def _train_tiny_run(workspace: dict[str, Path], name: str, quantization: dict) -> Path:
    """`python -m peftkit train RECIPE train.max_steps=3`, as a user would run it."""
    run_dir = workspace["root"] / name
    recipe = {
        "output_dir": str(run_dir),
        "model": {"name_or_path": str(workspace["base"])},
        "quantization": quantization,
        "adapter": {"r": 8, "lora_alpha": 16},
        "data": {"train_file": str(workspace["train"]), "eval_file": str(workspace["dev"]),
                 "text_column": "sentence", "label_names": ["negative", "positive"], "max_length": 32},
        # A high learning rate so 3 steps move the adapter and head well away from their initial values.
        "train": {"per_device_train_batch_size": 8, "learning_rate": 1e-2, "report_to": [], "save_steps": 100},
        "merge": {"max_shard_size": SHARD_SIZE},
    }
    recipe_path = workspace["root"] / f"{name}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "peftkit", "train", str(recipe_path), "train.max_steps=3"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    return run_dir


@pytest.fixture(scope="module")
def lora_run(merge_workspace) -> Path:
    return _train_tiny_run(merge_workspace, "lora", {})


@pytest.fixture(scope="module")
def qlora_run(merge_workspace) -> Path:
    return _train_tiny_run(merge_workspace, "qlora4", {"load_in_4bit": True})


@pytest.fixture(scope="module")
def int8_run(merge_workspace) -> Path:
    return _train_tiny_run(merge_workspace, "lora8", {"load_in_8bit": True})


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _merge(run_dir: Path, out: Path, *args: str) -> dict:
    """`peftkit merge` through the CLI entry point, in this process; returns the report it wrote."""
    assert main(["merge", str(run_dir), "--out", str(out), *args]) == 0
    report = json.loads((out / "merge_report.json").read_text())
    assert report == json.loads((run_dir / "merge_report.json").read_text())
    return report


def _adapter_logits(run_dir: Path, texts: list[str]):
    """Logits of the adapter model (base quantized as in training + adapter, via peft)."""
    from peftkit.merge.into_base import encode, load_adapter_model, predict_logits
    from peftkit.runs.read import label_names_of, load_run

    run_dir, recipe = load_run(run_dir)
    tokenizer, model = load_adapter_model(run_dir, recipe, label_names_of(run_dir))
    return predict_logits(model, encode(texts, tokenizer, recipe.data.max_length, 8))


def _plain_logits(folder: Path, texts: list[str]):
    """Load the merged folder in a fresh interpreter where peft cannot be imported, and run it."""
    code = f"""
import json, sys
sys.modules["peft"] = None  # any attempt to import peft now fails
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder = {str(folder)!r}
model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
tokenizer = AutoTokenizer.from_pretrained(folder)
texts = json.loads(sys.stdin.read())
rows = []
with torch.no_grad():
    for text in texts:
        batch = tokenizer([text], truncation=True, max_length=32, return_tensors="pt")
        rows.append(model(**batch).logits[0].float().tolist())
print("RESULT" + json.dumps({{"logits": rows, "missing": sorted(info["missing_keys"]), "class": type(model).__name__,
                             "id2label": {{str(k): v for k, v in model.config.id2label.items()}},
                             "dtype": str(model.dtype)}}))
"""
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def _dev_texts(workspace: dict[str, Path], n: int = 8) -> list[str]:
    lines = workspace["dev"].read_text(encoding="utf-8").splitlines()[1 : n + 1]
    return [line.split("\t")[0] for line in lines]


def _check_merged_folder(out: Path) -> None:
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer.json", "label_map.json", "merge_report.json"} <= names
    assert "model.safetensors.index.json" in names and len([n for n in names if n.endswith(".safetensors")]) >= 2
    assert not any(n.startswith("adapter") for n in names)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert "quantization_config" not in config
    assert not list(out.parent.glob(f".{out.name}.*"))  # no staging folder left beside it


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_lora_merge_round_trip(lora_run: Path, merge_workspace, tmp_path: Path) -> None:
    import torch

    out = tmp_path / "merged"
    report = _merge(lora_run, out)
    assert report["passed"] and report["base"] == "original" and report["candidates"] == {}
    assert report["dtype"] == "float32" and report["trained_on"] == "unquantized float32"
    verification = report["verification"]
    assert verification["samples"] == 24 and verification["prediction_agreement"] == 1.0
    assert verification["max_abs_logit_diff"] < FP32_TOLERANCE
    assert verification["adapter_model"] == verification["merged_model"]
    _check_merged_folder(out)

    texts = _dev_texts(merge_workspace)
    plain = _plain_logits(out, texts)
    assert plain["class"] == "LlamaForSequenceClassification" and plain["missing"] == []
    assert plain["id2label"] == {"0": "negative", "1": "positive"}
    adapter = _adapter_logits(lora_run, texts)
    assert torch.allclose(torch.tensor(plain["logits"]), adapter, atol=FP32_TOLERANCE, rtol=0)


def test_merged_head_is_the_trained_head(lora_run: Path, tmp_path: Path) -> None:
    """The classification head (modules_to_save) must be the trained one, not a fresh random init (peft#577)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "merged"
    _merge(lora_run, out)
    saved = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    trained_head = next(v for k, v in saved.items() if k.endswith("score.weight"))
    base_head = AutoModelForSequenceClassification.from_pretrained(
        json.loads((lora_run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    ).score.weight
    merged_head = AutoModelForSequenceClassification.from_pretrained(out).score.weight
    assert torch.equal(merged_head, trained_head)
    assert not torch.allclose(merged_head, base_head)


def test_qlora_merge_prefers_dequantized_base(qlora_run: Path, merge_workspace, tmp_path: Path) -> None:
    """A 4-bit adapter merged into the dequantized weights reproduces the adapter model to float32 rounding;
    the original weights drift (they are not what the adapter was trained against)."""
    import torch

    out = tmp_path / "merged"
    report = _merge(qlora_run, out)
    assert report["passed"] and report["trained_on"] == "4-bit nf4"
    assert report["base_requested"] == "auto" and report["base"] == "dequantized"
    dequantized, original = report["candidates"]["dequantized"], report["candidates"]["original"]
    assert dequantized["max_abs_logit_diff"] < FP32_TOLERANCE
    assert original["mean_abs_logit_diff"] > 100 * dequantized["mean_abs_logit_diff"]
    assert report["verification"]["max_abs_logit_diff"] < FP32_TOLERANCE
    _check_merged_folder(out)

    texts = _dev_texts(merge_workspace)
    plain = _plain_logits(out, texts)
    assert plain["missing"] == [] and plain["dtype"] == "torch.float32"
    adapter = _adapter_logits(qlora_run, texts)
    assert torch.allclose(torch.tensor(plain["logits"]), adapter, atol=FP32_TOLERANCE, rtol=0)


def test_qlora_merge_into_original_when_asked(qlora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    report = _merge(qlora_run, out, "--base", "original", "--max-accuracy-drop", "1")
    assert report["base"] == "original" and report["candidates"] == {}
    assert report["verification"]["max_abs_logit_diff"] > 100 * FP32_TOLERANCE


def test_int8_merge_round_trip(int8_run: Path, merge_workspace, tmp_path: Path) -> None:
    import torch

    out = tmp_path / "merged"
    report = _merge(int8_run, out)
    assert report["passed"] and report["trained_on"] == "8-bit"
    candidates = report["candidates"]
    assert set(candidates) == {"dequantized", "original"}
    assert report["base"] == min(candidates, key=lambda name: candidates[name]["mean_abs_logit_diff"])
    assert report["verification"]["max_abs_logit_diff"] < INT8_TOLERANCE
    _check_merged_folder(out)

    texts = _dev_texts(merge_workspace)
    plain = _plain_logits(out, texts)
    adapter = _adapter_logits(int8_run, texts)
    assert torch.allclose(torch.tensor(plain["logits"]), adapter, atol=INT8_TOLERANCE, rtol=0)


def test_bf16_merge(qlora_run: Path, merge_workspace, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    report = _merge(qlora_run, out, "--dtype", "bf16", "--base", "dequantized", "--max-accuracy-drop", "1")
    assert report["dtype"] == "bfloat16" and report["base"] == "dequantized"
    assert report["verification"]["max_abs_logit_diff"] < BF16_TOLERANCE
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert _plain_logits(out, _dev_texts(merge_workspace, 2))["dtype"] == "torch.bfloat16"


# ---------------------------------------------------------------------------------------------
# Failing loudly, atomically
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def sabotaged_run(lora_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the LoRA run whose eval labels are the adapter model's own predictions (accuracy 1.0), and a
    merge that swaps the two rows of the classification head (every prediction flips: accuracy 0.0)."""
    run = tmp_path / "run"
    shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns("merged", "merge_report.json", "checkpoints"))
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    dev_lines = Path(recipe["data"]["eval_file"]).read_text(encoding="utf-8").splitlines()
    texts = [line.split("\t")[0] for line in dev_lines[1:]]
    predictions = _adapter_logits(run, texts).argmax(-1).tolist()
    own_dev = tmp_path / "dev_labelled_by_adapter.tsv"
    own_dev.write_text("\n".join([dev_lines[0], *(f"{t}\t{p}" for t, p in zip(texts, predictions))]) + "\n")
    recipe["data"]["eval_file"] = str(own_dev)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    real_merge_into = merge_module.merge_into

    def merge_into_with_swapped_head(*args, **kwargs):
        import torch

        model = real_merge_into(*args, **kwargs)
        with torch.no_grad():
            model.score.weight.copy_(model.score.weight.flip(0))
        return model

    monkeypatch.setattr(merge_module, "merge_into", merge_into_with_swapped_head)
    return run


def test_accuracy_drop_fails_loudly_and_leaves_nothing(sabotaged_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["merge", str(sabotaged_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "merge failed verification" in err and "accuracy 1.0000 -> 0.0000" in err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))  # the staging folder is removed too
    report = json.loads((sabotaged_run / "merge_report.json").read_text())
    assert report["passed"] is False and report["verification"]["accuracy_drop"] == 1.0


def test_failed_merge_keeps_the_earlier_merge(sabotaged_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replacing RUN_DIR/merged is all or nothing: a failing re-merge leaves the earlier, verified one."""
    earlier = sabotaged_run / "merged"
    earlier.mkdir()
    (earlier / "config.json").write_text("{}")
    (earlier / "merge_report.json").write_text('{"passed": true}')
    assert main(["merge", str(sabotaged_run)]) == 2
    assert sorted(p.name for p in earlier.iterdir()) == ["config.json", "merge_report.json"]
    assert (earlier / "merge_report.json").read_text() == '{"passed": true}'


def test_crash_while_verifying_leaves_nothing(lora_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("killed while verifying")

    monkeypatch.setattr(merge_module, "load_merged", crash)
    with pytest.raises(RuntimeError, match="killed while verifying"):
        merge_module.merge_run(lora_run, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_threshold_is_configurable(sabotaged_run: Path, tmp_path: Path) -> None:
    """Allowing a drop of 1.0 (everything) lets even the sabotaged merge through: the gate is the threshold."""
    report = _merge(sabotaged_run, tmp_path / "out", "--max-accuracy-drop", "1")
    assert report["passed"] and report["verification"]["max_accuracy_drop"] == 1.0


# ---------------------------------------------------------------------------------------------
# User mistakes: clear errors before anything heavy is loaded
# ---------------------------------------------------------------------------------------------


def test_run_without_adapter_says_to_train(tmp_path: Path, lora_run: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(lora_run / "recipe.yaml", run / "recipe.yaml")
    assert main(["merge", str(run)]) == 2
    assert "no trained adapter" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "nothing-here")]) == 2
    assert "not a peftkit run folder" in capsys.readouterr().err


def test_dequantized_base_needs_a_quantized_run(lora_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["merge", str(lora_run), "--out", str(tmp_path / "m"), "--base", "dequantized"]) == 2
    assert "trained on an unquantized base" in capsys.readouterr().err


def test_out_must_not_clobber_other_folders(lora_run: Path, tmp_path: Path, capsys) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["merge", str(lora_run), "--out", str(precious)]) == 2
    assert "not an earlier peftkit merge" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"
    assert main(["merge", str(lora_run), "--out", str(lora_run)]) == 2
    assert "would replace the run folder" in capsys.readouterr().err


def test_cli_rejects_bad_options(lora_run: Path) -> None:
    for bad in (["--dtype", "int4"], ["--base", "quantized"], ["--verify-samples", "0"]):
        with pytest.raises(SystemExit):
            main(["merge", str(lora_run), *bad])


def test_merge_settings_from_recipe_and_cli() -> None:
    from peftkit.recipe import MergeSection

    section = MergeSection(verify_samples=100)
    assert merge_module.merge_settings(section, dtype=None, base=None, verify_samples=None,
                                       max_accuracy_drop=None) == section
    changed = merge_module.merge_settings(section, dtype="bf16", base="original", verify_samples="all",
                                          max_accuracy_drop=0.01)
    assert (changed.dtype, changed.base, changed.verify_samples, changed.max_accuracy_drop) == (
        "bfloat16", "original", None, 0.01)
    with pytest.raises(PeftkitError):
        merge_module.merge_settings(section, dtype=None, base=None, verify_samples=None, max_accuracy_drop=2.0)


# ---------------------------------------------------------------------------------------------
# Recipe section and pieces
# ---------------------------------------------------------------------------------------------


def _recipe_file(tmp_path: Path, **merge) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "org/model"},
                                    "data": {"train_file": "train.tsv"}, **({"merge": merge} if merge else {})}))
    return path


def test_merge_section_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(_recipe_file(tmp_path))
    assert (recipe.merge.base, recipe.merge.dtype, recipe.merge.verify_samples, recipe.merge.max_accuracy_drop) == (
        "auto", "float32", 256, 0.005)
    assert recipe.to_dict()["merge"]["max_shard_size"] == "5GB"


@pytest.mark.parametrize("merge, message", [
    ({"bse": "auto"}, "did you mean 'merge.base'"),
    ({"base": "quantized"}, "'merge.base' must be one of"),
    ({"dtype": "bf16"}, "'merge.dtype' must be one of"),
    ({"verify_samples": 0}, "'merge.verify_samples' must be a positive integer"),
    ({"max_accuracy_drop": 5}, "'merge.max_accuracy_drop' must be between 0 and 1"),
    ({"max_shard_size": "5G"}, "'merge.max_shard_size' must be an integer with a unit"),
    ({"base": "dequantized"}, "needs a quantized run"),
])
def test_merge_section_errors(tmp_path: Path, merge: dict, message: str) -> None:
    with pytest.raises(PeftkitError, match=message):
        load_recipe(_recipe_file(tmp_path, **merge))


def test_plain_module_name() -> None:
    assert merge_module.plain_module_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer") == \
        "model.layers.0.self_attn.q_proj"
    assert merge_module.plain_module_name("model.layers.1.mlp.up_proj") == "model.layers.1.mlp.up_proj"


def test_dequantized_weights_reproduce_a_4bit_causal_lm(tmp_path: Path) -> None:
    """The causal-LM branch of load_base, and the dequantization alone (no adapter): a float32 model holding
    the dequantized weights computes what the 4-bit model computes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftkit.recipe import ModelSection, QuantizationSection, Recipe

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "causal")
    from transformers import AutoTokenizer

    from tests.conftest import minilm_tokenizer_dir

    # a model folder holds its tokenizer (peftkit refuses one without), even if this test does not use it
    AutoTokenizer.from_pretrained(minilm_tokenizer_dir()).save_pretrained(tmp_path / "causal")
    recipe = Recipe(task="sft", model=ModelSection(name_or_path=str(tmp_path / "causal")),
                    quantization=QuantizationSection(load_in_4bit=True))

    class Tokenizer:
        pad_token_id = 0

    quantized = merge_module.load_base(recipe, [], Tokenizer(), quantized=True)
    plain = merge_module.load_base(recipe, [], Tokenizer(), quantized=False)
    assert type(plain).__name__ == "LlamaForCausalLM"
    ids = torch.randint(1, 128, (2, 12))
    with torch.no_grad():
        before = (plain(input_ids=ids).logits - quantized(input_ids=ids).logits).abs().max()
        assert merge_module.load_dequantized_weights(plain, quantized) == 14  # 7 linear layers x 2 blocks
        after = (plain(input_ids=ids).logits - quantized(input_ids=ids).logits).abs().max()
    assert after < FP32_TOLERANCE < before
