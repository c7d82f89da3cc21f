"""Compression for serving: the trained student merged into a plain transformers model, and an int8 copy.

The int8 copy is torch dynamic quantization of every ``nn.Linear`` (weights int8 per tensor, activations
quantized on the fly; embeddings and LayerNorms stay float32). A dynamically quantized model cannot go through
``save_pretrained``, and pickles are not used, so its folder holds the config, the tokenizer and one safetensors
file: the float tensors of the non-Linear modules plus, per Linear, its int8 weight, scale, zero point and bias.
``load_int8_student`` rebuilds it. Both models are measured side by side in the same process: accuracy on the
eval split, size on disk and texts per second (alternating rounds, so a load change hits both).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftkit.core.atomic import replace_dir_atomic, staging_dir, write_json_atomic
from peftkit.runs.folder import folder_size
from peftkit.runs.layout import EXPORT_REPORT_FILE, STUDENT_DIR, STUDENT_INT8_DIR, STUDENT_INT8_WEIGHTS_FILE


def merged_student(peft_model):
    """A plain transformers model: a copy of the trained model with the adapter folded into its weights."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    return merged.float().eval()


def quantize_int8(model, per_channel: bool = True):
    """Dynamic int8 Linear layers. Per channel (a scale per output row) by default: on the SST-2 MiniLM student the
    per-tensor scheme lost more accuracy (benchmarks/README.md, "Small labelled data")."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear: qconfig}, dtype=torch.qint8)


def save_float(model, tokenizer, folder: Path) -> None:
    stage = staging_dir(folder)
    model.save_pretrained(stage, safe_serialization=True)
    tokenizer.save_pretrained(stage)
    replace_dir_atomic(stage, folder)


def save_int8(quantized, config, tokenizer, folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    packed = quantized_linears(quantized)
    schemes = set()
    for name, module in packed.items():
        weight, bias = module._weight_bias()
        tensors[f"{name}.int8_weight"] = weight.int_repr().contiguous()
        if weight.qscheme() == torch.per_channel_affine and weight.q_per_channel_axis() == 0:
            schemes.add("per_channel")
            tensors[f"{name}.scale"] = weight.q_per_channel_scales().to(torch.float64).contiguous()
            tensors[f"{name}.zero_point"] = weight.q_per_channel_zero_points().contiguous()
        elif weight.qscheme() == torch.per_tensor_affine:
            schemes.add("per_tensor")
            tensors[f"{name}.scale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
            tensors[f"{name}.zero_point"] = torch.tensor([weight.q_zero_point()])
        else:
            raise RuntimeError(f"{name}: unexpected quantization scheme {weight.qscheme()}")
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().contiguous()
    for key, value in quantized.state_dict().items():
        owner = key.rpartition(".")[0].removesuffix("._packed_params")
        if owner not in packed and hasattr(value, "is_floating_point") and not value.is_quantized:
            tensors[key] = value.detach().contiguous()
    stage = staging_dir(folder)
    config.save_pretrained(stage)
    tokenizer.save_pretrained(stage)
    if len(schemes) > 1:
        raise RuntimeError(f"mixed quantization schemes {sorted(schemes)}; save_int8 writes one per model")
    save_file(tensors, str(stage / STUDENT_INT8_WEIGHTS_FILE),
              metadata={"format": "peftkit-int8-dynamic", "scheme": schemes.pop() if schemes else "per_tensor"})
    replace_dir_atomic(stage, folder)


def quantized_linears(model) -> dict[str, Any]:
    import torch

    dynamic = torch.ao.nn.quantized.dynamic.Linear
    return {name: m for name, m in model.named_modules() if isinstance(m, dynamic)}


def load_int8_student(folder: str | Path):
    """(tokenizer, int8 model) from a folder written by `save_int8`."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    tensors = load_file(str(folder / STUDENT_INT8_WEIGHTS_FILE))
    with safe_open(str(folder / STUDENT_INT8_WEIGHTS_FILE), framework="pt") as f:
        per_channel = (f.metadata() or {}).get("scheme") == "per_channel"
    linear = {key.rsplit(".", 1)[0] for key in tensors if key.endswith(".int8_weight")}
    plain = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] not in linear}
    model = AutoModelForSequenceClassification.from_config(config).eval()
    # the float modules first (the Linear weights they lack are replaced below), then quantize, then the int8 weights
    _, unexpected = model.load_state_dict(plain, strict=False)
    if unexpected:
        raise RuntimeError(f"{folder / STUDENT_INT8_WEIGHTS_FILE}: unexpected tensors {unexpected[:5]}")
    model = quantize_int8(model, per_channel=per_channel)
    modules = quantized_linears(model)
    if set(modules) != linear:
        raise RuntimeError(f"{folder / STUDENT_INT8_WEIGHTS_FILE}: int8 layers {sorted(linear ^ set(modules))[:5]} "
                           "do not match the model built from config.json")
    for name, module in modules.items():
        scale, zero = tensors[f"{name}.scale"], tensors[f"{name}.zero_point"]
        ints = tensors[f"{name}.int8_weight"].float()
        if per_channel:  # int values are exact in float32, so requantizing with the same scales restores them
            values = ((ints - zero[:, None]) * scale[:, None]).float()
            weight = torch.quantize_per_channel(values, scale, zero, 0, torch.qint8)
        else:
            values = ((ints - zero) * scale).float()
            weight = torch.quantize_per_tensor(values, float(scale[0]), int(zero[0]), torch.qint8)
        module.set_weight_bias(weight, tensors.get(f"{name}.bias"))
    return AutoTokenizer.from_pretrained(folder), model.eval()


