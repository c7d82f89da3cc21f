"""What ``peftkit merge`` measures: the verification sample, the merged model's logits against the adapter
model's, the quality gate and merge_report.json."""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftkit import __version__
from peftkit.core.progress import with_progress
from peftkit.errors import PeftkitError
from peftkit.recipe import MergeSection, QuantizationSection, Recipe
from peftkit.recipe.task_traits import tasks_where, traits_of
from peftkit.runs.layout import MERGE_REPORT_FILE

if TYPE_CHECKING:
    import torch

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
# Verification data
# ---------------------------------------------------------------------------------------------


def verification_sample(recipe: Recipe, labels: list[str], limit: int | None) -> Sample:
    """A seeded random subset of the run's eval split (the same rows on every merge of the run)."""
    if not traits_of(recipe.task).mergeable:
        # Causal-LM tasks: the one missing branch (texts from the SFT eval split, logits per completion token).
        verified = " and ".join(map(repr, tasks_where("mergeable")))
        raise PeftkitError(f"peftkit merge verifies task {verified} only; task {recipe.task!r} is not supported yet")
    from peftkit.data.classification import load_classification_data

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
# Measuring
# ---------------------------------------------------------------------------------------------


def predict_logits(model, batches) -> torch.Tensor:
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
    from peftkit.evaluation.metrics import classification_metrics

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
        f"({report['out_dir']} is unchanged); details in {run_dir / MERGE_REPORT_FILE}. Try --base dequantized or "
        "--dtype fp32, or allow more with "
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
