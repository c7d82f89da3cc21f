"""Never lose a run: real `peftkit train` processes killed, signalled and resumed, compared with an uninterrupted run.

Recipe (tests/helpers/procs.resume_recipe): the tiny random Llama, 12 optimizer steps of 4 rows drawn from a seeded
40-row subset (10 steps per epoch, so resumed runs cross an epoch boundary), a checkpoint every 4 steps,
lora_dropout 0.1 (so the dropout RNG must be restored too), one log entry per step.

Tolerance: none. On this CPU a resumed run reads the same rows in the same order and restores the optimizer,
scheduler and RNG states, so every float operation is the one the uninterrupted run performed: we assert the
per-step log entries (loss, grad_norm, learning_rate, epoch) are equal as Python floats and every adapter tensor
is `torch.equal`. Equal per-step losses are also the data-position check: a re-seen or skipped batch changes that
step's loss and shifts every later step (the reference's 12 per-step losses are pairwise different, checked
below; on this data they differ by 2e-4 or more, float noise would be ~1e-7). Measured: exact, 0.0 difference in
every loss, grad norm and adapter tensor. The one exception is train_summary.json's whole-run train_loss, which a
resumed run sums in another order: equal within rel 1e-12 (before the fix it was off by 1.1e-3).
If a platform ever needs a tolerance (another BLAS that picks kernels by thread timing), it belongs in
tests/helpers/procs.assert_same_run, not here.

Every process runs with planted secrets in its environment (tests/helpers/procs.PLANTED); the last test scans what the
reference run and a `peftkit evaluate` wrote.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys

import pytest
from safetensors import SafetensorError
from safetensors.torch import load_file

from tests.helpers.procs import (
    PLANTED,
    REPO,
    assert_same_run,
    child_env,
    complete_steps,
    marker,
    run_to_end,
    start,
    step_logs,
    write_resume_recipe,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, sst2_small, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce exactly."""
    tmp = tmp_path_factory.mktemp("reference")
    recipe = write_resume_recipe(tmp / "recipe.yaml", tiny_llama_dir, sst2_small, tmp / "run")
    proc = run_to_end(["train", str(recipe)], tmp, "train")
    return tmp / "run", proc


@pytest.fixture
def recipe(tiny_llama_dir, sst2_small, tmp_path):
    return write_resume_recipe(tmp_path / "recipe.yaml", tiny_llama_dir, sst2_small, tmp_path / "run")


def test_reference_losses_identify_each_batch(reference):
    run_dir, _ = reference
    losses = [e["loss"] for e in step_logs(run_dir, 12)]
    assert len(losses) == 12 and len(set(losses)) == 12, "equal losses could hide a repeated batch"


def test_same_recipe_and_seed_give_bit_identical_runs(reference, recipe, tmp_path):
    """A second, fresh process: same adapter bits, same per-step logs, same metrics.json (dropout and subset on)."""
    run_to_end(["train", str(recipe)], tmp_path, "train")
    assert_same_run(tmp_path / "run", reference[0])
    for name in ("metrics.json", "adapter/adapter_model.safetensors", "data_report.json", "label_map.json"):
        assert (tmp_path / "run" / name).read_bytes() == (reference[0] / name).read_bytes(), name


def test_kill_9_after_a_checkpoint_then_kill_9_during_a_save_then_resume(reference, recipe, tmp_path):
    run_dir = tmp_path / "run"
    # 1. SIGKILL as soon as checkpoint-4 is complete (no chance to clean up: what an OOM kill or a lost node does)
    first = start(["train", str(recipe)], tmp_path, "killed")
    first.wait_for(marker(run_dir, 4).is_file, "checkpoint-4 to be complete")
    first.kill_all()
    assert first.popen.returncode == -signal.SIGKILL
    done = complete_steps(run_dir)
    assert done and done[-1] < 12, f"kill came too late: {done}"
    assert not (run_dir / "adapter").exists()

    # (without --resume these checkpoints are an error, not a silent restart:
    # tests/unit/test_bad_input_changes_nothing.py)

    # 2. resume, and SIGKILL it in the middle of writing its first checkpoint (half a safetensors file on disk)
    hang = tmp_path / "save-started"
    second = start(["train", str(recipe), "--resume"], tmp_path, "killed-in-save", hooked=True,
                   PEFTKIT_TEST_HANG_IN_SAVE=str(hang))
    second.wait_for(hang.is_file, "a checkpoint write to start")
    second.kill_all()
    assert f"resuming from {run_dir / 'checkpoints' / f'checkpoint-{done[-1]}'}" in second.stdout
    broken = run_dir / "checkpoints" / f"checkpoint-{done[-1] + 4}"
    assert hang.read_text() == str(broken / "adapter_model.safetensors")
    assert not (broken / ".peftkit-complete").exists()
    with pytest.raises(SafetensorError):
        load_file(broken / "adapter_model.safetensors")
    previous = run_dir / "checkpoints" / f"checkpoint-{done[-1]}"
    assert load_file(previous / "adapter_model.safetensors"), "the previous checkpoint must stay loadable"

    # 3. resume again: the broken checkpoint is removed, the previous one is used, the run ends as if never stopped
    third = run_to_end(["train", str(recipe), "--resume"], tmp_path, "resumed")
    assert f"removing incomplete checkpoint {broken}" in third.stdout
    assert f"resuming from {previous}" in third.stdout
    assert_same_run(run_dir, reference[0])


