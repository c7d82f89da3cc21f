"""The search of `peftkit auto`: the Optuna study (storage shared with `peftkit sweep`'s opener, successive
halving), one trial (a normal peftkit run of an arm's recipe with the trial's values), and one worker's loop,
which starts trials while the budget allows.

Fidelity is the share of an epoch trained, reported in hundredths (so trials of every batch size and model meet
at the same rungs): successive halving compares trials at 0.3, 0.9, 2.7 ... epochs and keeps the best third at
each, so many trials stop early and few run long. A trial the deadline cuts short ends with one more validation
evaluation and counts with its best value (user attribute ``stopped_at_deadline``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftkit.auto.arms import Arm
from peftkit.auto.budget import (
    Budget,
    Clock,
    current_session,
    deadline_callback,
    eval_share,
    final_reserve_s,
    format_duration,
    record_spent,
)
from peftkit.core.console import say
from peftkit.errors import PeftkitError, RunStopped

STUDY_NAME = "auto"
HEARTBEAT_S = 10
"""A trial whose worker was killed is failed (and retried once) 2x this long after its last heartbeat."""
MIN_RESOURCE = 30
"""The first successive-halving rung: 0.3 epochs (reports are in hundredths of an epoch)."""
REDUCTION_FACTOR = 3
GIVE_UP_AFTER_FAILURES = 3
"""A search whose first trials all fail stops (a broken model or data), instead of failing until the deadline."""


def fidelity(state) -> int:
    """The step a validation value is reported at: hundredths of an epoch trained."""
    return int(round(100 * (state.epoch or 0.0)))


def quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are in the trial lines and logs
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retry


def open_study(storage_url: str, arms: list[Arm], seed: int = 42, worker_index: int = 0):
    import optuna

    from peftkit.sweep.study import open_storage

    quiet_optuna()

    sampler = optuna.samplers.TPESampler(seed=seed + worker_index, n_startup_trials=max(4, 2 * len(arms)))
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=MIN_RESOURCE, reduction_factor=REDUCTION_FACTOR)
    study = optuna.create_study(study_name=STUDY_NAME, storage=open_storage(storage_url, HEARTBEAT_S),
                                sampler=sampler, pruner=pruner, direction=arms[0].sweep.direction,
                                load_if_exists=True)
    names = [a.name for a in arms]
    stored = study.user_attrs.get("arms")
    if stored is None:
        study.set_user_attr("arms", names)
        study.set_user_attr("models", {a.name: a.model for a in arms})
    elif stored != names:
        raise PeftkitError(f"{storage_url}: this search was started with the arms {', '.join(stored)}, not "
                           f"{', '.join(names)}; give the same --models, or another --out/--storage for a new search")
    return study


def final_eval_share(arm: Arm, eval_file: str | None, train_file: str) -> float:
    """The final evaluation's size against one validation evaluation (see budget.eval_share)."""
    recipe = arm.sweep.trial_recipe({}, "check")
    return eval_share(recipe.selection.validation_fraction or 0.1, None if eval_file else recipe.data.eval_fraction,
                      Path(eval_file).stat().st_size if eval_file else None, Path(train_file).stat().st_size)


def fail_dead_local_trials(study) -> list[int]:
    """Trials left running by a killed worker of this machine (its process is gone): failed now and queued to
    run again, instead of waiting out the heartbeat's grace period. Other machines' trials are left to the
    heartbeat."""
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("worker_pid")
        if t.user_attrs.get("host") != socket.gethostname() or not pid or process_alive(int(pid)):
            continue
        # what optuna's fail_stale_trials does, without waiting for the heartbeat's grace period
        study._storage.set_trial_user_attr(t._trial_id, "error", f"its worker (pid {pid}) was killed")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        failed.append(t.number)
    return failed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Search:
    """What every trial of one worker needs: the arms, the budget, where logs go, how the reserve is set."""

    def __init__(self, study, arms: list[Arm], out: Path, share: float, metric: str,
                 clock: Clock = time.time) -> None:
        self.study, self.arms, self.out, self.clock = study, {a.name: a for a in arms}, out, clock
        self.share, self.metric = share, metric
        self.stopped_trial: int | None = None

    def budget(self) -> Budget:
        return current_session(self.study, self.clock)

    def observed(self) -> tuple[float, float]:
        """(longest steady validation evaluation, longest set-up) over the trials so far, in seconds."""
        evals, setups = [0.0], [0.0]
        for t in self.study.get_trials(deepcopy=False):
            evals.append(float(t.user_attrs.get("eval_s", 0.0)))
            setups.append(float(t.user_attrs.get("setup_s", 0.0)))
        return max(evals), max(setups)

    def reserve(self, eval_s: float = 0.0) -> float:
        seen_eval, setup = self.observed()
        return final_reserve_s(max(seen_eval, eval_s), self.share, setup)

    def may_start_trial(self) -> bool:
        _, setup = self.observed()
        return self.budget().may_start_trial(self.reserve(), setup)

    # -----------------------------------------------------------------------------------------
    # One trial
    # -----------------------------------------------------------------------------------------

    def run_trial(self, trial) -> float:
        from peftkit.run import run
        from peftkit.sweep.study import report_callback

        arm = self.arms[trial.suggest_categorical("arm", list(self.arms))]
        params = arm.suggest(trial)
        name = f"trial-{trial.number}"
        recipe = arm.sweep.trial_recipe(params, name)
        log = self.out / "logs" / f"{name}.log"
        trial.set_user_attr("run_dir", recipe.output_dir)
        trial.set_user_attr("log", str(log))
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("learning_rate", params["train.learning_rate"])
        budget = self.budget()
        reporter = report_callback(trial, self.metric, arm.sweep.direction, pruning=True, warmup=1,
                                   step_of=fidelity)
        clock_stop = deadline_callback(budget, self.reserve, on_tick=lambda: record_spent(self.study, budget))
        started = self.clock()
        try:
            with output_to(log):
                run(recipe, callbacks=[reporter, clock_stop])
        except RunStopped as stopped:
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            self.stopped_trial = trial.number
            raise RunStopped(f"{name} stopped by a signal; run the same `peftkit auto` command again to go on with "
                             "the budget that is left", exit_code=stopped.exit_code) from None
        finally:
            self.record_trial(trial, budget, started, clock_stop, reporter)
        if reporter.best is None:
            raise PeftkitError(f"{name}: no validation evaluation reported eval_{self.metric} (log: {log})")
        return reporter.best

    def record_trial(self, trial, budget: Budget, started: float, clock_stop, reporter) -> None:
        now = self.clock()
        setup = (clock_stop.first_step_at or now) - started
        trial.set_user_attr("seconds", round(now - started, 1))
        trial.set_user_attr("setup_s", round(setup, 1))
        trial.set_user_attr("eval_s", round(clock_stop.eval_s or 0.0, 2))
        trial.set_user_attr("elapsed_s", round(budget.spent(), 1))
        trial.set_user_attr("evaluations", reporter.values)
        if reporter.best is not None:
            trial.set_user_attr("best_value", reporter.best)
        if clock_stop.stopped_at_step is not None:
            trial.set_user_attr("stopped_at_deadline", clock_stop.stopped_at_step)
        record_spent(self.study, budget)


