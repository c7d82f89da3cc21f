"""`peftkit auto TRAIN --budget 30m`: the session (its budget from the study), the workers, then the end: the
winner chosen on validation, evaluated once on the eval file, and the outputs written."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftkit.auto.budget import Clock, format_duration, parse_duration, record_spent, start_session
from peftkit.core.console import say
from peftkit.errors import PeftkitError


@dataclass
class AutoOptions:
    train_file: str
    budget: str
    eval_file: str | None = None
    models: str | None = None
    workers: int = 1
    storage: str | None = None
    out: str | None = None
    worker_index: int | None = None
    overrides: list[str] = field(default_factory=list)

    def out_dir(self) -> Path:
        return Path(self.out or f"auto-{Path(self.train_file).stem}")

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir() / 'auto.db').resolve()}"

    def command(self) -> list[str]:
        """The same command, as arguments after `peftkit` (for worker processes)."""
        args = ["auto", self.train_file, "--budget", self.budget, "--out", str(self.out_dir()),
                "--storage", self.storage_url()]
        if self.eval_file:
            args += ["--eval", self.eval_file]
        if self.models:
            args += ["--models", self.models]
        return args + list(self.overrides)


def auto_command(options: AutoOptions, clock: Clock = time.time) -> int:
    from peftkit.auto.arms import parse_models, prepare_arms
    from peftkit.auto.search import Search, fail_dead_local_trials, final_eval_share, open_study, run_worker

    started = clock()  # the budget counts from here: writing the base recipes is part of it
    total_s = parse_duration(options.budget)
    check_inputs(options)
    out = options.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    arms = prepare_arms(options.train_file, parse_models(options.models), out, options.overrides,
                        options.eval_file)
    study = open_study(options.storage_url(), arms, worker_index=options.worker_index or 0)
    search = Search(study, arms, out, final_eval_share(arms[0], options.eval_file, options.train_file),
                    arms[0].sweep.metric, clock)
    if options.worker_index is not None:  # a worker: the session's budget comes from the study
        run_worker(search)
        return 0
    already = float(study.user_attrs.get("spent_s", 0.0))
    budget = start_session(study, total_s, clock, started)
    retried = fail_dead_local_trials(study)
    if retried:
        say(f"auto: trial(s) {', '.join(map(str, retried))} of the killed session run again first")
    if not study.get_trials(deepcopy=False):  # each arm's first trial: its base recipe as init wrote it
        for arm in arms:
            study.enqueue_trial({"arm": arm.name, **arm.defaults}, user_attrs={"recipe_as_written": True})
    say(f"auto: {format_duration(total_s)} budget ({format_duration(already)} spent before), arms "
        f"{', '.join(a.name for a in arms)}; maximize validation {search.metric} on a split of the training rows "
        f"(the eval file is read once, for the winner); storage {options.storage_url()}")
    try:
        if options.workers == 1:
            run_worker(search)
        else:
            from peftkit.auto.search import echo_trial_lines
            from peftkit.sweep.driver import run_worker_processes

            with echo_trial_lines(search):  # the workers' trial lines on this console too
                run_worker_processes([[*options.command(), "--worker-index", str(k)]
                                      for k in range(options.workers)], out / "workers", "auto")
        finish(search, options, budget)
    finally:
        record_spent(study, budget)
    say(f"auto: done in {format_duration(budget.spent() - already)} this session; "
        f"{format_duration(budget.spent())} of the {format_duration(total_s)} budget spent")
    return 0


def check_inputs(options: AutoOptions) -> None:
    for flag, path in (("TRAIN", options.train_file), ("--eval", options.eval_file)):
        if path is not None and not Path(path).is_file():
            raise PeftkitError(f"{flag} {path}: file not found")
    if options.workers < 1:
        raise PeftkitError(f"--workers {options.workers}: at least 1")


# ---------------------------------------------------------------------------------------------
# The end: winner, final evaluation, outputs
# ---------------------------------------------------------------------------------------------


def finish(search, options: AutoOptions, budget) -> None:
    import optuna

    from peftkit.auto.leaderboard import write_best_recipe, write_leaderboard
    from peftkit.auto.search import trial_value

    study = search.study
    optuna.storages.fail_stale_trials(study)  # trials of killed workers: failed, not "running" forever
    winner = choose_winner(study)
    final = None
    if winner is not None:
        arm = search.arms[winner.params["arm"]]
        write_best_recipe(search, arm, winner, options)
        final = final_evaluation(study, winner, options.eval_file, search.out)
        link_winner(options.out_dir(), Path(winner.user_attrs["run_dir"]))
        say(f"auto: winner trial {winner.number} {arm.name}, validation {search.metric} "
            f"{trial_value(winner):.4f}; on {final['data']}: " + ", ".join(
                f"{k} {final[k]:.4f}" for k in ("accuracy", "macro_f1") if k in final)
            + f"; run folder {winner.user_attrs['run_dir']}")
    write_leaderboard(search, winner, final, budget)
    record_spent(study, budget)


def choose_winner(study):
    """The best complete trial on validation (a trial stopped at the deadline counts with its best value)."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(complete, key=lambda t: (t.value, -t.number) if pick is max else (t.value, t.number))


def final_evaluation(study, winner, eval_file: str | None, out: Path) -> dict[str, Any]:
    """The winner's adapter on the eval file (or the rows init held out), once: a resumed search whose winner did
    not change reuses the stored result instead of reading the eval file again."""
    stored = study.user_attrs.get("final_evaluation")
    if stored and stored.get("trial") == winner.number and stored.get("eval_file") == eval_file:
        return stored
    from peftkit.auto.search import output_to
    from peftkit.run import evaluate_saved_run

    run_dir = winner.user_attrs["run_dir"]
    with output_to(out / "logs" / "final-evaluation.log"):
        metrics = evaluate_saved_run(run_dir, eval_file)
    result = {"trial": winner.number, "eval_file": eval_file, "data": metrics.get("data_file", eval_file),
              **{k: float(metrics[k]) for k in ("accuracy", "macro_f1") if k in metrics}}
    study.set_user_attr("final_evaluation", result)
    return result


def link_winner(out: Path, run_dir: Path) -> None:
    """OUT/winner -> the winning trial's run folder (a relative link, replaced atomically)."""
    link, tmp = out / "winner", out / ".winner.tmp"
    try:
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(os.path.relpath(run_dir.resolve(), out.resolve()), tmp)
        os.replace(tmp, link)
    except OSError:  # no symlinks here (some filesystems): the path is in leaderboard.md and best_recipe.yaml
        pass
