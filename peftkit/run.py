"""`peftkit train`, `validate` and `evaluate`: the one checklist every task goes through, its cheap half, and
the evaluation of a finished run.

What differs between tasks (their data, model, trainer, evaluation and model card) lives in one module per
task under ``peftkit/tasks``; this file is the order of the stages and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_json_atomic
from peftkit.core.console import say, set_stage
from peftkit.model.adapter import attach_adapter, parameter_counts, save_adapter
from peftkit.model.base import load_tokenizer, local_path, resolve_model_source
from peftkit.model.check import (
    check_positions,
    check_recipe_against_model,
    checkable_folder,
)
from peftkit.model.quantize import prepare_for_training
from peftkit.model.transfer import check_init_from
from peftkit.recipe import Recipe, checkpointing_enabled
from peftkit.runs.folder import (
    finish_run_folder,
    open_run_dir,
    replace_previous_run,
    resume_point,
    save_run_files,
)
from peftkit.runs.layout import ADAPTER_DIR, DATA_REPORT_FILE, SUMMARY_FILE, TRAINING_LOG_FILE
from peftkit.runs.read import load_run
from peftkit.tasks import task_for
from peftkit.trainer.launch import check_launch
from peftkit.trainer.loop import (
    skipped_batches,
    train_until_done_or_signalled,
    warn_if_almost_nothing,
)
from peftkit.trainer.selection import describe as describe_selection
from peftkit.trainer.selection import (
    selection_callbacks,
    selection_report,
    validation_rows,
)
from peftkit.trainer.summary import losses_before, summary


def run(recipe: Recipe, resume: bool = False, callbacks: Sequence = ()) -> dict[str, Any]:
    """Train an adapter as the recipe says, save the run folder, evaluate. Returns the metrics.

    `callbacks` are extra TrainerCallbacks (a sweep's pruning, for example) added to the task's own.
    """
    from transformers import set_seed

    task = task_for(recipe.task)
    started = time.time()
    # ---- seed: first, so adapter init, dropout and shuffling are all reproducible -------------
    set_seed(recipe.seed)
    # ---- cheap checks: model source, data files, the model built from its config on the meta device
    #      (target modules, positions, weights vs config.json), the run folder (refuses to mix runs; lock)
    resolve_model_source(recipe.model)
    raw = task.read_data(recipe)
    source = local_path(recipe.model)
    check_recipe_against_model(recipe, source, len(raw.label_names) if raw.label_names else None)
    check_init_from(recipe, raw.label_names)
    run_dir = open_run_dir(recipe, resume)
    # ---- tokenizer, and the data as training will see it (a task may still stop: nothing lost) -
    tokenizer = load_tokenizer(recipe.model, source)
    data = task.prepare_data(recipe, tokenizer, raw)
    warn_if_almost_nothing(recipe, data.train_examples)
    # ---- run folder: the previous run replaced if asked; the checkpoint to resume ------------
    checkpoint = resume_point(replace_previous_run(run_dir, recipe), resume, recipe.source)
    before = losses_before(checkpoint)  # read now: checkpoint rotation may delete that checkpoint
    # ---- launch: training arguments, and a check that N processes really make one run --------
    args = task.training_arguments(recipe, run_dir)
    check_launch(args)
    # ---- model -------------------------------------------------------------------------------
    set_stage("loading the model")
    model = task.load_model(recipe, tokenizer, data, source)
    check_positions(recipe, model.config, source)  # again on the loaded config: a hub model was not checked before
    set_stage("preparing the run")
    model = prepare_for_training(model, recipe.quantization, checkpointing_enabled(recipe.train))
    # ---- adapter -----------------------------------------------------------------------------
    set_seed(recipe.seed)
    model = attach_adapter(model, recipe.adapter, task_type=task.PEFT_TASK_TYPE)
    trainable, total = parameter_counts(model)
    say(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    # ---- trainer -----------------------------------------------------------------------------
    trainer = task.build_trainer(recipe, args, model, tokenizer, data)
    for callback in [*selection_callbacks(recipe), *callbacks]:
        trainer.add_callback(callback)
    if trainer.is_world_process_zero():
        save_run_files(run_dir, recipe, data.label_names)
        write_json_atomic(run_dir / DATA_REPORT_FILE, data.report)
    # ---- train (a signal saves a checkpoint and stops cleanly) --------------------------------
    result = train_until_done_or_signalled(trainer, checkpoint, recipe)
    facts = task.training_facts(trainer)
    # ---- save the adapter and tokenizer, atomically ------------------------------------------
    if trainer.is_world_process_zero():
        save_adapter(trainer.model, tokenizer, run_dir / ADAPTER_DIR)
    # ---- evaluate ----------------------------------------------------------------------------
    set_stage("evaluating")
    metrics = task.evaluate(recipe, trainer, data) if recipe.evaluate.enabled else {}
    if metrics:  # which split chose the model: metrics.json says it, and so does the console
        metrics["selection"] = selection_report(recipe, trainer, validation_rows(data), metrics.get("data_file"))
        if trainer.is_world_process_zero():
            say(describe_selection(metrics["selection"]))
    # ---- metrics and summary, written by the main process ------------------------------------
    if trainer.is_world_process_zero():
        write_json_atomic(run_dir / TRAINING_LOG_FILE, trainer.state.log_history)  # before the report reads it
        if metrics:
            say(task.save_metrics(run_dir, metrics))
        facts |= {"skipped_nonfinite_batches": skipped_batches(trainer)}
        examples = (data.train_examples, data.eval_examples)
        write_json_atomic(run_dir / SUMMARY_FILE, summary(recipe, result, trainable, total, started, examples,
                                                          before) | facts)
        say(finish_run_folder(run_dir, recipe.keep_checkpoints, trainer.state.best_model_checkpoint))
    return metrics


def evaluate_saved_run(run_dir: str | Path, data_file: str | None = None) -> dict[str, Any]:
    """`peftkit evaluate`: a run folder's adapter on its eval split, or on another file."""
    run_dir, recipe = load_run(run_dir)
    return task_for(recipe.task).evaluate_run(run_dir, recipe, data_file)


# ---------------------------------------------------------------------------------------------
# `peftkit validate`: every check that does not need a model, including reading the data
# ---------------------------------------------------------------------------------------------


def check_recipe_inputs(recipe: Recipe) -> str:
    """Raise PeftkitError on the first problem; return a short summary when all is well."""
    source = resolve_model_source(recipe.model)
    data_report, labels = task_for(recipe.task).check_inputs(recipe)  # the data, read as the task's training reads it
    # the model built from its config on the meta device: target modules, positions, weights vs config
    check_recipe_against_model(recipe, checkable_folder(recipe), labels)
    check_init_from(recipe)
    quant = ("4-bit " + recipe.quantization.bnb_4bit_quant_type if recipe.quantization.load_in_4bit
             else "8-bit" if recipe.quantization.load_in_8bit else "none")
    return "\n".join([
        f"recipe OK: {recipe.source}",
        f"task: {recipe.task}; model: {source}; quantization: {quant}; "
        f"adapter: {'DoRA' if recipe.adapter.use_dora else 'LoRA'} r={recipe.adapter.r}",
        data_report,
        f"output_dir: {recipe.output_dir}",
    ])
