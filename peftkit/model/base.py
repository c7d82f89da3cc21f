"""Tokenizer and base model: from a hub id, a local folder, or a packaged offline model."""

from __future__ import annotations

import os
import re
from pathlib import Path

from peftkit.core.integrity import PICKLE_SUFFIXES
from peftkit.core.launch import local_rank
from peftkit.errors import PeftkitError
from peftkit.recipe import ModelSection, QuantizationSection
from peftkit.runs.layout import ADAPTER_DIR

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model_source(model: ModelSection) -> str:
    """A local folder or a hub id to hand to from_pretrained. Cheap checks only (no weights read).

    transformers answers a missing local path with a misleading "not a valid repo id" message:
    anything that looks like a path and does not exist is reported as such here.
    """
    from peftkit.model import packaged

    name = model.name_or_path
    if packaged.is_packaged(name):
        packaged.check_packaged_available(name)
        return name  # converted lazily by load_* (may take ~20 s the first time)
    path = Path(name).expanduser()
    if path.exists():
        check_local_folder(path, model)
        return str(path)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1) or not HUB_ID.match(name):
        raise PeftkitError(f"model.name_or_path: local folder {name!r} does not exist "
                           "(give an existing folder, a hub id like HuggingFaceTB/SmolLM2-135M-Instruct, "
                           "or packaged:smollm2-135m-instruct)")
    return name


def check_local_folder(path: Path, model: ModelSection) -> None:
    if not path.is_dir():
        raise PeftkitError(f"model.name_or_path: {path} is a file; give the model's folder")
    if not (path / "config.json").is_file():
        raise PeftkitError(f"model.name_or_path: {path} has no config.json; is it a transformers model folder?")
    weights = [p.name for p in path.iterdir() if p.suffix in (".safetensors", *PICKLE_SUFFIXES)]
    if weights and not any(w.endswith(".safetensors") for w in weights) and not model.allow_pickle:
        raise PeftkitError(f"model.name_or_path: {path} has only pickle weights ({', '.join(sorted(weights)[:3])}); "
                           "pickles can run code when loaded. Convert them to safetensors, or set "
                           "model.allow_pickle: true if you trust the files")
    check_custom_code(path, model)
    from peftkit.core.integrity import check_folder_files, check_tokenizer_files

    check_folder_files(path, advice="; download or copy the model folder again (model.name_or_path)")
    check_tokenizer_files(path, "model.name_or_path:")


def check_custom_code(path: Path, model: ModelSection) -> None:
    """A folder whose model type transformers does not know can only load by running its own Python code.

    With ``trust_remote_code: false`` that code is never imported: a built-in model type (llama, bert, ...)
    loads with transformers' own classes (its ``auto_map`` is ignored); an unknown type is refused here,
    before anything is written, instead of a ValueError traceback from transformers after the run started.
    """
    import json

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model.trust_remote_code:
        return
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PeftkitError(f"model.name_or_path: {path}/config.json cannot be read as JSON ({e})") from None
    if not isinstance(config, dict):
        raise PeftkitError(f"model.name_or_path: {path}/config.json is not a JSON object")
    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING_NAMES:
        return
    code = sorted({str(ref).split(".")[0] + ".py" for ref in _auto_map_refs(config.get("auto_map"))})
    if code:
        raise PeftkitError(
            f"model.name_or_path: {path} needs its own Python code to load ({', '.join(code)}; model type "
            f"{model_type!r} is not built into transformers). peftkit runs a model folder's code only with "
            "model.trust_remote_code: true; set it only if you trust that code")


def _auto_map_refs(auto_map) -> list[str]:
    if not isinstance(auto_map, dict):
        return []
    refs = []
    for value in auto_map.values():
        refs.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
    return [ref.split("--")[-1] for ref in refs]  # "repo--module.Class" points at another repository's code


def local_path(model: ModelSection) -> str:
    """The folder or hub id from_pretrained gets; packaged models are converted/cached here."""
    from peftkit.model import packaged

    return packaged.resolve_model_path(resolve_model_source(model))


