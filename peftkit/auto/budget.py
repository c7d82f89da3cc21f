"""The wall-clock budget of `peftkit auto`: how much is spent (across killed and resumed sessions), when trials
must stop, and the reserve kept for the winner's final evaluation.

Every function takes the clock as an argument (``clock``: a callable returning seconds, ``time.time`` by default),
so the deadline logic is tested with a fake clock. Times are epoch seconds because workers in other processes
(and on other machines, with ``--storage``) read the same session start from the study.

The ledger lives in the Optuna study's user attributes: ``budget_s`` (the whole budget), ``spent_s`` (seconds
spent by every session so far, updated every few seconds while trials run), ``session_started`` and
``spent_before_session`` (where the current session began). A resumed session starts its clock where the
killed one's last update left it, so the budget is spent once, not once per attempt.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from peftkit.errors import PeftkitError

Clock = Callable[[], float]

MIN_RESERVE_S = 5.0
"""Seconds always kept for the end: choosing the winner, writing the leaderboard and its plot."""
TICK_S = 5.0
"""How often a running trial writes the spent budget to the study (what a SIGKILL can lose)."""

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'30m', '60s', '1h30m', '2.5h' -> seconds. A bare number is refused: minutes or seconds is a guess."""
    cleaned = text.strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise PeftkitError(f"--budget {text!r}: give a duration with units, e.g. 30m, 90s, 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise PeftkitError(f"--budget {text!r}: must be more than zero")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class Budget:
    """One session's view of the budget: ``total_s`` for the whole search, ``spent_before_s`` by earlier
    sessions, this session started at ``started`` on ``clock``."""

    total_s: float
    spent_before_s: float
    started: float
    clock: Clock = time.time

    def spent(self) -> float:
        return self.spent_before_s + max(0.0, self.clock() - self.started)

    def left(self) -> float:
        return max(0.0, self.total_s - self.spent())

    def end(self) -> float:
        """The clock time at which the whole budget, final evaluation included, is spent."""
        return self.started + self.total_s - self.spent_before_s

    def trial_deadline(self, reserve_s: float) -> float:
        """When training must stop so that the final evaluation (``reserve_s``) still fits."""
        return self.end() - reserve_s

    def may_start_trial(self, reserve_s: float, setup_s: float) -> bool:
        """A new trial only if, after its set-up (``setup_s``: loading, tokenizing), time is left to train."""
        return self.clock() + setup_s < self.trial_deadline(reserve_s)


def final_reserve_s(validation_eval_s: float, eval_share: float, setup_s: float) -> float:
    """Seconds to keep for the winner's evaluation on the eval file: loading it (about a trial's set-up), plus
    a validation evaluation (the longest steady one of any trial) scaled by eval rows / validation rows, plus
    the fixed end."""
    return MIN_RESERVE_S + setup_s + validation_eval_s * max(0.0, eval_share)


def eval_share(validation_fraction: float, eval_fraction: float | None, eval_bytes: int | None,
               train_bytes: int) -> float:
    """About how many times larger the final evaluation is than one validation evaluation. The eval file is not
    read before the end (it must not steer the search), so its size in bytes stands in for its rows."""
    validation = max(validation_fraction, 1e-6)
    if eval_bytes is not None:
        return eval_bytes / max(1, train_bytes) / validation
    held_out = eval_fraction or 0.0  # data.eval_fraction rows of the training file, then validation of the rest
    return held_out / (validation * max(1e-6, 1.0 - held_out))


# ---------------------------------------------------------------------------------------------
# The ledger in the study
# ---------------------------------------------------------------------------------------------


def start_session(study, total_s: float, clock: Clock = time.time, started: float | None = None) -> Budget:
    """A new session (the command run, or run again after a kill), begun at ``started`` (default: now): its
    budget continues where the stored one was last written."""
    spent = float(study.user_attrs.get("spent_s", 0.0))
    now = clock() if started is None else started
    study.set_user_attr("budget_s", total_s)
    study.set_user_attr("spent_before_session", spent)
    study.set_user_attr("session_started", now)
    study.set_user_attr("spent_s", spent)
    return Budget(total_s, spent, now, clock)


def current_session(study, clock: Clock = time.time) -> Budget:
    """The session a worker joins (started by the command on this or another machine)."""
    attrs = study.user_attrs
    if "session_started" not in attrs:
        raise PeftkitError("this study has no running `peftkit auto` session: start the command without "
                           "--worker-index first (it records the budget), then start workers against its storage")
    return Budget(float(attrs["budget_s"]), float(attrs["spent_before_session"]), float(attrs["session_started"]),
                  clock)


def record_spent(study, budget: Budget) -> None:
    study.set_user_attr("spent_s", round(budget.spent(), 2))


def deadline_callback(budget: Budget, reserve_s: Callable[[float], float], on_tick: Callable[[], None] | None = None):
    """A TrainerCallback that ends training when the trial deadline comes: budget end minus the final reserve.

    ``reserve_s(validation_eval_s)`` gives the reserve; the callback feeds it this trial's steady validation
    evaluation time (the fastest it has seen: the first one also pays one-off warm-up), so a slow evaluation
    moves the deadline earlier. At the deadline
    it asks for one last evaluation and checkpoint, so the trial ends with a validation value and its adapter is
    the best one seen. ``on_tick`` runs every TICK_S seconds (the ledger update).
    """
    from transformers import TrainerCallback

    class StopAtDeadline(TrainerCallback):
        def __init__(self) -> None:
            self.eval_s: float | None = None
            self.stopped_at_step: int | None = None
            self.first_step_at: float | None = None
            self.last_tick = budget.clock()

        def stop_at(self) -> float:
            return budget.trial_deadline(reserve_s(self.eval_s or 0.0))

        def on_step_end(self, args, state, control, **kwargs):
            now = budget.clock()
            if self.first_step_at is None:
                self.first_step_at = now
            if on_tick is not None and now - self.last_tick >= TICK_S:
                self.last_tick = now
                on_tick()
            if now >= self.stop_at() and self.stopped_at_step is None:
                self.stopped_at_step = state.global_step
                control.should_training_stop = True
                control.should_evaluate = True
                control.should_save = True
            return control

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics = metrics or {}  # eval_runtime: the Trainer's loop; eval_seconds: label scoring (generative)
            runtime = metrics.get("eval_runtime", metrics.get("eval_seconds"))
            if runtime is not None:
                self.eval_s = float(runtime) if self.eval_s is None else min(self.eval_s, float(runtime))
            return control

    return StopAtDeadline()
