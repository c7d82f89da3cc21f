"""The search behind `peftkit sweep`: the search space, the sweep's recipe and its trials' recipes, and Optuna (storage,
study, objective, pruning, one worker). The command and what it writes are in ``sweep.py``."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from peftkit.core.console import say
from peftkit.errors import PeftkitError, RunStopped
from peftkit.recipe import Recipe, read_yaml, recipe_from_dict, validate
from peftkit.recipe.loading import apply_override, selection_metric, set_dotted
from peftkit.trainer.selection import validation_origin

TRIALS_DIR = "trials"
BEST_RECIPE = "best_recipe.yaml"
DEFAULT_VALIDATION_FRACTION = 0.1


# ---------------------------------------------------------------------------------------------
# The search space
# ---------------------------------------------------------------------------------------------


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    set_dotted(raw, dotted.split("."), value, f"sweep.params: {dotted!r}")


def _number(value: Any, key: str, what: str) -> float | int:
    if isinstance(value, bool):
        raise PeftkitError(f"sweep.params.{key}.{what} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PeftkitError(f"sweep.params.{key}.{what} must be a number, got {value!r}") from None


def candidates(key: str, space: Any) -> list[Any]:
    """The values a space can take at its edges (every choice, or low and high): what validation tries."""
    if isinstance(space, list):
        if not space:
            raise PeftkitError(f"sweep.params.{key}: an empty list of choices")
        return list(space)
    if isinstance(space, dict):
        unknown = set(space) - {"low", "high", "log", "step"}
        if unknown or "low" not in space or "high" not in space:
            raise PeftkitError(f"sweep.params.{key}: a range is {{low, high}} with optional log and step"
                               + (f"; unknown {sorted(unknown)}" if unknown else ""))
        low, high = _number(space["low"], key, "low"), _number(space["high"], key, "high")
        if not low < high:
            raise PeftkitError(f"sweep.params.{key}: low ({low}) must be below high ({high})")
        if space.get("log") and low <= 0:
            raise PeftkitError(f"sweep.params.{key}: a log range needs low > 0")
        return [low, high]
    raise PeftkitError(f"sweep.params.{key}: give a list of choices or a range {{low, high, log}}, got {space!r}")


def suggest(trial, key: str, space: Any) -> Any:
    """One value of `space` for `key` from the Optuna trial (choices that are not plain scalars travel as JSON)."""
    if isinstance(space, list):
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in space):
            return trial.suggest_categorical(key, space)
        return json.loads(trial.suggest_categorical(key, [json.dumps(v, sort_keys=True) for v in space]))
    low, high = _number(space["low"], key, "low"), _number(space["high"], key, "high")
    log, step = bool(space.get("log", False)), space.get("step")
    if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
        return trial.suggest_int(key, low, high, step=step or 1, log=log)
    return trial.suggest_float(key, float(low), float(high), step=None if step is None else float(step), log=log)


def decoded(params: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's params as recipe values (JSON-encoded choices decoded)."""
    out = {}
    for key, value in params.items():
        choices = space.get(key)
        if isinstance(choices, list) and isinstance(value, str) and value not in choices:
            value = json.loads(value)
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# The sweep's recipe and the trials' recipes
# ---------------------------------------------------------------------------------------------


