"""The run folder: everything a later command (evaluate, merge, push) needs, side by side."""

from __future__ import annotations

RECIPE_FILE = "recipe.yaml"
LABEL_MAP_FILE = "label_map.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
SUMMARY_FILE = "train_summary.json"
DATA_REPORT_FILE = "data_report.json"
TRAINING_LOG_FILE = "training_log.json"
"""The Trainer's log history (losses, learning rate, validation metrics by step): checkpoints, which also hold
it, may be deleted at the end of a run; the report draws its curves from this file."""
RUN_REPORT_FILE = "report.html"


LOCK_FILE = ".peftkit-lock"


RUN_ARTIFACTS = (RECIPE_FILE, LABEL_MAP_FILE, ADAPTER_DIR, CHECKPOINT_DIR, LOG_DIR, SUMMARY_FILE, DATA_REPORT_FILE,
                 "metrics.json", "eval_report.txt", "confusion_matrix.png", "merged", "merge_report.json",
                 TRAINING_LOG_FILE, RUN_REPORT_FILE, "eval_predictions.jsonl", "calibration.json",
                 # task distillation: the teacher's cached soft labels and the exported students
                 "teacher_soft_labels.safetensors", "student", "student-int8", "export_report.json")
