"""Fixtures for the causal-LM (SFT) tests: a tiny random Llama with SmolLM2's real tokenizer and chat template.

Kept out of conftest.py so that file stays the lead's; test modules import the fixtures they use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# SmolLM2's chat template with the assistant's content and end-of-turn inside {% generation %} markers: it renders
# exactly like the original, and lets assistant_only_loss find the assistant's tokens.
CHATML_GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def smollm2_dir() -> str:
    from peftkit.model.packaged import resolve_model_path

    return resolve_model_path("packaged:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM (hidden 64, 2 layers, SmolLM2's 49,152-token vocabulary) with SmolLM2's
    tokenizer (pad == eos == <|im_end|>, a chat template without generation markers), saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-causal")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def generation_template_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("templates") / "smollm2_generation.jinja"
    path.write_text(CHATML_GENERATION_TEMPLATE, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sft_data_files(tmp_path_factory) -> dict[str, Path]:
    """Small files of each causal format, from the real SST-2 and AG News rows."""
    folder = tmp_path_factory.mktemp("sft-data")
    sst2 = (SHARED_DATA / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:41]
    agnews = (SHARED_DATA / "agnews" / "test.tsv").read_text(encoding="utf-8").splitlines()[:40]
    names = {"0": "negative", "1": "positive"}
    rows = [line.rsplit("\t", 1) for line in sst2]
    files = {
        "text": [{"text": s.strip()} for s, _ in rows],
        "prompt_completion": [{"prompt": f"Review: {s.strip()}\nSentiment:", "completion": f" {names[y]}"}
                              for s, y in rows],
        "messages": [{"messages": [{"role": "user", "content": f"Sentiment of: {s.strip()}"},
                                   {"role": "assistant", "content": names[y]}]} for s, y in rows],
        "alpaca": [{"instruction": "Classify the topic of this news article.", "input": t, "output": y}
                   for t, y in (line.rsplit("\t", 1) for line in agnews)],
    }
    out = {}
    for name, records in files.items():
        out[name] = folder / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out["sst2_tsv"] = folder / "sst2.tsv"
    out["sst2_tsv"].write_text("sentence\tlabel\n" + "\n".join(sst2) + "\n", encoding="utf-8")
    return out


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m peftkit ARGS` in a subprocess, as a user runs it. One OpenMP thread: on a shared CPU with more
    busy processes than cores, two threads spin-wait on each other (forward passes measured 3-5x slower)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "peftkit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
