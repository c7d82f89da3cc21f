"""`peftkit auto`'s budget with a fake clock: durations, the ledger across a killed and a resumed session, the
deadline callback that ends a trial, and a worker's loop that stops starting trials when the budget is spent."""

from __future__ import annotations

import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna")

from peftkit.auto.budget import (  # noqa: E402
    MIN_RESERVE_S,
    TICK_S,
    Budget,
    current_session,
    deadline_callback,
    eval_share,
    final_reserve_s,
    parse_duration,
    record_spent,
    start_session,
)
from peftkit.errors import PeftkitError  # noqa: E402
from tests.conftest import REPO  # noqa: E402


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("60s", 60), ("1h30m", 5400), ("2.5h", 9000),
                                          (" 1m 30s ", 90)])
def test_durations_with_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "", "m", "10x", "0s", "5m-3s"])
def test_durations_without_units_or_of_zero_are_refused(text):
    with pytest.raises(PeftkitError, match="--budget"):
        parse_duration(text)


def test_the_budget_counts_from_its_start_and_earlier_sessions():
    clock = FakeClock()
    budget = Budget(total_s=60, spent_before_s=20, started=clock(), clock=clock)
    clock.advance(15)
    assert budget.spent() == 35 and budget.left() == 25
    assert budget.end() == 1000 + 40  # 40 s were left when this session began
    assert budget.trial_deadline(reserve_s=8) == 1032
    clock.advance(100)
    assert budget.left() == 0


def test_a_trial_starts_only_if_its_setup_ends_before_the_trial_deadline():
    clock = FakeClock()
    budget = Budget(total_s=60, spent_before_s=0, started=clock(), clock=clock)
    clock.advance(45)
    assert budget.may_start_trial(reserve_s=10, setup_s=4)       # 1049 < 1050
    assert not budget.may_start_trial(reserve_s=10, setup_s=5)   # 1050 is the deadline itself
    assert not budget.may_start_trial(reserve_s=16, setup_s=0)


def test_the_reserve_grows_with_the_final_evaluation_and_the_setup():
    assert final_reserve_s(0, 3.0, 0) == MIN_RESERVE_S
    assert final_reserve_s(2.0, 3.0, 4.0) == MIN_RESERVE_S + 4.0 + 6.0
    # an eval file a quarter of the training file's size, validation 10% of training: 2.5 validation evaluations
    assert eval_share(0.1, None, 250, 1000) == pytest.approx(2.5)
    # no eval file: 20% held out, validation 10% of the remaining 80%
    assert eval_share(0.1, 0.2, None, 1000) == pytest.approx(0.2 / 0.08)


def test_a_resumed_session_spends_only_what_the_killed_one_left():
    clock = FakeClock(1000)
    study = optuna.create_study(direction="maximize")
    first = start_session(study, 60, clock)
    clock.advance(25)
    record_spent(study, first)   # a trial's tick, then the process is killed
    clock.advance(3)             # lost with the kill: at most one tick
    clock.advance(500)           # the user comes back later
    second = start_session(study, 60, clock)
    assert second.spent() == 25 and second.left() == 35 and second.end() == clock() + 35
    worker = current_session(study, clock)  # a worker process joining reads the same session
    assert (worker.started, worker.spent_before_s, worker.total_s) == (second.started, 25, 60)
    clock.advance(10)
    assert worker.left() == 25
    third = start_session(study, 120, clock)  # a longer --budget on resume extends it
    assert third.left() == 120 - 25  # second never recorded its 10 s: the study's ledger says 25


def test_a_worker_without_a_session_is_told_to_start_the_command_first():
    with pytest.raises(PeftkitError, match="without --worker-index first"):
        current_session(optuna.create_study(), FakeClock())


def _step(callback, state, control):
    return callback.on_step_end(None, state, control)


def test_the_deadline_callback_ends_training_with_one_last_evaluation_and_checkpoint():
    from transformers import TrainerControl, TrainerState

    clock = FakeClock()
    budget = Budget(total_s=60, spent_before_s=0, started=clock(), clock=clock)
    ticks = []
    callback = deadline_callback(budget, lambda eval_s: 10 + 2 * eval_s, on_tick=lambda: ticks.append(clock()))
    state, control = TrainerState(), TrainerControl()
    for step in range(1, 5):  # 1010 .. 1040: before the deadline (1050)
        clock.advance(10)
        state.global_step = step
        control = _step(callback, state, control)
        assert not control.should_training_stop
    assert len(ticks) == 4 and all(b - a >= TICK_S for a, b in zip(ticks, ticks[1:]))
    callback.on_evaluate(None, state, control, metrics={"eval_runtime": 9.0})  # the first pays warm-up
    callback.on_evaluate(None, state, control, metrics={"eval_runtime": 4.0})  # steady: the reserve is now 18 s
    clock.advance(2)  # 1042 = 1060 - 18
    state.global_step = 5
    control = _step(callback, state, control)
    assert control.should_training_stop and control.should_evaluate and control.should_save
    assert callback.stopped_at_step == 5 and callback.first_step_at == 1010


def test_the_worker_stops_starting_trials_at_the_deadline(tmp_path):
    from peftkit.auto.search import Search, run_worker

    clock = FakeClock()
    study = optuna.create_study(direction="maximize")
    start_session(study, 60, clock)
    search = Search(study, [], tmp_path, share=1.0, metric="macro_f1", clock=clock)

    def ten_second_trial(trial):
        trial.suggest_float("x", 0, 1)
        clock.advance(10)
        trial.set_user_attr("setup_s", 2.0)
        trial.set_user_attr("eval_s", 1.0)
        return 0.5

    # reserve 5 + 2 + 1 = 8 s: the trial deadline is 1052; a trial starts while now + 2 s set-up < 1052
    assert run_worker(search, ten_second_trial) == 5
    assert clock() == 1050 and len(study.trials) == 5


def test_the_search_gives_up_when_its_first_trials_all_fail(tmp_path):
    from peftkit.auto.search import Search, run_worker

    clock = FakeClock()
    study = optuna.create_study(direction="maximize")
    start_session(study, 600, clock)
    search = Search(study, [], tmp_path, share=1.0, metric="macro_f1", clock=clock)

    def broken(trial):
        clock.advance(1)
        raise PeftkitError("the model folder has no weights")

    with pytest.raises(PeftkitError, match="first 3 trials all failed.*no weights"):
        run_worker(search, broken)


def test_auto_help_imports_no_torch():
    code = ("import sys\nfrom peftkit.cli import main\ntry:\n    main(['auto', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "--budget DURATION" in result.stdout and result.stdout.strip().endswith("NO-TORCH"), result.stderr[-2000:]
