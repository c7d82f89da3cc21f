"""`peftkit sweep`: the search space, pruning with real Optuna, two worker processes sharing one storage, a killed
sweep resuming, and the outputs (table, best recipe that `peftkit train` runs, plot)."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from peftkit.errors import PeftkitError  # noqa: E402
from peftkit.sweep.study import Sweep, candidates, recipe_values, report_callback, suggest  # noqa: E402
from tests.conftest import REPO, tiny_recipe, write_recipe  # noqa: E402


def _sweep_recipe(tmp_path, model_dir, data, **sweep):
    raw = tiny_recipe(model_dir, data, tmp_path / "sweep",
                      selection={"validation_fraction": 0.25, "evaluations": 2, "early_stopping_patience": None},
                      train={"max_steps": 4, "save_strategy": "steps"})
    raw["sweep"] = {"params": {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                               "adapter.r": [2, 4]},
                    "n_trials": 4, "workers": 1, "startup_trials": 2, **sweep}
    return write_recipe(tmp_path / "recipe.yaml", raw)


def test_space_edges_are_checked_as_recipes(tmp_path, sst2_small):
    path = _sweep_recipe(tmp_path, Path("model"), sst2_small)
    sweep = Sweep(str(path))
    assert sweep.metric == "macro_f1" and sweep.direction == "maximize"
    assert sweep.storage_url.startswith("sqlite:///") and sweep.storage_url.endswith("sweep/sweep.db")
    recipe = sweep.trial_recipe({"train.learning_rate": 3e-3, "adapter.r": 2}, "trial-0")
    assert recipe.output_dir.endswith("sweep/trials/trial-0") and recipe.adapter.r == 2
    assert recipe.evaluate.enabled is False and recipe.selection.validation_fraction == 0.25
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw["sweep"]["params"]["adapter.rank"] = [2, 4]
    write_recipe(path, raw)
    with pytest.raises(PeftkitError, match="unknown key 'adapter.rank'"):
        Sweep(str(path))
    with pytest.raises(PeftkitError, match="low"):
        candidates("train.learning_rate", {"low": 1, "high": 0.5})


def test_trials_without_a_validation_split_get_one(tmp_path, sst2_small):
    raw = tiny_recipe(Path("m"), sst2_small, tmp_path / "s")
    raw["sweep"] = {"params": {"adapter.r": [2, 4]}}
    sweep = Sweep(str(write_recipe(tmp_path / "r.yaml", raw)))
    recipe = sweep.trial_recipe({"adapter.r": 2}, "trial-0")
    assert recipe.selection.validation_fraction == 0.1 and recipe.train["load_best_model_at_end"] is True
    assert recipe.train["save_strategy"] != "no"


def test_the_first_trial_takes_the_recipes_own_values_inside_the_space(tmp_path, sst2_small, capsys):
    raw = tiny_recipe(Path("m"), sst2_small, tmp_path / "s", train={"learning_rate": 5e-3},
                      adapter={"lora_dropout": 0.3})
    raw["sweep"] = {"params": {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                               "adapter.r": [2, 4, 8], "adapter.lora_dropout": {"low": 0.0, "high": 0.2},
                               "train.label_smoothing_factor": [0.0, 0.1], "adapter.lora_alpha": [16, 32]}}
    sweep = Sweep(str(write_recipe(tmp_path / "r.yaml", raw)))
    assert recipe_values(sweep) == {"train.learning_rate": 5e-3, "adapter.r": 4}
    said = capsys.readouterr().out
    assert "adapter.lora_dropout=0.3 (outside the range)" in said and "train.label_smoothing_factor (not set" in said
    assert "adapter.lora_alpha=8 (not among the choices)" in said


def test_suggest_draws_ints_floats_and_structured_choices():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    assert isinstance(suggest(trial, "train.num_train_epochs", {"low": 1, "high": 3}), int)
    lr = suggest(trial, "train.learning_rate", {"low": "1e-4", "high": 1e-2, "log": True})
    assert isinstance(lr, float) and 1e-4 <= lr <= 1e-2
    words = [{"negative": " bad", "positive": " good"}, {"negative": " no", "positive": " yes"}]
    assert suggest(trial, "data.label_words", words) in words


def test_the_pruning_callback_stops_a_trial_below_the_median():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    for step, value in ((1, 0.8), (2, 0.9)):
        good.report(value, step)
    study.tell(good, 0.9)
    Args = type("Args", (), {})
    State = type("State", (), {"global_step": 1})
    bad = study.ask()
    callback = report_callback(bad, "macro_f1", "maximize", pruning=True, warmup=1)
    with pytest.raises(optuna.TrialPruned):
        callback.on_evaluate(Args(), State(), None, metrics={"eval_macro_f1": 0.3})
    assert callback.pruned_at == 1 and callback.best == 0.3
    ok = study.ask()
    keeps = report_callback(ok, "macro_f1", "maximize", pruning=True, warmup=1)
    keeps.on_evaluate(Args(), State(), None, metrics={"eval_macro_f1": 0.95})
    off = report_callback(study.ask(), "macro_f1", "maximize", pruning=False, warmup=1)
    off.on_evaluate(Args(), State(), None, metrics={"eval_macro_f1": 0.1})  # no pruning when it is off
    assert off.best == 0.1


def _trials(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("select number, state from trials order by number").fetchall()


@pytest.mark.distributed
def test_two_worker_processes_share_one_storage_and_write_the_outputs(tmp_path, tiny_llama_dir, sst2_small):
    path = _sweep_recipe(tmp_path, tiny_llama_dir, sst2_small, workers=2, pruning=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "peftkit", "sweep", str(path)], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "sweep"
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'sweep.db'}")
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 4 and len(trials) <= 5  # 4 in total; a second worker may start one more at the end
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2, "both workers ran trials"
    first = trials[0]  # the recipe as written (adapter.r 4; its learning rate is not set, so sampled)
    assert first.user_attrs.get("recipe_as_written") and first.params["adapter.r"] == 4
    assert "The recipe as written (trial 0)" in (out / "trials.md").read_text()
    for t in complete:
        assert (Path(t.user_attrs["run_dir"]) / "adapter" / "adapter_model.safetensors").is_file()
        assert not (Path(t.user_attrs["run_dir"]) / "metrics.json").exists(), "a trial never evaluates on the eval file"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == len(trials) and {"train.learning_rate", "adapter.r", "seconds"} <= set(rows[0])
    assert (out / "sweep.png").stat().st_size > 0 and "Parameter importance" in (out / "trials.md").read_text()
    best = (out / "best_recipe.yaml").read_text()
    assert f"validation macro_f1 {study.best_value:.4f}" in best and "the eval file was not used to choose" in best
    from peftkit.recipe import load_recipe

    recipe = load_recipe(out / "best_recipe.yaml")
    assert recipe.adapter.r == study.best_params["adapter.r"] and recipe.evaluate.enabled
    assert recipe.output_dir == str(out / "best") and recipe.train["learning_rate"] == study.best_params[
        "train.learning_rate"]


@pytest.mark.distributed
def test_a_killed_sweep_resumes_and_retries_the_interrupted_trial(tmp_path, tiny_llama_dir, sst2_small):
    path = _sweep_recipe(tmp_path, tiny_llama_dir, sst2_small, n_trials=2, heartbeat_seconds=1, pruning=False)
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw["train"]["max_steps"] = 40  # long enough to be killed in the middle of the first trial
    write_recipe(path, raw)
    db = tmp_path / "sweep" / "sweep.db"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "peftkit", "sweep", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "sweep" / "trials").glob("trial-0/checkpoints/checkpoint-*")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _trials(db) == [(0, "RUNNING")], "the kill must land inside the first trial"
    time.sleep(3)  # past the heartbeat's grace period (2 x 1 s)
    raw["train"]["max_steps"] = 4
    write_recipe(path, raw)
    result = subprocess.run([sys.executable, "-m", "peftkit", "sweep", str(path)], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 trials already done" in result.stdout or "0 trials already done" in result.stdout
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert trials[0].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry and retry[0].params == trials[0].params and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert "retry_of" in (tmp_path / "sweep" / "trials.csv").read_text()


def test_a_trial_stopped_by_a_signal_says_how_to_resume_the_sweep(tmp_path, sst2_small, monkeypatch):
    """The run's own stop message says `peftkit train ... --resume`; inside a sweep that is the wrong advice."""
    import peftkit.sweep.study as search
    from peftkit.errors import RunStopped

    def stopped_run(recipe, callbacks=()):
        raise RunStopped(f"stopped by SIGTERM at step 2. Resume with: peftkit train {recipe.source} --resume",
                         exit_code=143)

    monkeypatch.setattr("peftkit.run.run", stopped_run)   # objective() imports it when called
    sweep = Sweep(str(_sweep_recipe(tmp_path, Path("model"), sst2_small)))
    study = optuna.create_study(direction="maximize")
    run_trial = search.objective(sweep)
    with pytest.raises(RunStopped) as stop:
        study.optimize(run_trial, n_trials=1)   # study.stop() only works inside optimize
    assert "peftkit train" not in str(stop.value) and f"peftkit sweep {sweep.path}" in str(stop.value)
    assert stop.value.exit_code == 143 and run_trial.stopped_trial == 0
    assert study.get_trials()[-1].user_attrs["retry_of"] == 0   # enqueued to run again first
