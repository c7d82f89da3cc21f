"""`peftkit merge`: fold a run's adapter into full-precision weights, and prove the result behaves like the
adapter model before it is put in place.

Why the care: ``merge_and_unload`` on a 4-bit base gives a still-quantized model whose outputs moved
(transformers#31293, peft#2321, LLaMA-Factory#5171). A QLoRA adapter learned its update against the
*dequantized* 4-bit weights, not the original ones, so peftkit can merge into either, measures both against
the adapter model (quantized base + adapter, exactly as trained) and keeps the closer one (``base: auto``).

Every merge is verified on a sample of the eval split: the merged model is saved to a staging folder,
reloaded with plain transformers (no peft), and its logits and accuracy are compared with the adapter
model's. Only a merge that passes is renamed into place; ``merge_report.json`` says what was measured.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

from peftkit.core.atomic import replace_dir_atomic, staging_dir, write_json_atomic
from peftkit.errors import PeftkitError
from peftkit.merge.check import (
    Sample,
    build_report,
    check_quality,
    compare,
    encode,
    format_drift,
    format_report,
    predict_logits,
    scores,
    verification_sample,
)
from peftkit.recipe import MergeSection, QuantizationSection, Recipe
from peftkit.recipe.task_traits import traits_of
from peftkit.runs.layout import ADAPTER_DIR, LABEL_MAP_FILE, MERGE_REPORT_FILE, MERGED_DIR
from peftkit.runs.read import label_names_of, load_run, refuse_multitask

DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
                 "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
ALL_ROWS = "all"


# ---------------------------------------------------------------------------------------------
# The checklist
# ---------------------------------------------------------------------------------------------


def merge_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, dtype: str | None = None,
              base: str | None = None, verify_samples: int | str | None = None,
              max_accuracy_drop: float | None = None) -> dict[str, Any]:
    """Merge RUN_DIR's adapter, verify it against the adapter model, and put it in RUN_DIR/merged (or ``out``).

    Arguments left as None come from the run's recipe ``merge`` section; ``verify_samples="all"`` uses the
    whole eval split.
    Raises PeftkitError, leaving no merged folder in place, when accuracy drops more than allowed.
    """
    started = time.perf_counter()
    # ---- run folder and settings: cheap checks before anything is loaded --------------------
    run_dir, recipe = load_run(run_dir)
    settings = merge_settings(recipe.merge, dtype=dtype, base=base, verify_samples=verify_samples,
                              max_accuracy_drop=max_accuracy_drop)
    bases = candidate_bases(settings.base, recipe.quantization)
    out_dir = check_out_dir(Path(out) if out else run_dir / MERGED_DIR, run_dir)
    refuse_multitask(run_dir, recipe, "merge")
    labels = label_names_of(run_dir)
    # ---- verification sample: eval rows, read before any model is loaded ---------------------
    sample = verification_sample(recipe, labels, settings.verify_samples)
    say(f"merge {run_dir} -> {out_dir}: verifying on {len(sample.texts)} of {sample.eval_rows} eval rows "
        f"from {sample.source}")
    # ---- the reference: the adapter model exactly as trained (quantized base + adapter) ------
    tokenizer, adapter_model = load_adapter_model(run_dir, recipe, labels)
    batches = encode(sample.texts, tokenizer, recipe.data.max_length, recipe.evaluate.batch_size)
    reference = predict_logits(adapter_model, batches)
    reference_scores = scores(reference, sample, labels)
    # ---- merge in float32; with several candidate bases, keep the one closest to the reference
    merged, chosen, candidates = merge_closest(bases, run_dir, recipe, labels, tokenizer, adapter_model,
                                               batches, reference, sample)
    del adapter_model
    # ---- save to a staging folder, reload with plain transformers, compare, then put in place
    staging = staging_dir(out_dir)
    try:
        weight_files = save_merged(merged, tokenizer, run_dir, staging, settings)
        del merged
        final = compare(reference, predict_logits(load_merged(staging, recipe.task), batches), sample, labels)
        report = build_report(run_dir, out_dir, recipe, settings, sample, chosen, candidates, reference_scores,
                              final, weight_files, started)
        write_json_atomic(run_dir / MERGE_REPORT_FILE, report)
        say(format_report(report))
        check_quality(report, run_dir)
        write_json_atomic(staging / MERGE_REPORT_FILE, report)
        replace_dir_atomic(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"merged model: {out_dir}")
    return report


# ---------------------------------------------------------------------------------------------
# Settings and folders
# ---------------------------------------------------------------------------------------------


def merge_settings(section: MergeSection, *, dtype: str | None, base: str | None,
                   verify_samples: int | str | None, max_accuracy_drop: float | None) -> MergeSection:
    """The recipe's merge section with command-line choices on top, checked like recipe values."""
    values: dict[str, Any] = {}
    if dtype is not None:
        if dtype not in DTYPE_ALIASES:
            raise PeftkitError(f"--dtype {dtype!r}: use bf16, fp16 or fp32")
        values["dtype"] = DTYPE_ALIASES[dtype]
    if base is not None:
        if base not in ("auto", "original", "dequantized"):
            raise PeftkitError(f"--base {base!r}: use original, dequantized or auto")
        values["base"] = base
    if verify_samples == ALL_ROWS:
        values["verify_samples"] = None
    elif verify_samples is not None:
        if isinstance(verify_samples, bool) or not isinstance(verify_samples, int) or verify_samples <= 0:
            raise PeftkitError(f"--verify-samples {verify_samples!r}: a positive number of rows, or {ALL_ROWS}")
        values["verify_samples"] = verify_samples
    if max_accuracy_drop is not None:
        if not 0 <= max_accuracy_drop <= 1:
            raise PeftkitError(f"--max-accuracy-drop {max_accuracy_drop}: a fraction between 0 and 1 "
                               "(0.005 = half a point)")
        values["max_accuracy_drop"] = float(max_accuracy_drop)
    return dataclasses.replace(section, **values)