def run_worker(search: Search, objective: Callable | None = None) -> int:
    """Trials, one at a time, while the budget allows a new one; returns how many this worker ran."""
    quiet_optuna()
    objective = keeping_the_error(objective or search.run_trial)
    ran = 0
    while search.may_start_trial():
        search.study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[trial_line(search)],
                              gc_after_trial=True)
        ran += 1
        if search.stopped_trial is not None:
            raise RunStopped("auto stopped by a signal; run the same command again to use the budget that is left",
                             exit_code=128 + signal.SIGTERM)
        give_up_if_all_failed(search.study)
    return ran


def keeping_the_error(objective: Callable) -> Callable:
    """The objective, with a failed trial's error kept in its user attributes (for its line and the give-up)."""
    import optuna

    def run(trial):
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
            raise

    return run


def give_up_if_all_failed(study) -> None:
    from optuna.trial import TrialState

    def interrupted(t) -> bool:  # killed or signalled: says nothing about the model or the data
        return t.user_attrs.get("error", "").startswith(("RunStopped", "its worker"))

    trials = [t for t in study.get_trials(deepcopy=False) if not interrupted(t) and t.state != TrialState.WAITING]
    if len(trials) >= GIVE_UP_AFTER_FAILURES and all(t.state == TrialState.FAIL for t in trials):
        last = trials[-1].user_attrs
        raise PeftkitError(f"the first {len(trials)} trials all failed; the last: {last.get('error', '?')} "
                           f"(log: {last.get('log', 'none')})")


def trial_line(search: Search):
    """An optimize() callback: the one console line of a finished trial."""

    def callback(study, trial) -> None:
        say(describe_trial(trial, search.metric, float(study.user_attrs.get("budget_s", 0))))

    return callback


def describe_trial(trial, metric: str, budget_s: float) -> str:
    attrs, params = trial.user_attrs, trial.params
    state = trial.state.name.lower()
    value = trial.value if trial.value is not None else attrs.get("best_value")
    shown = f"validation {metric} {value:.4f}" if value is not None else f"no validation {metric}"
    how = {"complete": "", "pruned": f", pruned at {attrs.get('pruned_at_step', 0) / 100:.2f} epochs",
           "fail": f", failed: {attrs.get('error', '?')[:200]} (log: {attrs.get('log')})"}.get(state, f", {state}")
    if attrs.get("error", "").startswith("RunStopped"):
        how = ", stopped by a signal (it runs again when you resume)"
    if "stopped_at_deadline" in attrs:
        how += ", stopped at the deadline"
    settings = (f"lr {attrs.get('learning_rate', params.get('train.learning_rate', 0)):.2e} "
                f"r {params.get('adapter.r')} epochs {params.get('train.num_train_epochs')} "
                f"batch {params.get('train.per_device_train_batch_size')}")
    return (f"auto [{format_duration(attrs.get('elapsed_s', 0))}/{format_duration(budget_s)}] trial {trial.number} "
            f"{params.get('arm', '?')} {settings}: {shown}{how} ({attrs.get('seconds', 0)} s)")


@contextlib.contextmanager
def echo_trial_lines(search: Search, every_s: float = 2.0):
    """While worker processes run the trials: print each trial's line when it finishes (read from the study)."""
    import threading

    from optuna.trial import TrialState

    done = {t.number for t in search.study.get_trials(deepcopy=False) if t.state.is_finished()}
    stop = threading.Event()

    def echo() -> None:
        budget_s = float(search.study.user_attrs.get("budget_s", 0))
        for t in search.study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in done and t.state != TrialState.WAITING:
                done.add(t.number)
                say(describe_trial(t, search.metric, budget_s))

    def loop() -> None:
        while not stop.wait(every_s):
            echo()

    thread = threading.Thread(target=loop, name="auto-trial-lines", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        echo()


@contextlib.contextmanager
def output_to(path: Path):
    """A trial's own output (its run's progress, the Trainer's losses) into its log file, at the file-descriptor
    level so library output goes there too; the console keeps one line per trial."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def trial_value(trial) -> float | None:
    """A trial's validation value: its result, or for a pruned trial the best value it reported."""
    return trial.value if trial.value is not None else trial.user_attrs.get("best_value")


def finished_trials(study) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                        TrialState.FAIL)]