def test_sigterm_then_sigint_stop_cleanly_and_resume_finishes_the_run(reference, recipe, tmp_path):
    run_dir = tmp_path / "run"
    # SIGTERM (a scheduler's preemption) once training is under way: checkpoint at the end of the step, exit 143
    first = start(["train", str(recipe)], tmp_path, "sigterm")
    first.wait_for(lambda: "'loss'" in first.stdout, "the first logged step")
    first.send(signal.SIGTERM)
    assert first.wait() == 143, first.stderr[-3000:]
    stopped = complete_steps(run_dir)
    assert stopped and stopped[-1] < 12
    message = first.stderr.strip().splitlines()[-1]
    assert message == (f"peftkit: stopped by SIGTERM at step {stopped[-1]}; checkpoint saved in "
                       f"{run_dir / 'checkpoints'}. Resume with: peftkit train {recipe} --resume")

    # SIGINT (Ctrl-C) in the resumed run, after the next regular checkpoint: exit 130, again resumable
    second = start(["train", str(recipe), "--resume"], tmp_path, "sigint")
    second.wait_for(marker(run_dir, 8).is_file, "checkpoint-8")
    second.send(signal.SIGINT)
    assert second.wait() == 130, second.stderr[-3000:]
    stopped = complete_steps(run_dir)
    assert 8 <= stopped[-1] < 12, stopped
    assert f"stopped by SIGINT at step {stopped[-1]}" in second.stderr
    assert f"Resume with: peftkit train {recipe} --resume" in second.stderr
    assert "Traceback" not in first.stderr + second.stderr

    run_to_end(["train", str(recipe), "--resume"], tmp_path, "resumed")
    assert_same_run(run_dir, reference[0])


def test_disk_full_while_saving_gives_a_clear_error_and_leaves_nothing_half_written(recipe, tmp_path):
    """RLIMIT_FSIZE makes every write past 64 KiB fail with EFBIG, as a full disk fails with ENOSPC.

    The run's small files fit; the tokenizer (700 KB) does not: the failure comes while saving.
    """
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then raises OSError(EFBIG) instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "peftkit", "train", str(recipe), "train.max_steps=1",
                             "train.save_steps=1", "train.report_to=[]"], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert err[-1].startswith(f"peftkit: error: could not write into {run_dir}: File too large"), err[-1]
    leftovers = [p.relative_to(run_dir) for p in run_dir.rglob("*")
                 if ".tmp" in p.name or p.name.startswith(".adapter")]
    assert not leftovers, leftovers
    assert not (run_dir / "adapter").exists() and not (run_dir / "metrics.json").exists()
    assert complete_steps(run_dir) == [], "a checkpoint that failed to save must not be marked complete"


def test_planted_secrets_never_reach_the_run_folder_or_the_terminal(reference, monkeypatch, capsys):
    """HF_TOKEN, the legacy HUGGING_FACE_HUB_TOKEN and WANDB_API_KEY were in the environment of the reference
    `peftkit train` process (a real one, with TensorBoard on) and are planted for `peftkit evaluate` here (through
    the CLI entry point, in-process to save a process start); neither lets them reach a file or the terminal."""
    import torch

    from peftkit.cli import main

    run_dir, train = reference
    for name, secret in PLANTED.items():
        monkeypatch.setenv(name, secret)
    assert main(["evaluate", str(run_dir)]) == 0
    evaluate = capsys.readouterr()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    # what could plausibly carry a token: pickled TrainingArguments, TensorBoard events (hparams, args text)
    assert "training_args.bin" in names and any(n.startswith("events.out.tfevents") for n in names), names
    texts = {str(p): p.read_bytes() for p in files}
    texts.update({f"train {s}": getattr(train, s).encode() for s in ("stdout", "stderr")})
    texts.update({"evaluate stdout": evaluate.out.encode(), "evaluate stderr": evaluate.err.encode()})
    for name, secret in PLANTED.items():
        for needle in (secret, secret[-16:]):  # also a fragment, in case something truncates or masks the start
            found = [where for where, data in texts.items() if needle.encode() in data]
            assert not found, f"{name} found in {found}"
    # the pickled TrainingArguments are stored uncompressed, but check the field itself too
    for path in run_dir.rglob("training_args.bin"):
        args = torch.load(path, weights_only=False)
        assert args.hub_token is None and not any(secret in args.to_json_string() for secret in PLANTED.values())
