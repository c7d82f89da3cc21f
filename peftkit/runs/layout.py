"""The run folder's file names, each spelled once: everything a later command (evaluate, merge, push) needs.

Every module that reads or writes a run folder names its files through these constants; the literal
spellings live here only.
"""

from __future__ import annotations

# What `train` writes
RECIPE_FILE = "recipe.yaml"
"""The resolved recipe: every default written out, so a run reads back without the file it came from."""
LABEL_MAP_FILE = "label_map.json"
"""Class names in id order (tasks with labels)."""
ADAPTER_DIR = "adapter"
"""The trained adapter (PEFT's files, below) with the tokenizer."""
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
"""PEFT's names for the two files of ADAPTER_DIR."""
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
SUMMARY_FILE = "train_summary.json"
"""What the run measured; written last, so its presence means the run finished."""
DATA_REPORT_FILE = "data_report.json"
TRAINING_LOG_FILE = "training_log.json"
"""The Trainer's log history (losses, learning rate, validation metrics by step): checkpoints, which also hold
it, may be deleted at the end of a run; the report draws its curves from this file."""
RUN_REPORT_FILE = "report.html"
"""One self-contained page: metrics, per-class table, confusions, curves, reliability, misclassified texts."""
EVAL_PREDICTIONS_FILE = "eval_predictions.jsonl"
"""Each eval text's label, prediction and top probabilities (what the report and `peftkit report` compare)."""
CALIBRATION_FILE = "calibration.json"
"""The temperature fitted on the validation split, and the calibration error before and after."""
LOCK_FILE = ".peftkit-lock"
TRAINER_STATE_FILE = "trainer_state.json"
"""transformers' file inside each checkpoint folder."""

# What `train` and `evaluate` write
METRICS_FILE = "metrics.json"
EVAL_REPORT_FILE = "eval_report.txt"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
TASKS_DIR = "tasks"
"""Task multitask: one folder of metric files per task."""

# What `merge` writes
MERGED_DIR = "merged"
MERGE_REPORT_FILE = "merge_report.json"
MERGE_REPORT_MARKDOWN_FILE = "merge_report.md"
"""merge-adapters: the same report as a table."""

# Task distillation: the teacher's cached soft labels and the exported students
SOFT_LABELS_FILE = "teacher_soft_labels.safetensors"
STUDENT_DIR = "student"
STUDENT_INT8_DIR = "student-int8"
STUDENT_INT8_WEIGHTS_FILE = "model_int8.safetensors"
EXPORT_REPORT_FILE = "export_report.json"

RUN_ARTIFACTS = (RECIPE_FILE, LABEL_MAP_FILE, ADAPTER_DIR, CHECKPOINT_DIR, LOG_DIR, SUMMARY_FILE, DATA_REPORT_FILE,
                 METRICS_FILE, EVAL_REPORT_FILE, CONFUSION_MATRIX_FILE, TRAINING_LOG_FILE, RUN_REPORT_FILE,
                 EVAL_PREDICTIONS_FILE, CALIBRATION_FILE, MERGED_DIR, MERGE_REPORT_FILE,
                 SOFT_LABELS_FILE, STUDENT_DIR, STUDENT_INT8_DIR, EXPORT_REPORT_FILE)
"""What replacing a previous run takes away. (TASKS_DIR is not in it yet: an overwritten multitask run keeps
its old per-task metric files until it writes new ones.)"""
