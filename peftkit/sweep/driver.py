"""`peftkit sweep RECIPE`: an Optuna search over recipe keys, each trial a normal peftkit run.

The recipe's ``sweep:`` section declares the search space over dotted recipe keys and the budget. Every trial is
the recipe with the sampled values, run by ``peftkit.run.run`` (the same checklist and guards as ``peftkit train``)
in its own folder ``OUTPUT_DIR/trials/trial-N``. Trials choose on the validation split carved from the training
rows (``selection``; 10% when the recipe has none) and never evaluate on the eval file: evaluation is off in trials.
The best trial's recipe is written as ``OUTPUT_DIR/best_recipe.yaml``; ``peftkit train`` on it trains that recipe
and evaluates it once on the eval file.

Parallel and distributed: every worker is a process calling ``study.optimize`` against one shared storage.
``sweep.workers: N`` starts N worker processes on this machine (sqlite storage by default); on other machines run
``peftkit sweep RECIPE --worker-index K sweep.storage=URL`` against the same database URL (PostgreSQL/MySQL) or
JournalStorage file. The study's trial count (``sweep.n_trials``) is shared: every worker stops when the study has
that many finished, pruned or failed trials.

A killed sweep resumes: run the same command. The study is loaded from the storage; with sqlite/RDB storage each
worker sends a heartbeat, and a trial whose worker died is marked failed after 2x ``sweep.heartbeat_seconds`` and
retried once with the same parameters (in a new trial folder, from the start).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_text_atomic
from peftkit.core.console import say
from peftkit.errors import PeftkitError
from peftkit.sweep.study import BEST_RECIPE, Sweep, decoded, done_trials, enqueue_recipe_trial, load_study, run_worker

# ---------------------------------------------------------------------------------------------
# The command: workers, then the table, the best recipe and the plot
# ---------------------------------------------------------------------------------------------


def sweep_command(path: str, overrides: list[str], worker_index: int | None = None, report_only: bool = False) -> int:
    sweep = Sweep(path, overrides)
    if worker_index is not None:  # a worker (started by the sweep, or by hand on another machine)
        run_worker(sweep, worker_index)
        return 0
    sweep.out.mkdir(parents=True, exist_ok=True)
    study = load_study(sweep)  # creates the study once, before workers race to
    say(f"sweep {sweep.study_name}: {sweep.spec.n_trials} trials over {', '.join(sweep.spec.params)}; "
        f"{sweep.direction} validation {sweep.metric} (validation split: {sweep.validation_origin}; trials never "
        f"evaluate on the eval file); storage {sweep.storage_url}; {done_trials(study)} trials already done")
    if not report_only:
        enqueue_recipe_trial(sweep, study)
        if sweep.spec.workers == 1:
            run_worker(sweep, 0)
        else:
            start_workers(sweep)
    return write_outputs(sweep, load_study(sweep))


def start_workers(sweep: Sweep) -> None:
    """sweep.workers processes on this machine, each `peftkit sweep RECIPE --worker-index K`, logs in OUT/workers."""
    commands = [["sweep", sweep.path, *sweep.overrides, "--worker-index", str(k)] for k in range(sweep.spec.workers)]
    run_worker_processes(commands, sweep.out / "workers", f"sweep {sweep.study_name}")


def run_worker_processes(commands: list[list[str]], logs: Path, label: str) -> None:
    """`peftkit COMMAND...` once per command, in parallel, each logging to logs/worker-K.log; wait for all.
    SIGTERM or Ctrl-C here is passed on to every worker (each saves and stops its trial). Also `peftkit auto`'s."""
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    procs = []
    for k, args in enumerate(commands):
        log = (logs / f"worker-{k}.log").open("a", encoding="utf-8")
        command = [sys.executable, "-m", "peftkit", *args]
        procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    say(f"{label}: {len(procs)} worker processes (pids "
        f"{', '.join(str(p.pid) for p, _ in procs)}), logs in {logs}")
    def forward(signum, frame):  # SIGTERM to the sweep stops its workers too (each saves and stops its trial)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [p.wait() for p, _ in procs]
    except BaseException:
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, _ in procs:
            p.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for _, log in procs:
            log.close()
    if any(codes):
        say(f"{label}: worker exit codes {codes} (see {logs})")


def trial_rows(sweep: Sweep, study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        params = decoded(t.params, sweep.spec.params)
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     f"validation_{sweep.metric}": None if t.value is None else round(t.value, 4),
                     **{k: params.get(k) for k in sweep.spec.params},
                     "recipe_as_written": bool(t.user_attrs.get("recipe_as_written")),
                     "seconds": t.user_attrs.get("seconds"), "pruned_at_step": t.user_attrs.get("pruned_at_step"),
                     "retry_of": t.system_attrs.get("failed_trial", t.user_attrs.get("retry_of")),
                     "run_dir": t.user_attrs.get("run_dir")})
    return rows