def load_tokenizer(model: ModelSection, source: str | None = None):
    """The tokenizer, with a pad token: Llama-family tokenizers have none, and batching needs one."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, source or local_path(model), model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_classifier(model: ModelSection, quant: QuantizationSection, labels: list[str], tokenizer,
                    source: str | None = None, quant_storage=None):
    """AutoModelForSequenceClassification with a new head of len(labels) classes."""
    from transformers import AutoModelForSequenceClassification

    return _load_model(AutoModelForSequenceClassification, model, quant, tokenizer, source, quant_storage,
                       num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={name: i for i, name in enumerate(labels)})


def load_causal_lm(model: ModelSection, quant: QuantizationSection, tokenizer, source: str | None = None,
                   quant_storage=None):
    """AutoModelForCausalLM (its own LM head: nothing new to train but the adapter), pad token set on the model."""
    from transformers import AutoModelForCausalLM

    net = _load_model(AutoModelForCausalLM, model, quant, tokenizer, source, quant_storage)
    if net.generation_config is not None:
        net.generation_config.pad_token_id = tokenizer.pad_token_id
    return net


def _load_model(auto_class, model: ModelSection, quant: QuantizationSection, tokenizer, source: str | None,
                quant_storage, **task_kwargs):
    """from_pretrained with the model section's dtype and attention, bitsandbytes when asked, the tokenizer's pad
    token on the config, and 4-bit layers kept off the CPU repacking that corrupts LoRA gradients."""
    from peftkit.model.quantize import bnb_config, disable_cpu_weight_repacking, resolve_dtype

    qconfig = bnb_config(quant, quant_storage)
    kwargs = dict(task_kwargs, dtype=resolve_dtype(model.dtype), pad_token_id=tokenizer.pad_token_id)
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = quantized_device_map()
    source = source or local_path(model)
    net, info = _from_pretrained(auto_class, source, model, output_loading_info=True, **kwargs)
    from peftkit.model.check import check_loaded_weights

    # transformers only logs what did not load (a table peftkit.core.quiet hides): any base weight missing or unexpected
    # means a random model would be trained; a new task head is expected, and named in one line by the run.
    net.peftkit_new_heads = check_loaded_weights(net, info, source)
    net.config.pad_token_id = tokenizer.pad_token_id
    if quant.load_in_4bit:
        disable_cpu_weight_repacking(net)
    return net


def quantized_device_map():
    """bitsandbytes places weights at load time: this process's GPU, or the CPU."""
    import torch

    if torch.cuda.is_available():
        return {"": local_rank()}
    return {"": "cpu"}


def _from_pretrained(cls, source: str, model: ModelSection, **kwargs):
    safe = {} if model.allow_pickle or cls.__name__ == "AutoTokenizer" else {"use_safetensors": True}
    try:
        return cls.from_pretrained(source, revision=model.revision, trust_remote_code=model.trust_remote_code,
                                   **safe, **kwargs)
    except RuntimeError as e:
        if "Error(s) in loading state_dict" not in str(e):
            raise
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), "")
        raise PeftkitError(f"model.name_or_path: the weights in {source} do not match its config.json ({detail[:300]})"
                           "; use the config.json that came with these weights") from None
    except ValueError as e:
        if "Couldn't instantiate the backend tokenizer" in str(e):
            raise PeftkitError(f"{source} has no usable tokenizer files (tokenizer.json, tokenizer.model, vocab.txt, "
                               "...); copy the tokenizer of the base model into it (tokenizer.save_pretrained)"
                               ) from None
        if "trust_remote_code" not in str(e):
            raise
        raise PeftkitError(f"model.name_or_path {model.name_or_path!r} needs its own Python code to load; peftkit "
                           "runs it only with model.trust_remote_code: true (set it only if you trust that code)"
                           ) from None
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeftkitError(f"model.name_or_path {model.name_or_path!r} could not be loaded: {first}. "
                           "Offline? Use a local folder or packaged:<name>. Only pickle weights? "
                           "Set model.allow_pickle: true if you trust them") from None


def load_trained_classifier(run_dir: Path, model: ModelSection, quant: QuantizationSection, labels: list[str]):
    """(tokenizer, base + trained adapter) from a run folder, ready for inference."""
    from peft import PeftModel

    adapter_dir = Path(run_dir) / ADAPTER_DIR
    tokenizer = load_tokenizer(model, str(adapter_dir))
    base = load_classifier(model, quant, labels, tokenizer)
    net = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    return tokenizer, net.eval()


def load_trained_causal_lm(run_dir: Path, model: ModelSection, quant: QuantizationSection):
    """(tokenizer, base causal LM + trained adapter) from a run folder, ready for scoring or generation."""
    from peft import PeftModel

    adapter_dir = Path(run_dir) / ADAPTER_DIR
    tokenizer = load_tokenizer(model, str(adapter_dir))
    base = load_causal_lm(model, quant, tokenizer)
    net = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    return tokenizer, net.eval()