def candidate_bases(requested: str, quant: QuantizationSection) -> list[str]:
    """Which weights to try merging into. An unquantized run was trained against its original weights."""
    if not quant.enabled:
        if requested == "dequantized":
            raise PeftkitError("--base dequantized: this run was trained on an unquantized base, so there is "
                               "nothing to dequantize; use --base original (or auto)")
        return ["original"]
    if requested == "auto":
        return ["dequantized", "original"]  # dequantized first: it wins ties, being what the adapter saw
    return [requested]


def check_out_dir(out_dir: Path, run_dir: Path) -> Path:
    """Refuse an output folder whose replacement would destroy something that is not an earlier merge."""
    out_abs, run_abs = out_dir.resolve(), run_dir.resolve()
    if out_abs == run_abs or out_abs in run_abs.parents or out_abs == run_abs / ADAPTER_DIR:
        raise PeftkitError(f"--out {out_dir}: would replace the run folder or its adapter; "
                           f"choose a new folder (default: {run_dir / MERGED_DIR})")
    if out_dir.is_file():
        raise PeftkitError(f"--out {out_dir} is a file; give a folder")
    earlier_merge = (out_dir / MERGE_REPORT_FILE).is_file() and (out_dir / "config.json").is_file()
    if out_dir.is_dir() and any(out_dir.iterdir()) and not earlier_merge:
        raise PeftkitError(f"--out {out_dir} exists and is not an earlier peftkit merge; it would be replaced. "
                           "Choose an empty or new folder")
    return out_dir


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def load_adapter_model(run_dir: Path, recipe: Recipe, labels: list[str]):
    """(tokenizer, the base quantized as in training + the trained adapter): what the merge must reproduce."""
    from peft import PeftModel

    from peftkit.model.base import load_tokenizer

    if traits_of(recipe.task).head:
        from peftkit.model.base import load_trained_classifier

        return load_trained_classifier(run_dir, recipe.model, recipe.quantization, labels)
    tokenizer = load_tokenizer(recipe.model, str(run_dir / ADAPTER_DIR))
    base = load_base(recipe, labels, tokenizer, quantized=True)
    return tokenizer, PeftModel.from_pretrained(base, str(run_dir / ADAPTER_DIR), is_trainable=False).eval()


def load_base(recipe: Recipe, labels: list[str], tokenizer, *, quantized: bool):
    """The run's base model: quantized as the recipe says, or unquantized in float32 (the merge target)."""
    model = recipe.model if quantized else dataclasses.replace(recipe.model, dtype="float32")
    quant = recipe.quantization if quantized else QuantizationSection()
    if traits_of(recipe.task).head:
        from peftkit.model.base import load_classifier

        return load_classifier(model, quant, labels, tokenizer)
    from peftkit.model.base import load_causal_lm

    return load_causal_lm(model, quant, tokenizer)