def accuracy(model, tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int) -> float:
    from peftkit.inference.teacher import softmax_in_batches

    predicted = softmax_in_batches(model, tokenizer, texts, max_length, 32).argmax(-1).tolist()
    return sum(int(p == y) for p, y in zip(predicted, labels)) / max(1, len(labels))


def texts_per_second(models: dict[str, Any], tokenizer, texts: Sequence[str], max_length: int,
                     rounds: int = 3) -> dict[str, float]:
    """Best-of-`rounds` throughput of each model on the same texts, rounds alternating between the models."""
    from peftkit.inference.teacher import softmax_in_batches

    best = {name: 0.0 for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            softmax_in_batches(model, tokenizer, texts, max_length, 32)
            best[name] = max(best[name], len(texts) / (time.perf_counter() - started))
    return best


def export_student(peft_model, tokenizer, run_dir: Path, texts: Sequence[str], labels: Sequence[int],
                   max_length: int) -> dict[str, Any]:
    """Save RUN/student and RUN/student-int8, measure both, write RUN/export_report.json; returns the report."""
    import os

    import torch

    merged = merged_student(peft_model)
    save_float(merged, tokenizer, run_dir / STUDENT_DIR)
    save_int8(quantize_int8(merged), merged.config, tokenizer, run_dir / STUDENT_INT8_DIR)
    _, int8 = load_int8_student(run_dir / STUDENT_INT8_DIR)  # measured as reloaded from disk: the copy users get
    models = {"float32": merged, "int8": int8}
    speed = texts_per_second(models, tokenizer, texts, max_length)
    report: dict[str, Any] = {
        "eval_examples": len(texts),
        "torch_threads": torch.get_num_threads(),
        "int8_scheme": "torch dynamic quantization of nn.Linear, int8 weights per output channel",
        "load_average": list(os.getloadavg()),
        "note": "texts/s measured side by side in one process, best of 3 alternating rounds, batch 32; the CPU may "
                "be shared (see load_average)",
    }
    for name, model in models.items():
        folder = run_dir / (STUDENT_DIR if name == "float32" else STUDENT_INT8_DIR)
        report[name] = {"folder": str(folder), "accuracy": accuracy(model, tokenizer, texts, labels, max_length),
                        "size_bytes": folder_size(folder), "texts_per_second": speed[name]}
    report["int8_accuracy_drop_points"] = 100 * (report["float32"]["accuracy"] - report["int8"]["accuracy"])
    report["int8_speedup"] = report["int8"]["texts_per_second"] / report["float32"]["texts_per_second"]
    report["int8_size_ratio"] = report["int8"]["size_bytes"] / report["float32"]["size_bytes"]
    write_json_atomic(run_dir / EXPORT_REPORT_FILE, report)
    return report


def describe(report: dict[str, Any]) -> str:
    rows = [f"{name:8s} accuracy {r['accuracy']:.4f}  {r['size_bytes'] / 1e6:7.1f} MB  "
            f"{r['texts_per_second']:8.1f} texts/s  ({r['folder']})"
            for name, r in ((n, report[n]) for n in ("float32", "int8"))]
    return "student export (side by side, this process):\n  " + "\n  ".join(rows)
