"""Checks across fields of a recipe: cheap, before any model or data is loaded."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing

from peftkit.errors import PeftkitError
from peftkit.recipe.sections import CAUSAL_TASKS, DTYPES, SFT_FORMATS, TASKS, DataSection, Recipe


def validate(recipe: Recipe) -> None:
    where = recipe.source or "<recipe>"
    m, q, a, d, t = recipe.model, recipe.quantization, recipe.adapter, recipe.data, recipe.train

    def fail(message: str) -> typing.NoReturn:
        raise PeftkitError(f"{where}: {message}")

    if recipe.task not in TASKS:
        fail(f"'task' must be one of {', '.join(TASKS)}, got {recipe.task!r}")
    if not recipe.output_dir:
        fail("'output_dir' is empty; name the run folder, e.g. runs/sst2-smollm2")
    if not m.name_or_path:
        fail("'model.name_or_path' is required: a hub id, a local folder or packaged:<name>")
    if m.dtype not in DTYPES:
        fail(f"'model.dtype' must be one of {', '.join(DTYPES)}, got {m.dtype!r}")
    if m.attn_implementation not in (None, "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"):
        fail(f"'model.attn_implementation' {m.attn_implementation!r} is not known; use eager, sdpa or "
             "flash_attention_2")
    if m.lm_head_positions not in ("learned", "all"):
        fail(f"'model.lm_head_positions' must be learned or all, got {m.lm_head_positions!r}")
    if m.cpu_attention_kernel not in (None, "math", "default"):
        fail(f"'model.cpu_attention_kernel' must be math or default (or unset), got {m.cpu_attention_kernel!r}")

    if q.load_in_4bit and q.load_in_8bit:
        fail("'quantization.load_in_4bit' and 'quantization.load_in_8bit' are both true; choose one")
    if q.bnb_4bit_compute_dtype not in DTYPES:
        fail(f"'quantization.bnb_4bit_compute_dtype' must be one of {', '.join(DTYPES)}")
    if q.bnb_4bit_quant_storage not in (None, "uint8", "float32", "bfloat16", "float16"):
        fail("'quantization.bnb_4bit_quant_storage' must be uint8, float32, bfloat16 or float16")

    if a.r <= 0:
        fail(f"'adapter.r' must be a positive integer, got {a.r}")
    if a.lora_alpha <= 0:
        fail(f"'adapter.lora_alpha' must be positive, got {a.lora_alpha}")
    if not 0 <= a.lora_dropout < 1:
        fail(f"'adapter.lora_dropout' must be in [0, 1), got {a.lora_dropout}")
    if isinstance(a.target_modules, list) and not a.target_modules:
        fail("'adapter.target_modules' is an empty list; use all-linear or name the modules (q_proj, v_proj, ...)")
    init = a.init_lora_weights
    known_inits = ("gaussian", "pissa", "olora", "loftq", "eva", "orthogonal", "corda")
    if isinstance(init, str) and init not in known_inits and not init.startswith("pissa_niter_"):
        fail(f"'adapter.init_lora_weights' {init!r} is not a PEFT init method; use true, gaussian, pissa, olora, ...")
    if q.enabled and isinstance(init, str) and init.split("_")[0] in ("pissa", "olora", "loftq", "corda"):
        fail(f"'adapter.init_lora_weights: {init}' rewrites the base weights and cannot start from a quantized base; "
             "drop 'quantization' (PEFT quantizes the residual itself for loftq) or use the default init")
    if a.use_dora and q.load_in_8bit:
        # PEFT's DoRA needs the dequantized base weight norm each step; on 8-bit it is slow and unsupported for merge.
        fail("'adapter.use_dora' with 'quantization.load_in_8bit' is not supported; use load_in_4bit (QDoRA) or no "
             "quantization")

    if recipe.task == "multitask":  # every task's data is checked as a generative_classification recipe
        return validate_multitask(recipe)
    if recipe.tasks:
        fail("'tasks' lists the tasks of a multitask recipe; set 'task: multitask' or remove 'tasks'")
    if a.init_from is not None and not str(a.init_from).strip():
        fail("'adapter.init_from' is empty; give a peftkit run folder (the output_dir of a train run) or null")

    if d.dataset is None and d.train_file is None:
        fail("'data' needs 'train_file' (a local csv/tsv/jsonl/parquet file) or 'dataset' (a hub dataset id)")
    if d.dataset is not None and d.train_file is not None:
        fail("'data.dataset' and 'data.train_file' are both set; choose hub or local data")
    if d.delimiter is not None and len(d.delimiter) != 1:
        fail(f"'data.delimiter' must be one character, e.g. \";\" or \"\\t\" (in double quotes), got {d.delimiter!r}")
    if not d.has_header and not d.column_names:
        fail("'data.has_header' is false: give 'data.column_names' (e.g. [text, label])")
    if d.column_names and d.has_header:
        fail("'data.column_names' is only for files without a header; set 'data.has_header: false'")
    if d.max_length < 8:
        fail(f"'data.max_length' must be at least 8 tokens, got {d.max_length}")
    for key in ("max_train_samples", "max_eval_samples"):
        value = getattr(d, key)
        if value is not None and value <= 0:
            fail(f"'data.{key}' must be a positive integer or null, got {value}")
    if not 0 < d.eval_fraction < 1:
        fail(f"'data.eval_fraction' must be between 0 and 1, got {d.eval_fraction}")
    if d.label_names is not None:
        if len(d.label_names) < 2:
            fail("'data.label_names' needs at least two classes")
        if len(set(d.label_names)) != len(d.label_names):
            fail("'data.label_names' has duplicates")
    if recipe.safety.max_skipped_batches < 0:
        fail("'safety.max_skipped_batches' must be 0 or more")
    if recipe.evaluate.batch_size <= 0:
        fail("'evaluate.batch_size' must be positive")
    if recipe.task != "generative_classification" and (recipe.evaluate.label_score != "sum" or recipe.evaluate.bf16):
        fail("'evaluate.label_score' and 'evaluate.bf16' apply to task generative_classification (label scoring); "
             f"task {recipe.task} does not score labels: remove them")
    validate_selection(recipe, fail)
    validate_distill_and_augment(recipe, fail)
    if recipe.task in CAUSAL_TASKS:
        validate_causal(recipe, fail)
    else:
        for key in ("prompt_template", "completion_template", "label_words", "use_chat_template"):
            if getattr(d, key) != getattr(DataSection, key):
                fail(f"'data.{key}' is for causal-LM tasks (task: sft or generative_classification), "
                     f"not task: {recipe.task}")
        if d.format != "classification":
            fail(f"'data.format: {d.format}' needs task: sft; task: {recipe.task} reads classification data")

    mg = recipe.merge
    if mg.verify_samples is not None and mg.verify_samples <= 0:
        fail(f"'merge.verify_samples' must be a positive integer or null (the whole eval split), "
             f"got {mg.verify_samples}")
    if not 0 <= mg.max_accuracy_drop <= 1:
        fail(f"'merge.max_accuracy_drop' must be between 0 and 1 (a fraction, 0.005 = half a point), "
             f"got {mg.max_accuracy_drop}")
    if not re.fullmatch(r"\d+(GB|MB|KB|GiB|MiB|KiB)", mg.max_shard_size):
        fail(f"'merge.max_shard_size' must be an integer with a unit, e.g. 5GB or 500MB, got {mg.max_shard_size!r}")
    if mg.base == "dequantized" and not q.enabled:
        fail("'merge.base: dequantized' needs a quantized run (quantization.load_in_4bit or load_in_8bit); "
             "an unquantized run merges into its original weights (base: original or auto)")

    check_train_values(t, fail)
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if key in t and int(t[key]) <= 0:
            fail(f"'train.{key}' must be a positive integer, got {t[key]}")
    if t.get("bf16") and t.get("fp16"):
        fail("'train.bf16' and 'train.fp16' are both true; choose one")


def validate_multitask(recipe: Recipe) -> None:
    """Task multitask: two or more named tasks, each a valid generative_classification recipe on this base, whose
    examples fit the packed row length (the top-level data.max_length)."""
    where = recipe.source or "<recipe>"

    def fail(message: str) -> typing.NoReturn:
        raise PeftkitError(f"{where}: {message}")

    names = [t.name for t in recipe.tasks]
    if len(names) < 2:
        fail(f"task multitask needs 'tasks' with two or more tasks (each a name and a data section), got {len(names)}"
             "; for one task use task: generative_classification")
    if len(set(names)) != len(names):
        fail(f"'tasks' names must differ (each names a folder of the run), got {names}")
    if recipe.multitask.temperature <= 0:
        fail(f"'multitask.temperature' must be positive (1 = proportional), got {recipe.multitask.temperature}")
    if recipe.selection.enabled:
        fail("'selection.validation_fraction' / 'validation_rows' is not supported by task multitask yet (which "
             "task's validation split "
             "would choose the checkpoint?); set it to 0 and choose settings with single-task runs")
    if len({t.data.use_chat_template for t in recipe.tasks}) > 1:
        fail("'data.use_chat_template' differs between tasks; the tasks share one training set, so set it the same "
             "for every task")
    if recipe.train.get("eval_strategy", "no") != "no":
        fail("'train.eval_strategy' must be no for task multitask: every task is evaluated after training")
    for i, sub in enumerate(recipe.tasks):
        if sub.data.max_length > recipe.data.max_length:
            fail(f"'tasks[{i}].data.max_length' {sub.data.max_length} is longer than the top-level data.max_length "
                 f"{recipe.data.max_length}, the length of a training row shared by every task; raise the "
                 "top-level one")
        validate(dataclasses.replace(recipe, task="generative_classification", data=sub.data, tasks=[],
                                     source=f"{where}: tasks[{i}] ({sub.name})"))


def validate_causal(recipe: Recipe, fail: typing.Callable[[str], typing.NoReturn]) -> None:
    """Checks for task sft / generative_classification: format, templates, loss masks, packing."""
    d, t = recipe.data, recipe.train
    if recipe.task == "generative_classification" and d.format != "classification":
        fail(f"task generative_classification reads classification data (text + label): set data.format: "
             f"classification, not {d.format}")
    if recipe.task == "sft" and d.format not in SFT_FORMATS:
        fail(f"task sft needs 'data.format' {', '.join(SFT_FORMATS)}; to predict labels from classification data "
             "use task: generative_classification")
    for key in ("prompt_template", "completion_template"):
        template = getattr(d, key)
        if template is not None:
            check_template(template, f"data.{key}", fail)
    if d.format in ("text", "messages"):
        for key in ("prompt_template", "completion_template"):
            if getattr(d, key) is not None:
                fail(f"'data.{key}' builds prompts and completions; data.format {d.format} has none "
                     "(use prompt_completion or alpaca)")
    if d.format == "classification" and d.completion_template is not None:
        fail("'data.completion_template' is not used by classification data; set 'data.label_words' instead")
    if d.label_words is not None:
        if recipe.task != "generative_classification":
            fail("'data.label_words' is for task generative_classification")
        if not all(isinstance(w, str) and w.strip() for w in d.label_words.values()):
            fail("'data.label_words' values must be non-empty strings, e.g. {negative: ' negative'}")
        if len(set(d.label_words.values())) != len(d.label_words):
            fail("'data.label_words' maps two labels to the same word; each class needs its own")
    if d.use_chat_template and d.format in ("text", "messages"):
        fail(f"'data.use_chat_template' wraps prompt/completion pairs in chat turns; data.format {d.format} "
             + ("is rendered with the chat template already" if d.format == "messages" else "has no pairs"))
    if not 0 <= d.max_dropped_fraction <= 1:
        fail(f"'data.max_dropped_fraction' must be between 0 and 1, got {d.max_dropped_fraction}")

    pairs = d.format in ("prompt_completion", "alpaca", "classification")
    if t.get("completion_only_loss") and not pairs:
        fail(f"'train.completion_only_loss' needs prompt/completion data; data.format {d.format} has no completion "
             "(TRL would silently train on every token)" + (": use train.assistant_only_loss for chat data"
                                                           if d.format == "messages" else ""))
    if t.get("assistant_only_loss") and not (d.format == "messages" or d.use_chat_template):
        fail("'train.assistant_only_loss' needs chat data: data.format messages, or data.use_chat_template: true")
    if t.get("padding_free") and not t.get("packing") and recipe.task != "generative_classification":
        # TRL cannot truncate padding-free batches without packing; only classification prompts are fitted to
        # data.max_length by peftkit itself (sft_data.fit_classification_prompts)
        fail("'train.padding_free' without packing needs examples that already fit data.max_length, which peftkit "
             "guarantees for task generative_classification only; keep train.packing: true, which batches "
             "padding-free, or set train.padding_free: false")
    if t.get("packing") and t.get("packing_strategy", "bfd") not in ("bfd", "bfd_split", "wrapped"):
        fail("'train.packing_strategy' must be bfd, bfd_split or wrapped")
    if t.get("chat_template_path") and not str(t["chat_template_path"]).endswith((".jinja", ".j2")):
        fail("'train.chat_template_path' must be a .jinja or .j2 file (peftkit renders the data with it before "
             "training, to count what truncation drops)")


def check_template(template: str, key: str, fail: typing.Callable[[str], typing.NoReturn]) -> None:
    """A template is a Python format string over column names: catch unbalanced braces before any data is read."""
    import string

    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        fail(f"'{key}' is not a valid template ({e}); write columns as {{column}} and literal braces as {{{{ }}}}")
    if any(not name or not name.isidentifier() for name in fields):
        fail(f"'{key}': placeholders must be column names like {{text}}; got {template!r}")


def check_train_values(t: dict, fail: typing.Callable[[str], typing.NoReturn]) -> None:
    """Values of the train section that TrainingArguments, the optimizer or the Trainer would reject only after the
    model is loaded (with a traceback), or accept and then train nothing."""
    lr = float(t.get("learning_rate", 1))
    if not math.isfinite(lr):
        fail(f"'train.learning_rate' must be a finite positive number, got {t['learning_rate']}")
    if lr <= 0:
        fail(f"'train.learning_rate' must be positive, got {t['learning_rate']}")
    max_steps = t.get("max_steps", -1)
    if max_steps == 0:
        fail("'train.max_steps' is 0: the run would train nothing. Give a positive number of optimizer steps, or "
             "-1 to train for train.num_train_epochs epochs")
    epochs = float(t.get("num_train_epochs", 1.0))
    if (max_steps is None or max_steps < 0) and not (math.isfinite(epochs) and epochs > 0):
        fail(f"'train.num_train_epochs' must be positive, got {t.get('num_train_epochs')}: the run would train "
             "nothing (or set train.max_steps)")
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for key, enum, what in (("optim", OptimizerNames, "an optimizer"),
                            ("lr_scheduler_type", SchedulerType, "a scheduler")):
        value = t.get(key)
        known = [member.value for member in enum]
        if value is not None and str(value) not in known:
            hint = difflib.get_close_matches(str(value), known, n=1)
            fail(f"'train.{key}' {value!r} is not {what} transformers knows"
                 + (f"; did you mean {hint[0]!r}?" if hint else f"; use one of {', '.join(known[:12])}, ..."))
    report_to = t.get("report_to")
    if report_to is not None:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        known = ["all", "none", *INTEGRATION_TO_CALLBACK]
        for value in [report_to] if isinstance(report_to, str) else list(report_to):
            if value not in known:
                hint = difflib.get_close_matches(str(value), known, n=1)
                fail(f"'train.report_to' {value!r} is not a logging integration transformers knows"
                     + (f"; did you mean {hint[0]!r}?" if hint else f"; use one of {', '.join(known)}, or [] for none"))


def validate_validation_size(recipe: Recipe, fail: typing.Callable[[str], typing.NoReturn]) -> None:
    """How large the validation split is and where its rows come from (the data files are checked at read time)."""
    s = recipe.selection
    if s.validation_rows is not None and s.validation_fraction > 0:
        fail("set one of 'selection.validation_fraction' and 'selection.validation_rows', not both")
    if s.validation_rows is not None and s.validation_rows < 2:
        fail(f"'selection.validation_rows' must be at least 2 (or null: use validation_fraction), got "
             f"{s.validation_rows}")
    if s.validation_from == "unused_rows" and not s.enabled:
        fail("'selection.validation_from: unused_rows' needs a validation size: set 'selection.validation_rows' "
             "(e.g. 2000) or 'selection.validation_fraction'")
    if s.validation_min_words is not None:
        if s.validation_min_words < 1 or not s.enabled:
            fail(f"'selection.validation_min_words' must be a positive number of words and needs a validation size "
                 f"('selection.validation_rows' or 'validation_fraction'), got {s.validation_min_words}")
        if recipe.task not in ("classification", "generative_classification"):
            fail(f"'selection.validation_min_words' needs labelled text rows (task classification or "
                 f"generative_classification), not task {recipe.task}; remove it")
    if s.validation_from == "unused_rows" and recipe.data.max_train_samples is None:
        fail("'selection.validation_from: unused_rows' draws the validation rows from the training file's rows "
             "outside data.max_train_samples' sample: set 'data.max_train_samples', or use "
             "'selection.validation_from: training_rows'")


def validate_selection(recipe: Recipe, fail: typing.Callable[[str], typing.NoReturn]) -> None:
    """selection, imbalance and sweep: the model is chosen on a validation split, never on the eval file."""
    s, t, i, w = recipe.selection, recipe.train, recipe.imbalance, recipe.sweep
    if not 0 <= s.validation_fraction <= 0.5:
        fail(f"'selection.validation_fraction' must be between 0 (no validation split) and 0.5, got "
             f"{s.validation_fraction}")
    validate_validation_size(recipe, fail)
    metrics = ("loss",) if recipe.task == "sft" else ("accuracy", "macro_f1", "loss")
    if s.metric is not None and s.metric not in metrics:
        fail(f"'selection.metric' must be one of {', '.join(metrics)} for task {recipe.task}, got {s.metric!r}")
    if s.evaluations < 2:
        # 1 would become eval_steps 1.0, which transformers reads as "every step", not "once, at the end"
        fail(f"'selection.evaluations' must be at least 2 (the validation split chooses among the checkpoints "
             f"saved at each evaluation), got {s.evaluations}")
    if s.early_stopping_patience is not None and s.early_stopping_patience < 1:
        fail("'selection.early_stopping_patience' must be at least 1, or null for no early stopping")
    if s.enabled and t.get("eval_strategy") == "no":
        fail("'selection.validation_fraction' evaluates on the validation split during training: remove "
             "'train.eval_strategy: no', or set 'selection.validation_fraction: 0' to train without selection")
    if s.enabled and t.get("save_strategy") == "no":
        fail("'selection.validation_fraction' keeps the best checkpoint, so it needs checkpoints: remove "
             "'train.save_strategy: no' (selection saves one at each evaluation)")
    if not s.enabled and t.get("load_best_model_at_end"):
        fail("'train.load_best_model_at_end' would choose a checkpoint on the eval file, which is then reported; "
             "set 'selection.validation_fraction' (e.g. 0.1) to choose on a validation split carved from train")
    if i.strategy in ("class_weights", "balanced_sampling") and recipe.task != "classification":
        fail(f"'imbalance.strategy: {i.strategy}' is for task classification (the classification head); "
             f"task {recipe.task} trains unweighted")
    if i.auto_ratio < 1:
        fail(f"'imbalance.auto_ratio' must be at least 1, got {i.auto_ratio}")
    if w.n_trials < 1 or w.workers < 1:
        fail("'sweep.n_trials' and 'sweep.workers' must be at least 1")
    if w.metric is not None and w.metric not in metrics:
        fail(f"'sweep.metric' must be one of {', '.join(metrics)} for task {recipe.task}, got {w.metric!r}")


def validate_distill_and_augment(recipe: Recipe, fail: typing.Callable[[str], typing.NoReturn]) -> None:
    """The distill: and augment: sections (values only; the teacher folder itself is checked by the task)."""
    ds, au = recipe.distill, recipe.augment
    if recipe.task == "distillation" and not ds.teacher:
        fail("task distillation needs 'distill.teacher': the folder of a trained peftkit classification run")
    if ds.temperature <= 0:
        fail(f"'distill.temperature' must be positive, got {ds.temperature}")
    if not 0 <= ds.alpha <= 1:
        fail(f"'distill.alpha' must be between 0 (hard labels only) and 1 (teacher only), got {ds.alpha}")
    if ds.teacher_batch_size <= 0 or (ds.max_unlabelled_samples is not None and ds.max_unlabelled_samples <= 0):
        fail("'distill.teacher_batch_size' and 'distill.max_unlabelled_samples' must be positive")
    unknown = [m for m in au.methods if m not in ("edit", "paraphrase")]
    if unknown or not au.methods:
        fail(f"'augment.methods' must list edit and/or paraphrase, got {au.methods}")
    if au.copies < 1 or au.max_new_tokens < 1 or (au.max_rows is not None and au.max_rows < 1):
        fail("'augment.copies', 'augment.max_new_tokens' and 'augment.max_rows' must be at least 1")
    if not 0 < au.edit_fraction <= 0.5:
        fail(f"'augment.edit_fraction' must be in (0, 0.5], got {au.edit_fraction}")
    if not 0 <= au.min_confidence <= 1:
        fail(f"'augment.min_confidence' must be between 0 and 1, got {au.min_confidence}")
