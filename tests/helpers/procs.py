"""Real `peftkit train` processes for the never-lose-a-run tests: start, wait for a point of the run, kill, compare.

Every process gets planted secrets in its environment (PLANTED), so any test can scan what a run wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftkit.trainer.guards import COMPLETE_MARKER
from tests.conftest import REPO, tiny_recipe, write_recipe

HOOKED = REPO / "tests" / "helpers" / "hooked_peftkit.py"
CONFIGS = REPO / "accelerate_configs"

PLANTED = {
    "HF_TOKEN": "hf_PLANTEDsecretHFtoken7Qx2Lp9Zr4Vb",
    "HUGGING_FACE_HUB_TOKEN": "hf_PLANTEDsecretLEGACYtoken3Kd8Wm",
    "WANDB_API_KEY": "PLANTEDwandbKEY0f1e2d3c4b5a69788796a5b4c3d2e1f0",
}
# Launch variables of an enclosing launch must not leak into the children; no GPU: these tests prove the CPU path.
_LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
WAIT_S = 300


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("ACCELERATE_")}
    env.update(PLANTED, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def resume_recipe(model_dir: Path, data: dict[str, Path], out: Path, **sections) -> dict:
    """12 steps of 4 rows from a seeded 40-row subset (10 steps per epoch, so runs cross an epoch boundary),
    a checkpoint every 4 steps, one loss per step, dropout on."""
    recipe = tiny_recipe(model_dir, data, out)
    recipe["adapter"]["lora_dropout"] = 0.1
    recipe["data"]["max_train_samples"] = 40
    recipe["train"].update(max_steps=12, per_device_train_batch_size=4, save_strategy="steps", save_steps=4,
                           logging_steps=1, report_to=["tensorboard"])
    for key, value in sections.items():
        recipe.setdefault(key, {}).update(value)
    return recipe


@dataclass
class Proc:
    """A running or finished peftkit process with its output in files (no pipe can fill up and block it)."""

    popen: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = WAIT_S) -> int:
        return self.popen.wait(timeout=timeout)

    def wait_for(self, condition, what: str, timeout: float = WAIT_S) -> None:
        """Poll `condition()` every 20 ms; fail with the output if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.popen.poll() is not None:
                raise AssertionError(f"process ended (rc {self.popen.returncode}) before {what}:\n"
                                     f"{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                self.kill_all()
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def send(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def kill_all(self) -> None:
        """SIGKILL the process and every descendant at once, as a lost node does.

        Not os.killpg: torchrun starts each rank in a session of its own, so killing the launcher's process
        group leaves the ranks running (orphaned, they finished the run in a first version of this test).
        """
        import psutil

        try:
            root = psutil.Process(self.popen.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        for proc in family:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.popen.wait(timeout=60)
        psutil.wait_procs(family[1:], timeout=60)


def start(args: list[str], log_dir: Path, name: str, hooked: bool = False, launch: str | None = None,
          **env: str) -> Proc:
    """`python -m peftkit ARGS` (or tests/helpers/hooked_peftkit.py; or under
    `accelerate launch --config_file LAUNCH`)."""
    entry = [str(HOOKED)] if hooked else ["-m", "peftkit"]
    if launch:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / launch)]
        command += entry if hooked else ["-m", "peftkit"]
    else:
        command = [sys.executable, *entry]
    log_dir.mkdir(parents=True, exist_ok=True)
    out, err = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    popen = subprocess.Popen([*command, *args], cwd=REPO, env=child_env(**env), stdout=out.open("w"),
                             stderr=err.open("w"), start_new_session=True)
    return Proc(popen, out, err)


def run_to_end(args: list[str], log_dir: Path, name: str, **kwargs) -> Proc:
    proc = start(args, log_dir, name, **kwargs)
    try:
        rc = proc.wait()
    except subprocess.TimeoutExpired:
        proc.kill_all()
        raise
    assert rc == 0, f"{name}: rc {rc}\n{proc.stderr[-4000:]}"
    return proc


def marker(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"checkpoint-{step}" / COMPLETE_MARKER


def complete_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    return sorted(int(p.parent.name.split("-")[1]) for p in folder.glob(f"checkpoint-*/{COMPLETE_MARKER}"))


def step_logs(run_dir: Path, last_step: int) -> list[dict]:
    """The per-step log entries (loss, grad_norm, learning_rate, epoch) of the run's last checkpoint."""
    state = json.loads((run_dir / "checkpoints" / f"checkpoint-{last_step}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def assert_same_run(run_dir: Path, reference: Path, last_step: int = 12) -> None:
    """Bit-identical adapter, per-step log entries (hence the same batches in the same order) and metrics."""
    logs, ref_logs = step_logs(run_dir, last_step), step_logs(reference, last_step)
    assert [e["step"] for e in logs] == list(range(1, last_step + 1)), "a step was repeated or skipped"
    for entry, ref in zip(logs, ref_logs):
        assert entry == ref, f"step {ref['step']}: {entry} != uninterrupted {ref}"
    weights, ref_weights = adapter_tensors(run_dir), adapter_tensors(reference)
    assert weights.keys() == ref_weights.keys()
    different = [name for name in weights if not torch.equal(weights[name], ref_weights[name])]
    assert not different, f"{len(different)} adapter tensors differ, e.g. {different[:3]}"
    metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert metrics == ref_metrics
    summary, ref_summary = (json.loads((d / "train_summary.json").read_text()) for d in (run_dir, reference))
    for key in ("global_step", "skipped_nonfinite_batches", "train_examples"):
        assert summary[key] == ref_summary[key], f"train_summary.json {key}: {summary[key]} != {ref_summary[key]}"
    # the whole-run mean is re-summed in another order after a resume: equal up to float rounding of a sum of 12
    assert summary["train_loss"] == pytest.approx(ref_summary["train_loss"], rel=1e-12, abs=0)


def write_resume_recipe(path: Path, model_dir: Path, data: dict[str, Path], out: Path, **sections) -> Path:
    return write_recipe(path, resume_recipe(model_dir, data, out, **sections))