def write_outputs(sweep: Sweep, study) -> int:
    import yaml
    from optuna.trial import TrialState

    rows = trial_rows(sweep, study)
    if not rows:
        raise PeftkitError(f"sweep {sweep.study_name}: no trials in {sweep.storage_url}")
    columns = list(rows[0])
    with (sweep.out / "trials.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    lines = [f"# Sweep {sweep.study_name}", "",
             f"{len(rows)} trials ({len(complete)} complete); {sweep.direction} validation {sweep.metric}, measured on "
             f"a validation split of {sweep.validation_origin} (seeded, stratified). No trial evaluated on the eval "
             "file.", "",
             "| " + " | ".join(c for c in columns if c != "run_dir") + " |",
             "|" + "---|" * (len(columns) - 1)]
    for r in rows:
        lines.append("| " + " | ".join("" if r[c] is None else str(r[c]) for c in columns if c != "run_dir") + " |")
    if complete:
        best = study.best_trial
        params = decoded(best.params, sweep.spec.params)
        raw = sweep.trial_raw(params, "best", final=True)
        header = (f"# peftkit train {sweep.out / BEST_RECIPE}\n"
                  f"# The best of {len(complete)} complete trials of sweep {sweep.study_name} ({sweep.path}): trial "
                  f"{best.number}, validation {sweep.metric} {best.value:.4f}\n"
                  f"# (validation split: {sweep.validation_origin}; the eval file was not used to choose).\n"
                  f"# Training this recipe evaluates it once on the eval file.\n"
                  f"# Chosen: {json.dumps(params)}\n")
        write_text_atomic(sweep.out / BEST_RECIPE, header + yaml.safe_dump(raw, sort_keys=False))
        lines += ["", f"Best: trial {best.number}, validation {sweep.metric} {best.value:.4f}, {json.dumps(params)}.",
                  *against_recipe(sweep, complete, best),
                  f"Train it and evaluate once on the eval file: `peftkit train {sweep.out / BEST_RECIPE}`"]
        say(f"best: trial {best.number}, validation {sweep.metric} {best.value:.4f} {json.dumps(params)}\n"
            f"best recipe: {sweep.out / BEST_RECIPE} (train it with: peftkit train {sweep.out / BEST_RECIPE}; it "
            "evaluates once on the eval file)")
    importances = param_importances(study, complete)
    if importances:
        lines += ["", "Parameter importance (fANOVA over complete trials): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in importances.items())]
    write_text_atomic(sweep.out / "trials.md", "\n".join(lines) + "\n")
    plot(sweep, rows, importances, sweep.out / "sweep.png")
    say(f"trials: {sweep.out / 'trials.csv'}, {sweep.out / 'trials.md'}; plot: {sweep.out / 'sweep.png'}")
    return 0


def against_recipe(sweep: Sweep, complete, best) -> list[str]:
    """The best trial against trial 0, the recipe as written, on the same validation split."""
    as_written = [t for t in complete if t.user_attrs.get("recipe_as_written")]
    if not as_written:
        return []
    base = as_written[0]
    if base.number == best.number:
        return [f"The recipe as written (trial {base.number}) is the best trial: the search did not beat it."]
    return [f"The recipe as written (trial {base.number}): validation {sweep.metric} {base.value:.4f}; the best trial "
            f"is {best.value - base.value:+.4f} against it on the same validation split."]


def param_importances(study, complete) -> dict[str, float]:
    if len(complete) < 3:
        return {}
    import optuna

    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):  # a single distinct value, too few trials
        return {}


def plot(sweep: Sweep, rows: list[dict[str, Any]], importances: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"validation_{sweep.metric}"
    fig, axes = plt.subplots(1, 2 if importances else 1, figsize=(11 if importances else 6, 4), squeeze=False)
    ax = axes[0][0]
    for state, marker in (("complete", "o"), ("pruned", "x"), ("fail", "s")):
        points = [(r["trial"], r[key]) for r in rows if r["state"] == state and r[key] is not None]
        if points:
            ax.scatter(*zip(*points), marker=marker, label=state)
    done = sorted((r["trial"], r[key]) for r in rows if r["state"] == "complete" and r[key] is not None)
    if done:
        best, running = [], None
        for _, v in done:
            running = v if running is None else (max(running, v) if sweep.direction == "maximize" else min(running, v))
            best.append(running)
        ax.step([t for t, _ in done], best, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {sweep.metric}")
    ax.set_title(f"sweep {sweep.study_name}")
    ax.legend()
    if importances:
        ax2 = axes[0][1]
        names = list(importances)[::-1]
        ax2.barh(names, [importances[n] for n in names])
        ax2.set_xlabel("importance (fANOVA)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
