"""Tasks ``sft`` and ``generative_classification``: a causal LM trained with TRL's SFTTrainer.

``sft`` learns completions (text, prompt/completion, chat, alpaca data) and is evaluated by held-out loss;
``generative_classification`` learns to answer a prompt with a label word and is evaluated by scoring every
label word after the prompt, which gives the same metrics as a classification head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_json_atomic, write_text_atomic
from peftkit.core.console import say
from peftkit.data.causal import (
    DEFAULT_CLASSIFICATION_PROMPT,
    CausalData,
    CausalSplitReport,
    format_causal_report,
    load_causal_data,
)
from peftkit.data.causal_encode import prepare_examples, truncation_length
from peftkit.data.classification import evaluation_file, split_size
from peftkit.errors import PeftkitError
from peftkit.evaluation.calibration import CALIBRATION_FILE
from peftkit.evaluation.causal import evaluate_generative, evaluate_lm_loss, format_lm_metrics, label_scoring
from peftkit.evaluation.metrics import evaluation_dir, format_metrics, write_metrics
from peftkit.evaluation.run_report import write_run_report
from peftkit.model.base import load_causal_lm, load_trained_causal_lm
from peftkit.model.quantize import quant_storage_for
from peftkit.recipe import Recipe
from peftkit.recipe.task_traits import CAUSAL_LM
from peftkit.runs.layout import CHECKPOINT_DIR, EVAL_REPORT_FILE, LABEL_MAP_FILE, METRICS_FILE
from peftkit.runs.read import label_names_of
from peftkit.tasks.cards import (
    AGGREGATE_METRICS,
    classification_evaluation,
    evaluation_intro,
    fmt,
    label_limits,
    metric_table,
)
from peftkit.tasks.interface import TaskCard, TaskData
from peftkit.trainer.attention import attention_kernel
from peftkit.trainer.imbalance import decide as decide_imbalance
from peftkit.trainer.lm_head import apply_recipe_choice
from peftkit.trainer.loop import run_callbacks, trainer_kwargs
from peftkit.trainer.packing import TokenCounter, batching_plan, check_packing_exact
from peftkit.trainer.selection import VALIDATION, carve_validation
from peftkit.trainer.trainer import build_trainer as build_trainer_of
from peftkit.trainer.trainer import setup_for

PEFT_TASK_TYPE = CAUSAL_LM
LM_METRICS = (("eval_loss", "loss", "Eval loss (per completion token)", None),
              ("perplexity", "perplexity", "Perplexity", None))


def read_data(recipe: Recipe) -> CausalData:
    """The examples, read and converted to TRL's formats, and the validation split carved from train when
    ``selection`` asks for one: every check of the files, no tokenizer needed."""
    causal = load_causal_data(recipe.data, recipe.task, recipe.seed)
    carve_validation(causal.splits, causal.reports, recipe.selection, recipe.seed, CausalSplitReport,
                     causal.unused_train)
    return causal


def check_inputs(recipe: Recipe) -> tuple[str, None]:
    """`peftkit validate`: the data read and tokenized as training will (the tokenizer, not the model): what
    truncation drops, and how many tokens each label word is. A causal LM has no head to size (None)."""
    from peftkit.model.base import load_tokenizer

    causal = load_causal_data(recipe.data, recipe.task, recipe.seed)
    tokenizer = load_tokenizer(recipe.model)
    prepare_examples(recipe, tokenizer, causal)
    report = format_causal_report(causal, truncation_length(recipe))
    if causal.label_words:
        report += "\n" + label_word_tokens(tokenizer, causal.label_names, causal.label_words)
    return report, None


def label_word_tokens(tokenizer, label_names: list[str], label_words: list[str]) -> str:
    """How many tokens each label word is (label scoring sums their log-probabilities: see
    peftkit/evaluation/causal.py)."""
    counts = [len(tokenizer(word, add_special_tokens=False)["input_ids"]) for word in label_words]
    line = "label word tokens: " + ", ".join(f"{name} {word!r} {n}" for name, word, n in
                                             zip(label_names, label_words, counts))
    if len(set(counts)) > 1:
        line += (" (lengths differ: evaluate.label_score says how they are made comparable: sum, mean or "
                 "calibrated; see recipes/README.md)")
    return line


def prepare_data(recipe: Recipe, tokenizer, causal: CausalData) -> TaskData:
    """The examples tokenized as TRL will, with the audit of what truncation leaves to learn."""
    encoder = prepare_examples(recipe, tokenizer, causal)  # stops if truncation would drop most of a split
    say(format_causal_report(causal, truncation_length(recipe)))
    check_all_fit(causal, recipe)
    return TaskData(label_names=causal.label_names, report=causal.report_dict(),
                    train_examples=split_size(causal.splits["train"]),
                    eval_examples=split_size(causal.splits["eval"]),
                    prepared={"causal": causal, "encoder": encoder})


def training_arguments(recipe: Recipe, run_dir: Path):
    """The recipe's train section as trl.SFTConfig (max_length from data)."""
    from trl import SFTConfig

    packing = bool(recipe.train.get("packing") or recipe.train.get("padding_free"))
    return SFTConfig(output_dir=str(run_dir / CHECKPOINT_DIR), max_length=trl_max_length(recipe),
                     **trainer_kwargs(recipe, run_dir, packing=packing))


