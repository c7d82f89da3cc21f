"""Shared fixtures: a tiny random Llama (no pad token, like the real family) and small real SST-2 files."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real data sets lie beside a development clone (../shared/data); PEFTKIT_SHARED_DATA points elsewhere (a git
# worktree, a CI cache).
SHARED_DATA = Path(os.environ.get("PEFTKIT_SHARED_DATA") or REPO.parent / "shared" / "data")
SST2 = SHARED_DATA / "sst2"

# Tests never reach a hub; a model or dataset that is not local must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_tokenizer_dir() -> str:
    from peftkit.model.packaged import resolve_model_path

    return resolve_model_path("packaged:all-minilm-l6-v2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM saved as safetensors with a tokenizer that has NO pad token.

    The tokenizer is MiniLM's WordPiece (offline, 30,522 tokens) with its pad token removed, so the
    fixture exercises the same pad-token path as Llama-family models. Sizes are multiples of 64 so
    4-bit layers quantize.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir())
    tokenizer.pad_token = None
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.cls_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sst2_small(tmp_path_factory) -> dict[str, Path]:
    """The first 96 train and 48 dev rows of the real SST-2 files."""
    folder = tmp_path_factory.mktemp("sst2-small")
    out = {}
    for name, rows in (("train", 96), ("dev", 48)):
        lines = (SST2 / f"{name}.tsv").read_text(encoding="utf-8").splitlines()[: rows + 1]
        out[name] = folder / f"{name}.tsv"
        out[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def tiny_recipe(model_dir: Path, data: dict[str, Path], out: Path, **sections) -> dict:
    """A recipe dict for fast runs on the tiny model; `sections` update (not replace) each section."""
    recipe = {
        "output_dir": str(out),
        "model": {"name_or_path": str(model_dir), "attn_implementation": "eager"},
        "adapter": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "data": {"train_file": str(data["train"]), "eval_file": str(data["dev"]), "text_column": "sentence",
                 "label_names": ["negative", "positive"], "max_length": 32},
        "train": {"max_steps": 3, "per_device_train_batch_size": 8, "logging_steps": 1, "report_to": [],
                  "save_strategy": "no", "disable_tqdm": True},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            recipe.setdefault(key, {}).update(value)
        else:
            recipe[key] = value
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """The real `peftkit` command in a subprocess (what users run)."""
    return subprocess.run([sys.executable, "-m", "peftkit", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def tiny_run(tiny_llama_dir, sst2_small, tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, run folder) of a finished 2-step run, trained in-process with checkpoints, metrics and a private
    copy of its data files (tests may corrupt them). Copy the folder before changing it."""
    import shutil

    from peftkit.cli import main

    tmp = tmp_path_factory.mktemp("tiny-run")
    data = {name: Path(shutil.copy(path, tmp / path.name)) for name, path in sst2_small.items()}
    recipe = tiny_recipe(tiny_llama_dir, data, tmp / "run")
    recipe["train"].update(max_steps=2, save_strategy="steps", save_steps=2)
    path = write_recipe(tmp / "recipe.yaml", recipe)
    with torch_threads(1):
        assert main(["train", str(path)]) == 0
    return path, tmp / "run"


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """For in-process training: on this busy 2-core machine, two spinning OpenMP threads made a tiny 6-step run
    ten times slower than one (measured 26 s -> 2.5 s). Subprocesses get OMP_NUM_THREADS=1 (tests/helpers/procs.py)."""
    with torch_threads(1):
        yield
