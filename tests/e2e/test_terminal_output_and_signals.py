"""Hostile input, round two, where a real process is needed: what the terminal shows, and a signal while the model
loads. Judged and recorded like tests/unit/test_bad_input_fails_loudly.py (`python tests/helpers/hostile_counts.py`)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli, tiny_recipe, write_recipe
from tests.helpers.procs import child_env, start
from tests.unit.test_bad_input_fails_loudly import record

# Third-party lines that say nothing about the user's run (README, "Quiet by default").
NOISE = ("gemm_4bit_forward", "Setting accelerator to CPU", "FutureWarning", "LOAD REPORT", "is deprecated")
HEAD_LINE = "the classification head (score) is new and trained by this run"


def noise_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in NOISE)]


def judged(case_id: str, category: str, ok: bool, why: str) -> None:
    record(case_id, category, "ok" if ok else ("traceback" if "Traceback" in why else category_verdict(category)),
           why[-600:])
    assert ok, why[-3000:]


def category_verdict(category: str) -> str:
    return {"quiet": "noisy", "unclear": "unclear"}.get(category, "silent")


@pytest.fixture
def recipe(tiny_llama_dir, sst2_small, tmp_path):
    recipe = tiny_recipe(tiny_llama_dir, sst2_small, tmp_path / "run", evaluate={"enabled": False})
    recipe["train"]["max_steps"] = 1
    return write_recipe(tmp_path / "recipe.yaml", recipe)


def test_validate_prints_only_peftkit_lines(recipe):
    result = run_cli("validate", str(recipe), env={"OMP_NUM_THREADS": "1"})
    judged("e2e-validate-is-quiet", "quiet", result.returncode == 0 and not noise_in(result.stdout + result.stderr)
           and not result.stderr.strip(), f"rc {result.returncode}\n{result.stdout}\n{result.stderr}")


def test_train_prints_what_matters_and_names_the_new_head(recipe):
    result = subprocess.run([sys.executable, "-m", "peftkit", "train", str(recipe)], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=600)
    text = result.stdout + result.stderr
    judged("e2e-train-is-quiet", "quiet", result.returncode == 0 and not noise_in(text) and HEAD_LINE in text,
           f"rc {result.returncode}; noise {noise_in(text)}\n{text}")


@pytest.mark.slow
def test_verbose_shows_third_party_warnings(recipe):
    result = subprocess.run([sys.executable, "-m", "peftkit", "train", str(recipe), "--verbose"], cwd=REPO,
                            env=child_env(), capture_output=True, text=True, timeout=600)
    text = result.stdout + result.stderr
    judged("e2e-train-verbose-shows-the-load-report", "quiet", result.returncode == 0 and "LOAD REPORT" in text,
           f"rc {result.returncode}\n{text}")


@pytest.mark.slow
def test_evaluate_is_quiet(tiny_run):
    _, run = tiny_run
    result = subprocess.run([sys.executable, "-m", "peftkit", "evaluate", str(run)], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=600)
    text = result.stdout + result.stderr
    judged("e2e-evaluate-is-quiet", "quiet", result.returncode == 0 and not noise_in(text) and HEAD_LINE not in text,
           f"rc {result.returncode}; noise {noise_in(text)}\n{text}")


def test_sigterm_while_the_model_loads_says_so(recipe, tmp_path):
    loading = tmp_path / "loading"
    proc = start(["train", str(recipe)], tmp_path, "sigterm-in-load", hooked=True, PEFTKIT_TEST_SLOW_LOAD=str(loading))
    try:
        proc.wait_for(loading.is_file, "the model load to start")
        proc.send(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.popen.poll() is None:
            proc.kill_all()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    ok = (rc == 128 + signal.SIGTERM and len(lines) == 1 and lines[0].startswith("peftkit: stopped by SIGTERM")
          and "while loading" in lines[0])
    judged("e2e-sigterm-while-the-model-loads", "unclear", ok, f"rc {rc}; stderr {proc.stderr[-2000:]}")