def load_model(recipe: Recipe, tokenizer, data: TaskData, source: str):
    return load_causal_lm(recipe.model, recipe.quantization, tokenizer, source,
                          quant_storage=quant_storage_for(recipe.quantization))


def build_trainer(recipe: Recipe, args, model, tokenizer, data: TaskData):
    """SFTTrainer (with peftkit's run guards) on the audited examples, after checking that packing is exact."""
    import datasets
    from trl import SFTTrainer

    causal: CausalData = data.prepared["causal"]
    eval_during_training = args.eval_strategy != "no"
    # with a validation split, evaluation during training (and the choice of checkpoint) reads it, not the eval file
    during = VALIDATION if VALIDATION in causal.splits else "eval"
    scoring = (data.prepared["encoder"], causal, recipe.data.use_chat_template, recipe.evaluate.batch_size,
               label_scoring(recipe)) if during == VALIDATION and recipe.task == "generative_classification" else None
    setup = setup_for(recipe, args, label_scoring=True, validation_scoring=scoring)
    if args.packing or args.padding_free:  # sequences sharing a row must stay apart on this very model and kernel
        with attention_kernel(setup.attention_kernel, args.device.type):
            check_packing_exact(model, tokenizer, data.prepared["encoder"], causal, recipe)
    trainer = build_trainer_of(
        SFTTrainer, setup,
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(causal.examples("train")),
        eval_dataset=datasets.Dataset.from_list(causal.examples(during)) if eval_during_training else None,
        processing_class=tokenizer,
        callbacks=run_callbacks(recipe),
    )
    if causal.label_names and "train" in causal.splits:
        say(decide_imbalance(recipe, causal.splits["train"]["label"], causal.label_names).line)
    apply_recipe_choice(trainer, recipe.model.lm_head_positions)  # TRL 1.16 projects every position on CPU
    trainer.data_collator = TokenCounter(trainer.data_collator)
    say(batching_plan(trainer, recipe))
    return trainer


def training_facts(trainer) -> dict[str, Any]:
    """Tokens and padding per batch, as the collator really built them."""
    counter: TokenCounter = trainer.data_collator
    say(counter.describe(trainer.args.gradient_accumulation_steps * trainer.args.world_size))
    return counter.summary() | {"packing": trainer.args.packing}


def evaluate(recipe: Recipe, trainer, data: TaskData) -> dict[str, Any]:
    """Label scoring or held-out loss, on the main process only (the other ranks return no metrics)."""
    if not trainer.is_world_process_zero():
        return {}
    return evaluate_causal(recipe, trainer.model, data.prepared["encoder"], data.prepared["causal"])


