"""bitsandbytes: the one module that touches it. Imported lazily (an optional extra)."""

from __future__ import annotations

from typing import Any

from peftkit.errors import PeftkitError
from peftkit.recipe import QuantizationSection


def resolve_dtype(name: str, *, for_compute: bool = False):
    """'auto' means bfloat16 on a GPU that supports it, else float32 (fp16 compute on CPU is slow and lossy)."""
    import torch

    if name == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return getattr(torch, name)


def require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise PeftkitError("quantization needs bitsandbytes: pip install 'peftkit[quant]' "
                           "(or pip install bitsandbytes)") from None


def bnb_config(section: QuantizationSection, quant_storage: Any = None):
    """BitsAndBytesConfig from the recipe; None when the recipe asks for no quantization."""
    if not section.enabled:
        return None
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    if section.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=section.llm_int8_threshold,
                                  llm_int8_skip_modules=section.llm_int8_skip_modules)
    storage = section.bnb_4bit_quant_storage
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=section.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=section.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(section.bnb_4bit_compute_dtype, for_compute=True),
        bnb_4bit_quant_storage=resolve_dtype(storage) if storage else quant_storage,
        llm_int8_skip_modules=section.llm_int8_skip_modules,
    )


def disable_cpu_weight_repacking(model) -> int:
    """Stop 4-bit layers on avx512-bf16 CPUs from repacking their weights on the first no-grad forward.

    After the repack, training runs through bitsandbytes' gemv_4bit, which has no backward: LoRA
    gradients silently come out wrong (off by up to 87%, see STACK-NOTES) after any evaluation pass.
    The flag is bitsandbytes' own switch; setting it keeps the path that has a correct backward.
    Returns how many layers were switched.
    """
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def prepare_for_training(model, section: QuantizationSection, gradient_checkpointing: bool):
    """peft's k-bit preparation (fp32 norms and head, input grads) for quantized bases."""
    if not section.enabled:
        return model
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    disable_cpu_weight_repacking(model)
    return model


def quantized_linear_weights(model):
    """Yield (module name, float32 weight) for every bitsandbytes 4-bit or 8-bit linear layer of ``model``.

    These are the weights the layers really multiply with in the forward pass, so they are what an adapter
    trained on this base learned against: merging into them (instead of the original full-precision weights)
    reproduces the trained model. One layer at a time, so peak memory grows by one layer, not one model.
    """
    import bitsandbytes as bnb
    import torch

    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            yield name, bnb.functional.dequantize_4bit(weight.data, weight.quant_state).to(torch.float32)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            weight = module.weight
            if weight.dtype != torch.int8:  # has_fp16_weights: kept in float, nothing to dequantize
                yield name, weight.data.to(torch.float32)
                continue
            scales = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
            if scales is None:
                raise PeftkitError(f"8-bit layer {name} has no quantization scales (SCB); cannot dequantize it")
            yield name, bnb.functional.int8_vectorwise_dequant(weight.data, scales).to(torch.float32)


def quant_storage_for(quant: QuantizationSection):
    """FSDP and ZeRO-3 shard 4-bit weights only when they are stored in the compute dtype."""
    from peftkit.core.launch import quant_storage_dtype_for_launch

    if not quant.load_in_4bit:
        return None
    return quant_storage_dtype_for_launch(resolve_dtype(quant.bnb_4bit_compute_dtype))