class Sweep:
    """The recipe as read (raw, for trial recipes) and as validated, with the sweep's derived settings."""

    def __init__(self, path: str, overrides: list[str] = ()) -> None:
        raw = read_yaml(path)
        for item in overrides:
            apply_override(raw, item)
        self.path, self.overrides = path, list(overrides)
        self.recipe: Recipe = recipe_from_dict(raw, where=path)
        self.recipe.source = path
        validate(self.recipe)
        self.spec = self.recipe.sweep
        if not self.spec.params:
            raise PeftkitError(f"{path}: 'sweep.params' is empty; name the recipe keys to search, e.g. "
                               "train.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}")
        self.raw = raw
        self.out = Path(self.recipe.output_dir)
        self.metric = self.spec.metric or selection_metric(self.recipe.selection, self.recipe.task)
        self.direction = self.spec.direction or ("minimize" if self.metric == "loss" else "maximize")
        self.storage_url = self.spec.storage or f"sqlite:///{(self.out / 'sweep.db').resolve()}"
        self.study_name = self.spec.study_name or self.out.name
        for key, space in self.spec.params.items():  # every edge of every space must make a valid recipe
            for value in candidates(key, space):
                self.trial_recipe({key: value}, "check")
        self.validation_origin = validation_origin(self.trial_recipe({}, "check").selection)

    def trial_raw(self, params: dict[str, Any], name: str, *, final: bool = False) -> dict[str, Any]:
        raw = copy.deepcopy(self.raw)
        raw.pop("sweep", None)
        for key, value in params.items():
            set_key(raw, key, value)
        selection = raw.setdefault("selection", {}) or {}
        raw["selection"] = selection
        if not selection.get("validation_fraction") and not selection.get("validation_rows"):
            selection["validation_fraction"] = DEFAULT_VALIDATION_FRACTION
        selection.setdefault("metric", self.metric)
        train = raw.setdefault("train", {}) or {}
        raw["train"] = train
        if train.get("save_strategy") == "no":  # selection keeps the best checkpoint
            train.pop("save_strategy")
        raw["output_dir"] = str(self.out / ("best" if final else Path(TRIALS_DIR) / name))
        raw["overwrite_output_dir"] = True
        if not final:  # trials never evaluate on the eval file
            raw.setdefault("evaluate", {})["enabled"] = False
        return raw

    def trial_recipe(self, params: dict[str, Any], name: str) -> Recipe:
        recipe = recipe_from_dict(self.trial_raw(params, name), where=f"{self.path} (sweep trial {name}: {params})")
        recipe.source = self.path
        validate(recipe)
        return recipe


# ---------------------------------------------------------------------------------------------
# Optuna: storage, study, objective, pruning
# ---------------------------------------------------------------------------------------------


def open_storage(url: str, heartbeat_seconds: int):
    """sqlite/RDB (with a heartbeat, so trials of killed workers are failed and retried) or a JournalStorage file."""
    import optuna

    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    import inspect

    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    # optuna >= 4.9 names the retry hook heartbeat_stale_trial_callback (failed_trial_callback is deprecated)
    hook = ("heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
            else "failed_trial_callback")
    storages = optuna.storages
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_seconds,
                                      grace_period=2 * heartbeat_seconds, **{hook: retry(max_retry=1)})


def load_study(sweep: Sweep, worker_index: int = 0):
    import optuna

    spec = sweep.spec
    sampler = optuna.samplers.TPESampler(seed=sweep.recipe.seed + worker_index, n_startup_trials=spec.startup_trials)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials,
                                          n_warmup_steps=0, n_min_trials=1)
              if spec.pruning else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url,
                                                                                 spec.heartbeat_seconds),
                               sampler=sampler, pruner=pruner, direction=sweep.direction, load_if_exists=True)


def report_callback(trial, metric: str, direction: str, pruning: bool, warmup: int, step_of=None):
    """A TrainerCallback that reports each validation evaluation to Optuna, keeps the best, and prunes.

    ``step_of(state)`` is the step each value is reported at (default: the optimizer step; `peftkit auto`
    reports hundredths of an epoch, so trials of different batch sizes meet at the same pruning rungs)."""
    from transformers import TrainerCallback

    class ReportToOptuna(TrainerCallback):
        def __init__(self) -> None:
            self.values: list[tuple[int, float]] = []
            self.best: float | None = None
            self.pruned_at: int | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            import optuna

            value = (metrics or {}).get(f"eval_{metric}")
            if value is None:
                return control
            value = float(value)
            step = state.global_step if step_of is None else step_of(state)
            self.values.append((step, value))
            better = (lambda a, b: a > b) if direction == "maximize" else (lambda a, b: a < b)
            if self.best is None or better(value, self.best):
                self.best = value
            trial.report(value, step=step)
            if pruning and len(self.values) >= warmup and trial.should_prune():
                self.pruned_at = step
                trial.set_user_attr("pruned_at_step", step)
                trial.set_user_attr("evaluations", self.values)
                raise optuna.TrialPruned(f"validation {metric} {value:.4f} at step {step} is below the "
                                         "median of earlier trials")
            return control

    return ReportToOptuna()