def save_metrics(out_dir: Path, metrics: dict[str, Any]) -> str:
    """The classification files (metrics.json, report, confusion matrix) or, for SFT, metrics.json and a report.
    Returns the readable report."""
    if "confusion_matrix" in metrics:
        write_metrics(out_dir, metrics)
        write_run_report(out_dir)
        return format_metrics(metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    text = format_lm_metrics(metrics)
    write_text_atomic(out_dir / EVAL_REPORT_FILE, text + "\n")
    return text


def evaluate_causal(recipe: Recipe, model, encoder, causal: CausalData,
                    saved_calibration: dict | None = None) -> dict[str, Any]:
    """The task's evaluation on the eval split: label scoring (generative_classification) or loss (sft)."""
    if recipe.task == "generative_classification":
        metrics = evaluate_generative(model, encoder, causal, recipe.data.use_chat_template, recipe.evaluate.batch_size,
                                      scoring=label_scoring(recipe),
                                      calibrate_on=VALIDATION if VALIDATION in causal.splits else None,
                                      saved_calibration=saved_calibration)
    else:
        metrics = evaluate_lm_loss(model, encoder, causal, recipe.data.max_length, recipe.evaluate.batch_size)
    metrics["split"] = "eval"
    metrics["data_file"] = causal.reports["eval"].source
    return metrics


def evaluate_run(run_dir: Path, recipe: Recipe, data_file: str | None = None) -> dict[str, Any]:
    """`peftkit evaluate` on a causal-LM run: its adapter on the eval split, or on another file."""
    if (run_dir / LABEL_MAP_FILE).is_file():
        recipe.data.label_names = label_names_of(run_dir)
    causal = load_causal_data(recipe.data, recipe.task, recipe.seed, eval_file=evaluation_file(recipe.data, data_file))
    causal.splits = {"eval": causal.splits["eval"]}
    causal.reports = {"eval": causal.reports["eval"]}
    tokenizer, model = load_trained_causal_lm(run_dir, recipe.model, recipe.quantization)
    encoder = prepare_examples(recipe, tokenizer, causal)
    print(format_causal_report(causal, truncation_length(recipe)), flush=True)
    metrics = evaluate_causal(recipe, model, encoder, causal, saved_calibration=read_calibration(run_dir))
    out_dir = evaluation_dir(run_dir, data_file)
    print(save_metrics(out_dir, metrics), flush=True)
    print(f"written to {out_dir}", flush=True)
    return metrics


def read_calibration(run_dir: Path) -> dict[str, Any] | None:
    """The run's calibration.json (a temperature fitted on its validation split), or None."""
    import json

    try:
        saved = json.loads((run_dir / CALIBRATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


# ---------------------------------------------------------------------------------------------
# Padding-free batches without packing
# ---------------------------------------------------------------------------------------------


def unpacked_padding_free(recipe: Recipe) -> bool:
    """Padding-free batches without packing: the batch's examples joined into one row, never truncated by TRL."""
    return bool(recipe.train.get("padding_free") and not recipe.train.get("packing"))


def trl_max_length(recipe: Recipe) -> int | None:
    """data.max_length, except for padding-free batches without packing: TRL cannot truncate those and refuses a
    max_length; the examples fit already (recipe validation allows this for generative_classification only, whose
    prompts peftkit fits to data.max_length, and prepare_data re-checks the audit)."""
    return None if unpacked_padding_free(recipe) else recipe.data.max_length


def check_all_fit(causal: CausalData, recipe: Recipe) -> None:
    """Padding-free batches without packing are not truncated by TRL: stop if any training example is too long."""
    report = causal.reports.get("train")
    if unpacked_padding_free(recipe) and report is not None and report.truncated:
        raise PeftkitError(f"train.padding_free without packing: {report.truncated} training examples are longer "
                           f"than data.max_length ({recipe.data.max_length}) and would not be cut; raise "
                           "data.max_length or set train.packing: true")


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------


def card(run, *, merged: bool, repo_id: str, base_id: str) -> TaskCard:
    if run.recipe.get("task") == "generative_classification":
        labels = ", ".join(f"`{label}`" for label in run.labels)
        words = run.metrics.get("label_words") or {}
        return TaskCard(
            pipeline_tag="text-generation",
            what=f"**text classification** into {len(run.labels)} classes ({labels}) by a causal LM that answers "
                 "with a label word",
            task_line="generative_classification (the model answers each prompt with a label word; predictions "
                      "score every label word and take the most likely)",
            headline=(f"**Eval accuracy:** {fmt(run.metrics.get('accuracy'))}, macro F1: "
                      f"{fmt(run.metrics.get('macro_f1'))} (on {run.metrics.get('num_examples', '?')} evaluation "
                      "examples)"),
            evaluation=classification_evaluation(run, AGGREGATE_METRICS, how=", by label scoring"),
            usage=usage(run, merged=merged, repo_id=repo_id, base_id=base_id, label_words=words),
            limits=label_limits(run),
            metrics=AGGREGATE_METRICS,
        )
    return TaskCard(
        pipeline_tag="text-generation",
        what="**text generation** (supervised fine-tuning on completions)",
        task_line=f"sft (data format {run.section('data').get('format', 'text')})",
        headline=(f"**Eval loss:** {fmt(run.metrics.get('eval_loss'))}, perplexity: "
                  f"{fmt(run.metrics.get('perplexity'), 2)} (on {run.metrics.get('num_examples', '?')} evaluation "
                  "examples)"),
        evaluation="\n".join([*evaluation_intro(run), *metric_table(run.metrics, LM_METRICS)]),
        usage=usage(run, merged=merged, repo_id=repo_id, base_id=base_id),
        limits=["- It was evaluated by held-out loss only: no judgement of the quality of its answers."],
        metrics=LM_METRICS,
    )


def usage(run, *, merged: bool, repo_id: str, base_id: str, label_words: dict[str, str] | None = None) -> str:
    load = (f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n' if merged else
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")'
            f'  # downloads {base_id}, applies the adapter\n')
    imports = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n" if merged else
               "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n")
    data = run.section("data")
    if label_words:
        template = data.get("prompt_template") or DEFAULT_CLASSIFICATION_PROMPT
        ask = (f"prompt = {template!r}.format(text=\"Your text here\")\n"
               f"label_words = {label_words!r}\n"
               "# the label whose word is most likely after the prompt\n")
    else:
        ask = 'prompt = "Your prompt here"\n'
    chat = " (wrap it with tokenizer.apply_chat_template as in training)" if data.get("use_chat_template") else ""
    return (
        "## How to use\n\n"
        f"Prompts must be built as in training{chat}.\n\n"
        "```python\n"
        f"{imports}\n{load}"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
        f"{ask}"
        'inputs = tokenizer(prompt, return_tensors="pt")\n'
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))\n"
        "```"
    )