def merge_closest(bases: list[str], run_dir: Path, recipe: Recipe, labels: list[str], tokenizer, adapter_model,
                  batches, reference, sample: Sample):
    """(merged model, chosen base, {base: Drift}) for the base whose merge is closest to the reference.

    With one candidate nothing is measured here (the saved model is measured anyway). With several, each is
    merged in turn and only the closer one so far is kept, so at most two float32 copies live at once.
    Closeness is the mean absolute logit difference: continuous, unlike agreement on a few hundred rows.
    """
    if len(bases) == 1:
        return merge_into(bases[0], run_dir, recipe, labels, tokenizer, adapter_model), bases[0], {}
    best, best_name, drifts = None, None, {}
    for name in bases:
        model = merge_into(name, run_dir, recipe, labels, tokenizer, adapter_model)
        drifts[name] = compare(reference, predict_logits(model, batches), sample, labels)
        say(f"  merged into {name:<11} weights: {format_drift(drifts[name])}")
        if best_name is None or drifts[name].mean_abs_logit_diff < drifts[best_name].mean_abs_logit_diff:
            best, best_name = model, name
        del model
    return best, best_name, drifts


def merge_into(base_name: str, run_dir: Path, recipe: Recipe, labels: list[str], tokenizer, adapter_model):
    """Load the float32 base, give it the dequantized weights if asked, apply the adapter, merge, unload."""
    from peft import PeftModel

    net = load_base(recipe, labels, tokenizer, quantized=False)
    if base_name == "dequantized":
        load_dequantized_weights(net, adapter_model)
    net = PeftModel.from_pretrained(net, str(run_dir / ADAPTER_DIR), is_trainable=False)
    return net.merge_and_unload().eval()


def load_dequantized_weights(plain, quantized) -> int:
    """Overwrite each linear layer of ``plain`` that is a bitsandbytes layer in ``quantized`` with its
    dequantized float32 weight. Returns how many layers were replaced.

    The plain float32 model supplies the architecture and every unquantized tensor (embeddings, norms, head,
    biases: bitsandbytes leaves those as they were); only the quantized matrices change. The result is a
    plain nn.Linear model, so merging and saving need no bitsandbytes at all.
    """
    import torch

    from peftkit.model.quantize import quantized_linear_weights

    count = 0
    for name, weight in quantized_linear_weights(quantized):
        target = plain_module_name(name)
        try:
            layer = plain.get_submodule(target)
        except AttributeError:
            raise PeftkitError(f"quantized layer {name} has no counterpart {target} in the float32 model") from None
        if not isinstance(layer, torch.nn.Linear) or layer.weight.shape != weight.shape:
            raise PeftkitError(f"quantized layer {name} {tuple(weight.shape)} does not match {target} "
                               f"({type(layer).__name__} {tuple(getattr(layer, 'weight', weight).shape)})")
        with torch.no_grad():
            layer.weight.copy_(weight)
        count += 1
    if count == 0:
        raise PeftkitError("the quantized model has no bitsandbytes layers to dequantize; use --base original")
    return count


def plain_module_name(name: str) -> str:
    """``base_model.model.model.layers.0.q_proj.base_layer`` (inside a PeftModel) -> ``model.layers.0.q_proj``."""
    name = name.removeprefix("base_model.model.")
    return ".".join(part for part in name.split(".") if part != "base_layer")


def save_merged(merged, tokenizer, run_dir: Path, folder: Path, settings: MergeSection) -> list[str]:
    """Sharded safetensors in the chosen dtype, config (with id2label/label2id), tokenizer, label map."""
    import torch

    merged.to(getattr(torch, settings.dtype))
    merged.save_pretrained(folder, safe_serialization=True, max_shard_size=settings.max_shard_size)
    tokenizer.save_pretrained(folder)
    if (run_dir / LABEL_MAP_FILE).is_file():
        shutil.copyfile(run_dir / LABEL_MAP_FILE, folder / LABEL_MAP_FILE)
    os.chmod(folder, 0o777 & ~current_umask())  # mkdtemp makes it private; a model folder is meant to be shared
    return sorted(p.name for p in folder.glob("*.safetensors"))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_merged(folder: Path, task: str):
    """The merged model with plain transformers, as a user would load it; every weight must be in the files."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if traits_of(task).head else AutoModelForCausalLM
    net, info = cls.from_pretrained(folder, output_loading_info=True)
    missing = list(info.get("missing_keys") or [])
    unexpected = list(info.get("unexpected_keys") or [])
    if missing or unexpected:
        raise PeftkitError(f"the merged model in {folder} does not reload cleanly (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}); it was not put in place. Please report this")
    return net.eval()


def say(message: str) -> None:
    print(message, flush=True)
