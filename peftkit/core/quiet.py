"""Quiet by default: third-party lines that say nothing about the user's run are dropped, unless --verbose.

What is dropped, each for a reason (STACK-NOTES has the details):

* bitsandbytes on CPU logs "Failed to load CPU gemm_4bit_forward from kernels-community" at every import (it looks
  for an optional hub kernel package); harmless to results, read by users as an error.
* kernels 0.19 (which bitsandbytes asks for its CPU kernel) logs "Skipping publisher trust check for
  'kernels-community/...'" on every command while the hub is offline; peftkit never loads hub kernels.
* DeepSpeed logs "Setting accelerator to CPU ..." when accelerate or transformers import it on a machine without a
  GPU; peftkit decides the device itself.
* transformers logs a LOAD REPORT table when a checkpoint's weights and the model differ. peftkit checks the same
  information itself (``peftkit.model.check.check_loaded_weights``): a new classification head is said in one line, any
  other missing or unexpected weight is an error naming the folder.
* PEFT reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates with a FutureWarning at every
  ``get_peft_model``; peftkit itself uses the new name (``activation_checkpointing``).

Everything else (peftkit's own lines, progress bars, warnings about the run) is untouched. ``--verbose`` (or
``PEFTKIT_VERBOSE=1``) installs nothing.
"""

from __future__ import annotations

import logging
import os
import warnings

# (logger name, text of the record to drop)
DROPPED_LOG_LINES = (
    ("bitsandbytes.backends.cpu.ops", "gemm_4bit_forward"),
    ("DeepSpeed", "Setting accelerator to CPU"),
    ("transformers.modeling_utils", "LOAD REPORT"),
    ("kernels._internals.hf_hub", "Skipping publisher trust check"),
)
# (warning category, regex of the message to drop)
DROPPED_WARNINGS = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


class _DropContaining(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return self.text not in record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to its handler
            return True


_installed = False


def install(verbose: bool = False) -> None:
    """Drop the lines above (once per process). Loggers keep their filters when the library configures them later."""
    global _installed
    if verbose or os.environ.get("PEFTKIT_VERBOSE") == "1" or _installed:
        return
    for name, text in DROPPED_LOG_LINES:
        logging.getLogger(name).addFilter(_DropContaining(text))
    for category, message in DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    _installed = True


def verbose_enabled() -> bool:
    return os.environ.get("PEFTKIT_VERBOSE") == "1"
