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
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftkit import __version__
from peftkit.errors import PeftkitError
from peftkit.io import replace_dir_atomic, staging_dir, write_json_atomic
from peftkit.recipe import MergeSection, QuantizationSection, Recipe
from peftkit.runfolder import ADAPTER_DIR, LABEL_MAP_FILE, label_names_of, load_run

if TYPE_CHECKING:
    import torch

MERGED_DIR = "merged"
REPORT_FILE = "merge_report.json"
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
                 "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
ALL_ROWS = "all"
ACCURACY_EPSILON = 1e-9  # float noise in accuracy differences, far below one example in any sample


@dataclass
class Sample:
    """The eval rows both models are run on."""

    texts: list[str]
    labels: list[int]
    source: str
    eval_rows: int
    """Rows in the eval split the sample was drawn from."""


@dataclass
class Drift:
    """How far one model's outputs are from the adapter model's on the verification sample."""

    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    prediction_agreement: float
    accuracy: float
    macro_f1: float


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
        write_json_atomic(run_dir / REPORT_FILE, report)
        say(format_report(report))
        check_quality(report, run_dir)
        write_json_atomic(staging / REPORT_FILE, report)
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
            raise PeftkitError(f"--max-accuracy-drop {max_accuracy_drop}: a fraction between 0 and 1 (0.005 = half a point)")
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
    earlier_merge = (out_dir / REPORT_FILE).is_file() and (out_dir / "config.json").is_file()
    if out_dir.is_dir() and any(out_dir.iterdir()) and not earlier_merge:
        raise PeftkitError(f"--out {out_dir} exists and is not an earlier peftkit merge; it would be replaced. "
                           "Choose an empty or new folder")
    return out_dir


# ---------------------------------------------------------------------------------------------
# Verification data
# ---------------------------------------------------------------------------------------------


def verification_sample(recipe: Recipe, labels: list[str], limit: int | None) -> Sample:
    """A seeded random subset of the run's eval split (the same rows on every merge of the run)."""
    if recipe.task != "classification":
        # Causal-LM tasks: the one missing branch (texts from the SFT eval split, logits per completion token).
        raise PeftkitError(f"peftkit merge verifies task 'classification' only; task {recipe.task!r} is not "
                           "supported yet")
    from peftkit.data import load_classification_data

    data_section = dataclasses.replace(recipe.data, label_names=labels)
    data = load_classification_data(data_section, recipe.seed, eval_file=recipe.data.eval_file)
    split, report = data.splits["eval"], data.reports["eval"]
    rows = list(range(len(split["text"])))
    if limit is not None and len(rows) > limit:
        rows = sorted(random.Random(recipe.seed).sample(rows, limit))
    return Sample(texts=[split["text"][i] for i in rows], labels=[split["label"][i] for i in rows],
                  source=report.source, eval_rows=len(split["text"]))


