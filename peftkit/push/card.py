"""Model card for a finished run: hub metadata (with measured metrics as `model-index`) and a README body.

Everything on the card is read from the run folder (recipe.yaml, metrics.json, train_summary.json,
label_map.json), so the card states what was measured, never what was hoped for. Building it needs no
network: `ModelCard.validate()` posts to the hub, so validation is left to the hub at commit time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from peftkit.errors import PeftkitError
from peftkit.recipe.task_traits import DEFAULT_TASK
from peftkit.runs.read import RunRecord, load_run_record
from peftkit.tasks.cards import fmt as _fmt
from peftkit.tasks.cards import is_number
from peftkit.tasks.interface import TaskCard

# Keys that may hold credentials (e.g. TrainingArguments.hub_token): never uploaded, never shown on a card.
SECRET_KEYS = frozenset({"hub_token", "token", "hf_token", "use_auth_token", "api_key"})



def looks_like_hub_id(name: Any) -> bool:
    """True for a string the hub would accept as a repo id that is not a path on this machine.

    Local paths are what peft#2124 is about: an adapter pointing at a directory nobody else has.
    """
    if not isinstance(name, str) or not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_base_hub_id(run: RunRecord, override: str | None = None) -> tuple[str, str]:
    """Return (hub id of the base model, where it came from); fail if no source names one.

    Order: explicit override, train_summary.json, the packaged-model table, recipe model.name_or_path.
    """
    if override is not None:
        if not looks_like_hub_id(override) or "/" not in override:
            raise PeftkitError(f"--base-model-id {override!r} is not a hub model id of the form ORG/NAME")
        return override, "--base-model-id"
    from_summary = run.summary.get("base_model_hub_id")
    if looks_like_hub_id(from_summary):
        return from_summary, "train_summary.json base_model_hub_id"
    name_or_path = run.section("model").get("name_or_path")
    packaged = _packaged_hub_id(name_or_path)
    if packaged:
        return packaged, f"packaged model {name_or_path}"
    if looks_like_hub_id(name_or_path):
        return name_or_path, "recipe model.name_or_path"
    raise PeftkitError(
        f"cannot tell which Hugging Face Hub model the base model ({name_or_path!r}) is; "
        "pass --base-model-id ORG/NAME (the hub id of the model the adapter was trained on)"
    )


def _packaged_hub_id(name_or_path: Any) -> str | None:
    """Map a `packaged:` model name to its hub id via peftkit.model.packaged, when that module is installed."""
    if not isinstance(name_or_path, str):
        return None
    try:
        from peftkit.model.packaged import hub_id_for
    except ImportError:
        return None
    return hub_id_for(name_or_path)


def public_recipe(recipe: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return the recipe without credential keys, and the dotted paths of what was removed."""
    dropped: list[str] = []

    def clean(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            kept = {}
            for key, value in node.items():
                dotted = f"{path}.{key}" if path else str(key)
                if str(key).lower() in SECRET_KEYS:
                    dropped.append(dotted)
                else:
                    kept[key] = clean(value, dotted)
            return kept
        if isinstance(node, list):
            return [clean(item, f"{path}[{i}]") for i, item in enumerate(node)]
        return node

    return clean(recipe, ""), dropped


def hub_dataset_id(run: RunRecord) -> str | None:
    """The hub dataset the run trained on, if the recipe names one (local files have none)."""
    dataset = run.section("data").get("dataset")
    return dataset if looks_like_hub_id(dataset) else None


def build_model_card(
    run_dir: str | Path, *, merged: bool, repo_id: str, base_model_id: str | None = None
) -> ModelCard:
    """Build the README.md for pushing RUN_DIR's adapter (or merged model) to `repo_id`.

    `base_model_id` overrides the base hub id found in the run folder (same rule as `peftkit push`).
    What is specific to the run's task (what the model does, its metrics, how to use it) comes from the task's
    module; the card is built by parsing its own text, so what is returned is exactly what the hub will read.
    """
    from peftkit.tasks import task_for

    run = load_run_record(run_dir)
    base_id, _ = resolve_base_hub_id(run, base_model_id)
    task = task_for(run.recipe.get("task", DEFAULT_TASK))
    told = task.card(run, merged=merged, repo_id=repo_id, base_id=base_id)
    data = _card_data(run, told, merged=merged, repo_id=repo_id, base_id=base_id)
    body = _body(run, told, merged=merged, repo_id=repo_id, base_id=base_id)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _card_data(run: RunRecord, told: TaskCard, *, merged: bool, repo_id: str, base_id: str) -> ModelCardData:
    """Hub metadata: what the model is, what it derives from, and the measured metrics."""
    dataset_id = hub_dataset_id(run)
    return ModelCardData(
        library_name="transformers" if merged else "peft",
        base_model=base_id,
        base_model_relation="finetune" if merged else "adapter",
        datasets=[dataset_id] if dataset_id else None,
        license=_license(run),
        pipeline_tag=told.pipeline_tag,
        tags=_tags(run, told, merged=merged),
        metrics=[metric_type for key, metric_type, _, _ in told.metrics if is_number(run.metrics.get(key))],
        model_name=repo_id,
        eval_results=_eval_results(run, told) or None,
    )


def _license(run: RunRecord) -> str | None:
    """The license, if the run recorded one (the recipe's `license` or the base model's, from training)."""
    return run.recipe.get("license") or run.summary.get("base_model_license")


def _quantization_mode(run: RunRecord) -> str | None:
    """4-bit or 8-bit, as the recipe's quantization section says; None for a full-precision base."""
    quant = run.section("quantization")
    return "4-bit" if quant.get("load_in_4bit") else "8-bit" if quant.get("load_in_8bit") else None


def _tags(run: RunRecord, told: TaskCard, *, merged: bool) -> list[str]:
    """Hub tags: the toolkit, the method (LoRA, plus DoRA / QLoRA when used) and the task."""
    adapter = run.section("adapter")
    tags = ["peftkit", "lora", told.pipeline_tag]
    if adapter.get("use_dora"):
        tags.append("dora")
    if _quantization_mode(run) == "4-bit":
        tags.append("qlora")
    tags.append("merged" if merged else "peft-adapter")
    return tags


def _eval_results(run: RunRecord, told: TaskCard) -> list[EvalResult]:
    """One EvalResult per aggregate metric in metrics.json, all on the same dataset and split."""
    dataset_name = _eval_dataset_name(run)
    return [
        EvalResult(
            task_type=told.pipeline_tag,
            task_name=told.pipeline_tag.replace("-", " ").title(),
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            dataset_split=run.metrics.get("split"),
            metric_type=metric_type,
            metric_name=pretty,
            metric_value=run.metrics[key],
            metric_args=args,
        )
        for key, metric_type, pretty, args in told.metrics
        if is_number(run.metrics.get(key))
    ]


def _eval_dataset_name(run: RunRecord) -> str:
    """Name the evaluated data: the hub dataset id, else the evaluated file's name (its path is local)."""
    data_file = run.metrics.get("data_file") or run.section("data").get("eval_file")
    return hub_dataset_id(run) or (Path(str(data_file)).name if data_file else "unknown")


def _body(run: RunRecord, told: TaskCard, *, merged: bool, repo_id: str, base_id: str) -> str:
    """The Markdown body, section by section."""
    sections = [
        _summary_section(run, told, merged=merged, repo_id=repo_id, base_id=base_id),
        _data_section(run),
        told.evaluation,
        told.usage,
        _recipe_section(run),
        _training_section(run),
        _limitations_section(run, told, merged=merged),
    ]
    return "\n\n".join(sections) + "\n"


def _summary_section(run: RunRecord, told: TaskCard, *, merged: bool, repo_id: str, base_id: str) -> str:
    adapter = run.section("adapter")
    kind = "a full model with a LoRA adapter merged into its weights" if merged else "a LoRA adapter"
    method = "DoRA" if adapter.get("use_dora") else "LoRA"
    return (
        f"# {repo_id.split('/')[-1]}\n\n"
        f"This repository holds {kind} for {told.what}, fine-tuned from "
        f"[`{base_id}`](https://huggingface.co/{base_id}) with {method} using peftkit.\n\n"
        f"- **Base model:** [`{base_id}`](https://huggingface.co/{base_id})\n"
        f"- **Task:** {told.task_line}\n"
        f"- **Method:** {method}, rank {adapter.get('r', '?')}, alpha {adapter.get('lora_alpha', '?')}"
        f"{_quantization_note(run)}\n"
        f"- {told.headline}"
    )


def _quantization_note(run: RunRecord) -> str:
    mode = _quantization_mode(run)
    return "" if mode is None else f", trained on a {mode} quantized base (QLoRA-style)"


def _data_section(run: RunRecord) -> str:
    data = run.section("data")
    dataset_id = hub_dataset_id(run)
    lines = ["## Data", ""]
    if dataset_id:
        lines.append(f"- **Dataset:** [`{dataset_id}`](https://huggingface.co/datasets/{dataset_id})")
    for key, label in (("train_file", "Training file"), ("eval_file", "Evaluation file")):
        if data.get(key):
            lines.append(f"- **{label}:** `{Path(str(data[key])).name}`")
    if not dataset_id and not data.get("train_file"):
        lines.append(f"- **Dataset:** {data.get('dataset') or 'not recorded in the recipe'}")
    lines.append(f"- **Text column:** `{data.get('text_column', 'text')}`, "
                 f"**label column:** `{data.get('label_column', 'label')}`")
    if data.get("max_length"):
        lines.append(f"- **Max length:** {data['max_length']} tokens (longer inputs were truncated)")
    return "\n".join(lines)


def _recipe_section(run: RunRecord) -> str:
    adapter, train = run.section("adapter"), run.section("train")
    highlights = [
        f"- **Adapter:** r={adapter.get('r')}, lora_alpha={adapter.get('lora_alpha')}, "
        f"lora_dropout={adapter.get('lora_dropout')}, target_modules={adapter.get('target_modules')}, "
        f"use_dora={adapter.get('use_dora', False)}, use_rslora={adapter.get('use_rslora', False)}",
        f"- **Quantization:** {_quantization_mode(run) or 'none'}",
        f"- **Training:** learning_rate={train.get('learning_rate')}, "
        f"num_train_epochs={train.get('num_train_epochs')}, "
        f"per_device_train_batch_size={train.get('per_device_train_batch_size')}, seed={train.get('seed')}",
    ]
    recipe, _ = public_recipe(run.recipe)
    dumped = yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return (
        "## Training recipe\n\n"
        + "\n".join(highlights)
        + "\n\nThe full resolved recipe, as in `recipe.yaml` in this repository (data paths are the "
        "ones on the training machine):\n\n"
        f"```yaml\n{dumped}```"
    )


def _training_section(run: RunRecord) -> str:
    summary = run.summary
    trainable, total = summary.get("trainable_params"), summary.get("total_params")
    share = f" ({100 * trainable / total:.3g}% of {total:,})" if is_number(trainable) and total else ""
    lines = [
        "## Training hardware and time",
        "",
        f"- **Hardware:** {summary.get('hardware', 'not recorded')}",
        f"- **Wall time:** {_fmt_seconds(summary.get('wall_time_s'))}; trainer runtime "
        f"{_fmt_seconds(summary.get('train_runtime_s'))} over {summary.get('global_step', '?')} optimizer steps",
        f"- **Peak memory (RSS):** {_fmt(summary.get('peak_rss_mb'), 0)} MB",
        f"- **Trainable parameters:** {f'{trainable:,}{share}' if is_number(trainable) else 'not recorded'}",
        f"- **peftkit version:** {summary.get('peftkit_version', 'not recorded')}",
    ]
    return "\n".join(lines)


def _limitations_section(run: RunRecord, told: TaskCard, *, merged: bool) -> str:
    n = run.metrics.get("num_examples")
    quant_mode = _quantization_mode(run)
    lines = [
        "## Limitations",
        "",
        f"- The metrics come from a single evaluation on {n if n is not None else 'an unknown number of'} "
        f"examples ({_eval_dataset_name(run)}); expect different numbers on text unlike it, and wide "
        "uncertainty when the evaluation set is small.",
        *told.limits,
        "- It inherits the biases and the language coverage of the base model and of the training data, "
        "which were not audited.",
    ]
    max_length = run.section("data").get("max_length")
    if max_length:
        lines.append(f"- Inputs longer than {max_length} tokens were truncated in training and evaluation.")
    if quant_mode is not None:
        target = "merged into full-precision weights" if merged else "applied to a full-precision base"
        lines.append(
            f"- The adapter was trained against a {quant_mode} quantized base; {target}, its outputs can "
            "differ slightly from the measured ones."
        )
    return "\n".join(lines)


def _fmt_seconds(value: Any) -> str:
    if not is_number(value):
        return "not recorded"
    return f"{value:.0f} s" if value < 120 else f"{value:.0f} s ({value / 60:.1f} min)"