def objective(sweep: Sweep):
    from peftkit.run import run

    def run_trial(trial) -> float:
        params = {key: suggest(trial, key, space) for key, space in sweep.spec.params.items()}
        name = f"trial-{trial.number}"
        recipe = sweep.trial_recipe(params, name)
        trial.set_user_attr("run_dir", recipe.output_dir)
        trial.set_user_attr("worker_pid", os.getpid())
        reporter = report_callback(trial, sweep.metric, sweep.direction, sweep.spec.pruning,
                                   sweep.spec.pruning_warmup_evaluations)
        say(f"sweep {sweep.study_name}: {name} {json.dumps(params)}")
        started = time.time()
        try:
            run(recipe, callbacks=[reporter])
        except RunStopped as stopped:
            # SIGTERM/SIGINT: this worker stops (not the next trial); the trial is run again first on resume.
            # The run's own message says `peftkit train ... --resume`, which is not how a sweep continues.
            trial.study.enqueue_trial(params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            trial.study.stop()
            run_trial.stopped_trial = trial.number
            raise RunStopped(f"{name} stopped by a signal; it runs again first when you resume the sweep: "
                             f"peftkit sweep {sweep.path}", exit_code=stopped.exit_code) from None
        finally:
            trial.set_user_attr("seconds", round(time.time() - started, 1))
        if reporter.best is None:
            raise PeftkitError(f"{name}: no validation evaluation reported eval_{sweep.metric}")
        trial.set_user_attr("evaluations", reporter.values)
        say(f"sweep {sweep.study_name}: {name} validation {sweep.metric} {reporter.best:.4f}")
        return reporter.best

    run_trial.stopped_trial = None
    return run_trial


def recipe_values(sweep: Sweep) -> dict[str, Any]:
    """The recipe's own value of each searched key, as Optuna params (keys whose value lies outside their space,
    or that the recipe leaves to a library default, are left to the sampler, and said)."""
    out, outside = {}, []
    for key, space in sweep.spec.params.items():
        value = recipe_value(sweep, key)
        if value is None:
            outside.append(f"{key} (not set in the recipe)")
        elif isinstance(space, list):
            scalar = all(v is None or isinstance(v, (bool, int, float, str)) for v in space)
            if value in space:
                out[key] = value if scalar else json.dumps(value, sort_keys=True)
            else:
                outside.append(f"{key}={value!r} (not among the choices)")
        elif _number(space["low"], key, "low") <= value <= _number(space["high"], key, "high"):
            out[key] = value
        else:
            outside.append(f"{key}={value!r} (outside the range)")
    if outside:
        say(f"sweep: the first trial uses the recipe's values; sampled instead: {', '.join(outside)}")
    return out


def recipe_value(sweep: Sweep, key: str) -> Any:
    """A dotted key's value in the recipe as written, else in the validated recipe (section defaults)."""
    node: Any = sweep.raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is not None:
        return node
    section, *rest = key.split(".")
    node = getattr(sweep.recipe, section, None)
    for part in rest:
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    return node if isinstance(node, (bool, int, float, str)) else None


def enqueue_recipe_trial(sweep: Sweep, study) -> None:
    """A new study's trial 0 is the recipe as written (sweep.first_trial_is_recipe), queued before any worker."""
    if sweep.spec.first_trial_is_recipe and not study.get_trials(deepcopy=False):
        study.enqueue_trial(recipe_values(sweep), user_attrs={"recipe_as_written": True})


def run_worker(sweep: Sweep, worker_index: int = 0) -> None:
    """One worker: trials until the study has sweep.n_trials finished, pruned or failed trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(sweep, worker_index)
    if done_trials(study) >= sweep.spec.n_trials:
        return
    run_trial = objective(sweep)
    study.optimize(run_trial, n_trials=sweep.spec.n_trials, catch=(Exception,),
                   callbacks=[stop_when_done(sweep.spec.n_trials)], gc_after_trial=True)
    if run_trial.stopped_trial is not None:
        raise RunStopped(f"sweep stopped by a signal; trial {run_trial.stopped_trial} will run again when "
                         f"you resume: peftkit sweep {sweep.path}", exit_code=128 + signal.SIGTERM)


def done_trials(study) -> int:
    """Trials that count against sweep.n_trials: complete, pruned, and failed ones that are not being run again
    (a trial stopped by a signal, or whose worker was killed, is retried and counts once, as its retry)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = ({t.system_attrs.get("failed_trial") for t in trials}
               | {t.user_attrs.get("retry_of") for t in trials}) - {None}
    return sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.number not in retried))


def stop_when_done(n_trials: int):
    """An optimize() callback: stop this worker once the study has n_trials counted trials (every worker's)."""

    def callback(study, trial) -> None:
        if done_trials(study) >= n_trials:
            study.stop()

    return callback