def encode(texts: list[str], tokenizer, max_length: int, batch_size: int) -> list[tuple[list[int], dict]]:
    """(row indices, padded batch) pairs, rows sorted by length so batches pad little; the same for every model."""
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batches.append((rows, tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")))
    return batches


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def load_adapter_model(run_dir: Path, recipe: Recipe, labels: list[str]):
    """(tokenizer, the base quantized as in training + the trained adapter): what the merge must reproduce."""
    from peft import PeftModel

    from peftkit.model import load_tokenizer

    if recipe.task == "classification":
        from peftkit.model import load_trained_classifier

        return load_trained_classifier(run_dir, recipe.model, recipe.quantization, labels)
    tokenizer = load_tokenizer(recipe.model, str(run_dir / ADAPTER_DIR))
    base = load_base(recipe, labels, tokenizer, quantized=True)
    return tokenizer, PeftModel.from_pretrained(base, str(run_dir / ADAPTER_DIR), is_trainable=False).eval()


def load_base(recipe: Recipe, labels: list[str], tokenizer, *, quantized: bool):
    """The run's base model: quantized as the recipe says, or unquantized in float32 (the merge target)."""
    model = recipe.model if quantized else dataclasses.replace(recipe.model, dtype="float32")
    quant = recipe.quantization if quantized else QuantizationSection()
    if recipe.task == "classification":
        from peftkit.model import load_classifier

        return load_classifier(model, quant, labels, tokenizer)
    from peftkit.model import load_causal_lm

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

    from peftkit.quantize import quantized_linear_weights

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

    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    net, info = cls.from_pretrained(folder, output_loading_info=True)
    missing = list(info.get("missing_keys") or [])
    unexpected = list(info.get("unexpected_keys") or [])
    if missing or unexpected:
        raise PeftkitError(f"the merged model in {folder} does not reload cleanly (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}); it was not put in place. Please report this")
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def predict_logits(model, batches) -> torch.Tensor:
    from peftkit.progress import with_progress

    """Float32 logits for every row, in the sample's order."""
    import torch

    total = sum(len(rows) for rows, _ in batches)
    device = getattr(model, "device", torch.device("cpu"))  # a quantized base sits on the GPU when there is one
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for rows, batch in with_progress(batches, len(batches), "merge verification", unit="batches", min_total=4):
            logits = model(**batch.to(device)).logits.float().cpu()
            if out is None:
                out = torch.empty((total, *logits.shape[1:]), dtype=torch.float32)
            out[rows] = logits
    assert out is not None
    return out


def scores(logits, sample: Sample, labels: list[str]) -> dict[str, float]:
    from peftkit.evaluate import classification_metrics

    metrics = classification_metrics(sample.labels, logits.argmax(-1).tolist(), labels)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def compare(reference, logits, sample: Sample, labels: list[str]) -> Drift:
    diff = (logits - reference).abs()
    agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    return Drift(max_abs_logit_diff=float(diff.max()), mean_abs_logit_diff=float(diff.mean()),
                 prediction_agreement=float(agreement), **scores(logits, sample, labels))


def check_quality(report: dict[str, Any], run_dir: Path) -> None:
    """A merge that loses more accuracy than allowed must not be used by accident: fail loudly."""
    if report["passed"]:
        return
    v = report["verification"]
    raise PeftkitError(
        f"merge failed verification: accuracy {v['adapter_model']['accuracy']:.4f} -> "
        f"{v['merged_model']['accuracy']:.4f} (drop {v['accuracy_drop']:.4f} > allowed "
        f"{v['max_accuracy_drop']:.4f}) on {v['samples']} eval rows. The merged model was not put in place "
        f"({report['out_dir']} is unchanged); details in {run_dir / REPORT_FILE}. Try --base dequantized or --dtype fp32, or allow more with "
        "merge.max_accuracy_drop in the recipe (--max-accuracy-drop)")


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def build_report(run_dir: Path, out_dir: Path, recipe: Recipe, settings: MergeSection, sample: Sample,
                 chosen: str, candidates: dict[str, Drift], reference_scores: dict[str, float], final: Drift,
                 weight_files: list[str], started: float) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    drop = reference_scores["accuracy"] - final.accuracy
    quant = recipe.quantization
    return {
        "passed": drop <= settings.max_accuracy_drop + ACCURACY_EPSILON,
        "run_dir": str(run_dir),
        "out_dir": str(out_dir),
        "task": recipe.task,
        "base_model": recipe.model.name_or_path,
        "trained_on": "4-bit " + quant.bnb_4bit_quant_type if quant.load_in_4bit
        else "8-bit" if quant.load_in_8bit else f"unquantized {recipe.model.dtype}",
        "base": chosen,
        "base_requested": settings.base,
        "base_rule": base_rule(settings.base, quant, len(candidates)),
        "candidates": {name: dataclasses.asdict(d) for name, d in candidates.items()},
        "dtype": settings.dtype,
        "weight_files": weight_files,
        "max_shard_size": settings.max_shard_size,
        "verification": {
            "data": sample.source,
            "samples": len(sample.texts),
            "eval_rows": sample.eval_rows,
            "compared": "adapter model (base quantized as in training + adapter, via peft) vs the merged model "
                        "reloaded from disk with plain transformers",
            "max_abs_logit_diff": final.max_abs_logit_diff,
            "mean_abs_logit_diff": final.mean_abs_logit_diff,
            "prediction_agreement": final.prediction_agreement,
            "adapter_model": reference_scores,
            "merged_model": {"accuracy": final.accuracy, "macro_f1": final.macro_f1},
            "accuracy_drop": drop,
            "max_accuracy_drop": settings.max_accuracy_drop,
        },
        "wall_time_s": round(time.perf_counter() - started, 1),
        "versions": {"peftkit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }


def base_rule(requested: str, quant: QuantizationSection, n_candidates: int) -> str:
    if not quant.enabled:
        return "unquantized run: its original weights are what the adapter was trained against"
    if n_candidates > 1:
        return "auto: the candidate with the smaller mean absolute logit difference to the adapter model"
    return f"chosen by --base / merge.base: {requested}"


def format_drift(d: Drift) -> str:
    return (f"max |dlogit| {d.max_abs_logit_diff:.3g}, mean {d.mean_abs_logit_diff:.3g}, "
            f"agreement {d.prediction_agreement:.2%}, accuracy {d.accuracy:.4f}, macro F1 {d.macro_f1:.4f}")


def format_report(report: dict[str, Any]) -> str:
    v = report["verification"]
    before, after = v["adapter_model"], v["merged_model"]
    lines = [f"merged into {report['base']} weights ({report['base_rule']}), saved as {report['dtype']} "
             f"in {len(report['weight_files'])} file(s)"]
    for name, d in report["candidates"].items():
        mark = "  <- chosen" if name == report["base"] else ""
        lines.append(f"  candidate {name:<11} (float32): {format_drift(Drift(**d))}{mark}")
    lines += [
        f"verification on {v['samples']} eval rows ({v['data']}), saved model reloaded with plain transformers:",
        f"  max |dlogit| {v['max_abs_logit_diff']:.3g}, mean {v['mean_abs_logit_diff']:.3g}, "
        f"prediction agreement {v['prediction_agreement']:.2%}",
        f"  accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f} (drop {v['accuracy_drop']:+.4f}, "
        f"allowed {v['max_accuracy_drop']:.4f}); macro F1 {before['macro_f1']:.4f} -> {after['macro_f1']:.4f}",
        f"  {'PASSED' if report['passed'] else 'FAILED'} in {report['wall_time_s']:.0f} s",
    ]
    return "\n".join(lines)


def say(message: str) -> None:
    print(message, flush=True)
