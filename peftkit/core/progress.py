"""Progress of long work (label scoring, merge verification, preparing large files), fit for where it goes.

On a terminal: a tqdm bar. Into a file or pipe (a job log, CI, `2>log`): a few plain lines, at every 10% and at
most every 30 s, never tqdm's carriage-return redraws (which turn one bar into kilobytes of log). Only the main
process reports. Small jobs (fewer items than ``min_total``) report nothing.

The Trainer's own bars follow the same rule: when stderr is not a terminal peftkit sets
``disable_tqdm: true`` unless the recipe's ``train:`` says otherwise (log_friendly_trainer_args, applied where
train.py / sft_train.py build the training arguments);
the Trainer then prints its logged losses as plain lines every ``logging_steps``. The libraries' own bars
(transformers' "Loading weights", datasets' map) are turned off the same way (quiet_library_bars_in_logs, from
the command line's entry point).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from peftkit.core.launch import is_main_process

T = TypeVar("T")
R = TypeVar("R")
PLAIN_EVERY_FRACTION = 0.1
PLAIN_EVERY_SECONDS = 30.0


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class PlainProgress:
    """tqdm's update/close interface, writing a line at each 10% step (and at most every 30 s) instead of a bar."""

    def __init__(self, total: int, desc: str, unit: str, stream=None,
                 every_fraction: float = PLAIN_EVERY_FRACTION, every_seconds: float = PLAIN_EVERY_SECONDS) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_fraction, self.every_seconds = every_fraction, every_seconds
        self.n = 0
        self.started = self.last_time = time.monotonic()
        self.last_step = 0
        self.closed = False
        self._line(f"{desc}: {total:,} {unit}")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        step = int(self.n / self.total / self.every_fraction) if self.total else 0
        if self.n >= self.total or step > self.last_step or now - self.last_time >= self.every_seconds:
            if self.n < self.total:
                self._report(now)
            self.last_step, self.last_time = step, now

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._report(time.monotonic(), done=True)

    def _report(self, now: float, done: bool = False) -> None:
        elapsed = now - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        share = self.n / max(self.total, 1)
        line = f"{self.desc}: {self.n:,}/{self.total:,} {self.unit} ({share:.0%}), {elapsed:.0f} s"
        if not done and rate > 0:
            line += f", about {(self.total - self.n) / rate:.0f} s left"
        self._line(line + (" - done" if done else ""))

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str = "rows", min_total: int = 1, terminal: bool | None = None):
    """A context manager with .update(n): a tqdm bar on a terminal, plain lines otherwise, nothing for small jobs
    or on other ranks than the main one."""
    if total < min_total or not is_main_process():
        return NoProgress()
    if terminal if terminal is not None else stderr_is_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=f" {unit}", leave=False, dynamic_ncols=True)
    return PlainProgress(total, desc, unit)


def with_progress(items: Iterable[T], total: int, desc: str, unit: str = "rows", min_total: int = 1,
                  ) -> Iterable[T]:
    """`items`, reporting one step per item taken."""
    with progress_bar(total, desc, unit, min_total) as bar:
        for item in items:
            yield item
            bar.update(1)


def map_in_chunks(fn: Callable[[list[T]], list[R]], items: Sequence[T], chunk_size: int, desc: str,
                  unit: str = "rows", key: Callable[[T], Any] | None = None, min_total: int = 1) -> list[R]:
    """``fn(items)`` computed chunk by chunk, with progress; results in the order of `items`.

    ``key`` orders the items before chunking (by length: then each chunk's batches pad as little as one call on
    all items would) and the results are put back in the original order.
    """
    order = sorted(range(len(items)), key=lambda i: key(items[i])) if key else list(range(len(items)))
    results: list[Any] = [None] * len(items)
    with progress_bar(len(items), desc, unit, min_total) as bar:
        for start in range(0, len(order), max(chunk_size, 1)):
            chunk = order[start:start + chunk_size]
            for i, result in zip(chunk, fn([items[i] for i in chunk])):
                results[i] = result
            bar.update(len(chunk))
    return results


def quiet_library_bars_in_logs() -> None:
    """Before transformers/datasets are imported: their own bars (loading weights, map) off when stderr is not a
    terminal, unless the environment already says otherwise (HF_HUB_DISABLE_PROGRESS_BARS=0 keeps them)."""
    if not stderr_is_terminal():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def log_friendly_trainer_args(train: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's tqdm bars off when stderr is not a terminal (unless the recipe sets disable_tqdm): its
    PrinterCallback then prints each logged loss as one line instead of redrawing a bar into the log file."""
    if "disable_tqdm" in train or stderr_is_terminal():
        return train
    return {**train, "disable_tqdm": True}
