"""LoRA-family adapters through PEFT: config from the recipe, attach, report trainable parameters, save."""

from __future__ import annotations

from pathlib import Path

from peftkit.core.atomic import replace_dir_atomic, staging_dir
from peftkit.recipe import AdapterSection

# Heads a task model adds on top of the pretrained body: they start untrained, so they must be
# fully trained and saved with the adapter (peft#577: otherwise the head is lost on reload).
HEAD_NAMES = ("score", "classifier")


def classification_head_names(model) -> list[str]:
    names = {name.split(".")[-1] for name, _ in model.named_modules()}
    return [h for h in HEAD_NAMES if h in names]


def lora_config(section: AdapterSection, task_type: str, head_names: list[str] = ()):
    from peft import LoraConfig

    modules_to_save = list(dict.fromkeys([*head_names, *(section.modules_to_save or [])])) or None
    return LoraConfig(
        task_type=task_type,
        r=section.r,
        lora_alpha=section.lora_alpha,
        lora_dropout=section.lora_dropout,
        target_modules=section.target_modules,
        use_dora=section.use_dora,
        use_rslora=section.use_rslora,
        init_lora_weights=section.init_lora_weights,
        modules_to_save=modules_to_save,
        bias=section.bias,
    )


def attach_adapter(model, section: AdapterSection, task_type: str):
    """Wrap the model with a fresh adapter (the seed must already be set: adapter init is random), or with the
    trained adapter of the run ``adapter.init_from`` names."""
    if section.init_from:
        from peftkit.model.transfer import load_for_training

        peft_model = load_for_training(model, section.init_from)
    else:
        peft_model = fresh_adapter(model, section, task_type)
    if section.trainable_dtype == "float32":
        keep_trained_float32(peft_model)
    return peft_model


def fresh_adapter(model, section: AdapterSection, task_type: str):
    from peft import get_peft_model

    from peftkit.errors import PeftkitError

    heads = classification_head_names(model) if task_type == "SEQ_CLS" else []
    try:
        return get_peft_model(model, lora_config(section, task_type, heads))
    except ValueError as e:  # peft's NoMatchingPeftModuleError and "Target modules ... not found" are ValueErrors
        if "target" not in str(e).lower():
            raise
        raise PeftkitError(f"'adapter.target_modules' {section.target_modules!r} match no module of the model "
                           f"({type(model).__name__}); name its linear layers (q_proj, v_proj, ...) or use "
                           "all-linear") from None


def keep_trained_float32(model) -> list[str]:
    """Upcast every trained 16-bit weight (e.g. the head in ``modules_to_save``) to fp32; returns the modules changed.

    With a frozen base stored in bf16, PEFT upcasts LoRA weights to fp32 (``autocast_adapter_dtype``) but copies
    the head in the base's dtype: it would train in bf16, where small updates round away, with bf16 optimizer state.
    Each upcast module gets hooks that cast its floating inputs to fp32 and its output back to its old dtype, so the
    layers around it see the dtype they had (without autocast a bf16 activation meets an fp32 weight).
    """
    import torch

    changed = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False)
               if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
        if not own:
            continue
        module._peftkit_base_dtype = own[0].dtype
        module.float()
        module.register_forward_pre_hook(_inputs_to_float32, with_kwargs=True)
        module.register_forward_hook(_output_to_base_dtype)
        changed.append(name)
    return changed


def _inputs_to_float32(module, args, kwargs):
    import torch

    def cast(a):
        return a.float() if torch.is_tensor(a) and a.is_floating_point() else a

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _output_to_base_dtype(module, args, output):
    import torch

    if torch.is_tensor(output) and output.is_floating_point():
        return output.to(module._peftkit_base_dtype)
    return output


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count by their real element count."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def save_adapter(model, tokenizer, final_dir: Path) -> None:
    """Write the adapter and tokenizer beside the old ones, then swap: a failure leaves the previous adapter."""
    import shutil

    tmp = staging_dir(final_dir)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_dir_atomic(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
