"""What a failure leaves behind: non-finite losses, interrupted saves, checkpoint rotation, disk errors.

In-process through the real CLI entry point (`peftkit.cli.main`) on the tiny model; the kill/signal tests with
real processes are in tests/e2e/test_never_lose_a_run.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftkit.model.adapter
import peftkit.tasks.classification
from peftkit.cli import main
from peftkit.core.atomic import replace_dir_atomic, storage_error, write_json_atomic
from peftkit.runs.folder import resume_point
from peftkit.trainer.guards import COMPLETE_MARKER, MarkCompleteCheckpoints
from tests.conftest import tiny_recipe, write_recipe
from tests.helpers.hooked_peftkit import nan_build_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "gemm_4bit_forward" not in line]
    return lines[-1]


def checkpoint_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"checkpoint-{step}" / "adapter_model.safetensors")


# ---------------------------------------------------------------------------------------------
# Non-finite loss
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fp16_blowup(tiny_llama_dir, sst2_small, tmp_path):
    """A real divergence, no hook: float16 weights and a constant learning rate of 20. Step 1 moves the LoRA B
    matrices to ~20 (finite, measured), and step 2's float16 activations overflow: its loss is NaN."""
    recipe = tiny_recipe(tiny_llama_dir, sst2_small, tmp_path / "run",
                         model={"dtype": "float16"}, evaluate={"enabled": False})
    recipe["train"].update(max_steps=6, learning_rate=20, lr_scheduler_type="constant", save_strategy="steps",
                           per_device_train_batch_size=2,
                           save_steps=1, save_total_limit=5,
                           # the measured divergence above is for fp16 compute and this batch order: keep both
                           bf16=False, train_sampling_strategy="random")
    return write_recipe(tmp_path / "recipe.yaml", recipe), tmp_path / "run"


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint_is_intact(fp16_blowup, capsys):
    recipe, run_dir = fp16_blowup
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert last_line(err).startswith("peftkit: error: training loss became nan at step 2; stopped before the "
                                     "weights were updated.")
    assert "resume with --resume" in last_line(err)
    good = run_dir / "checkpoints" / "checkpoint-1"
    assert (good / COMPLETE_MARKER).is_file()
    assert not (run_dir / "checkpoints" / "checkpoint-2").exists(), "no checkpoint of the NaN step"
    weights = checkpoint_weights(run_dir, 1)
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (run_dir / "adapter").exists() and not (run_dir / "train_summary.json").exists()


def test_skip_mode_still_stops_when_every_batch_is_bad(fp16_blowup, capsys):
    recipe, run_dir = fp16_blowup
    assert main(["train", str(recipe), "safety.on_nonfinite_loss=skip", "safety.max_skipped_batches=1"]) == 2
    out, err = capsys.readouterr()
    assert "non-finite loss (nan) at step 2: batch skipped (1/1)" in out
    assert last_line(err).startswith("peftkit: error: training loss became nan at step 3 after skipping 1 "
                                     "batches (safety.max_skipped_batches)")
    # the skipped step did not touch the weights: checkpoint-2 equals checkpoint-1
    for name, tensor in checkpoint_weights(run_dir, 2).items():
        assert torch.equal(tensor, checkpoint_weights(run_dir, 1)[name]), name


def test_skipped_batches_are_counted_across_a_resume(tiny_llama_dir, sst2_small, tmp_path, monkeypatch, capsys):
    """NaN (injected) at steps 2 and 4 with skip; SIGTERM (to this process) during step 5; --resume: 2 skipped in
    the summary, and the skipped steps left the weights as they were."""
    recipe = tiny_recipe(tiny_llama_dir, sst2_small, tmp_path / "run", safety={"on_nonfinite_loss": "skip"},
                         evaluate={"enabled": False}, keep_checkpoints="all")  # the test reads every checkpoint
    recipe["train"].update(max_steps=6, save_strategy="steps", save_steps=1, save_total_limit=10)
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    run_dir = tmp_path / "run"
    with_nan = nan_build_trainer(peftkit.tasks.classification.build_trainer, {2, 4}, None)

    def nan_then_sigterm_at_step_5(*args, **kwargs):
        trainer = with_nan(*args, **kwargs)
        trainer.model.register_forward_pre_hook(
            lambda module, inputs: os.kill(os.getpid(), signal.SIGTERM) if trainer.state.global_step == 4 else None)
        return trainer

    monkeypatch.setattr(peftkit.tasks.classification, "build_trainer", nan_then_sigterm_at_step_5)
    assert main(["train", str(path)]) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at step 5" in capsys.readouterr().err
    monkeypatch.setattr(peftkit.tasks.classification, "build_trainer", with_nan)
    assert main(["train", str(path), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "checkpoint-5" in out
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["skipped_nonfinite_batches"] == 2 and summary["global_step"] == 6
    assert summary["resumed_from_step"] == 5
    for skipped in (2, 4):
        before, after = checkpoint_weights(run_dir, skipped - 1), checkpoint_weights(run_dir, skipped)
        assert all(torch.equal(after[n], before[n]) for n in after), f"skipped step {skipped} changed the weights"
    assert any(not torch.equal(a, b) for a, b in zip(checkpoint_weights(run_dir, 3).values(),
                                                     checkpoint_weights(run_dir, 2).values()))


# ---------------------------------------------------------------------------------------------
# Interrupted saves: the previous adapter, metrics and checkpoint survive
# ---------------------------------------------------------------------------------------------


class HalfWrittenThenFails(Exception):
    pass


def test_failure_in_the_middle_of_save_adapter_keeps_the_previous_adapter(tmp_path):
    final = tmp_path / "adapter"
    final.mkdir()
    save_file({"w": torch.ones(4)}, final / "adapter_model.safetensors")
    before = {p.name: p.read_bytes() for p in final.iterdir()}

    class Model:
        def save_pretrained(self, folder, safe_serialization=True):
            data = (final / "adapter_model.safetensors").read_bytes()
            (Path(folder) / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
            raise HalfWrittenThenFails("disk gone")

    with pytest.raises(HalfWrittenThenFails):
        peftkit.model.adapter.save_adapter(Model(), None, final)
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"], "the staging folder was left behind"


def test_failure_in_the_middle_of_write_json_atomic_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"accuracy": 0.9})
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # after the new text is written, before the rename
    with pytest.raises(OSError):
        write_json_atomic(path, {"accuracy": 0.1, "padding": "x" * 100_000})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failure_of_the_swap_in_replace_dir_atomic_restores_the_previous_folder(tmp_path, monkeypatch):
    final, new = tmp_path / "adapter", tmp_path / ".adapter.new"
    final.mkdir(), new.mkdir()
    (final / "a").write_text("old")
    (new / "a").write_text("new")
    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError):
        replace_dir_atomic(new, final)
    assert (final / "a").read_text() == "old"


def test_a_crash_between_the_renames_of_replace_dir_atomic_is_repaired_by_the_next_save(tmp_path):
    old_copy, final, new = tmp_path / ".adapter.old", tmp_path / "adapter", tmp_path / ".adapter.new"
    old_copy.mkdir(), new.mkdir()
    (old_copy / "a").write_text("old")  # what a kill between `final -> old` and `new -> final` leaves
    (new / "a").write_text("new")
    replace_dir_atomic(new, final)
    assert (final / "a").read_text() == "new" and not old_copy.exists()


def fake_checkpoint(folder: Path, step: int, complete: bool, truncated: bool = False) -> Path:
    path = folder / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.full((64,), float(step))}, path / "adapter_model.safetensors")
    if truncated:
        data = (path / "adapter_model.safetensors").read_bytes()
        (path / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    if complete:
        (path / COMPLETE_MARKER).write_text(str(step))
    return path


def test_resume_skips_a_half_written_newest_checkpoint(tmp_path, capsys):
    good = fake_checkpoint(tmp_path, 4, complete=True)
    broken = fake_checkpoint(tmp_path, 8, complete=False, truncated=True)
    assert resume_point(tmp_path, resume=True, recipe_source="r.yaml") == str(good)
    assert not broken.exists()
    assert f"removing incomplete checkpoint {broken}" in capsys.readouterr().out
    assert load_file(good / "adapter_model.safetensors")["w"][0] == 4


def test_without_resume_checkpoints_are_an_error_not_a_silent_restart(tmp_path):
    fake_checkpoint(tmp_path, 4, complete=True)
    with pytest.raises(Exception, match=r"already has checkpoints \(latest: checkpoint-4\).*peftkit train r.yaml "
                                        r"--resume"):
        resume_point(tmp_path, resume=False, recipe_source="r.yaml")


# ---------------------------------------------------------------------------------------------
# Checkpoint rotation never leaves the run without a complete checkpoint
# ---------------------------------------------------------------------------------------------


class State:
    def __init__(self, step, best=None):
        self.global_step, self.best_model_checkpoint, self.is_world_process_zero = step, best, True


class Args:
    def __init__(self, output_dir):
        self.output_dir = str(output_dir)


def test_new_checkpoint_is_marked_before_any_old_one_is_deleted(tmp_path, monkeypatch):
    """save_total_limit: 1 used to let the Trainer delete checkpoint-4 before checkpoint-8 was marked: a kill
    in between left no complete checkpoint and --resume restarted from step 0."""
    import peftkit.trainer.guards

    fake_checkpoint(tmp_path, 4, complete=True)
    fake_checkpoint(tmp_path, 8, complete=False)  # just written by the Trainer, not yet marked
    real_rmtree = peftkit.trainer.guards.shutil.rmtree

    def rmtree_checking_the_order(path, **kwargs):
        assert (tmp_path / "checkpoints" / "checkpoint-8" / COMPLETE_MARKER).is_file(), "deleted before marking"
        real_rmtree(path, **kwargs)

    monkeypatch.setattr(peftkit.trainer.guards.shutil, "rmtree", rmtree_checking_the_order)
    MarkCompleteCheckpoints(keep=1).on_save(Args(tmp_path / "checkpoints"), State(8), None)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-8"]


def test_rotation_counts_only_complete_checkpoints_and_keeps_the_best(tmp_path):
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, step, complete=True)
    fake_checkpoint(tmp_path, 7, complete=False)  # a leftover: never counted, never deleted here
    fake_checkpoint(tmp_path, 8, complete=False)
    best = str(tmp_path / "checkpoints" / "checkpoint-2")
    MarkCompleteCheckpoints(keep=2).on_save(Args(tmp_path / "checkpoints"), State(8, best=best), None)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-7",
                                                                           "checkpoint-8"]


def test_trainer_rotation_is_off_and_peftkit_rotation_gets_the_recipe_limit(tiny_llama_dir, sst2_small, tmp_path):
    from peftkit.recipe import load_recipe

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_llama_dir, sst2_small, tmp_path / "run")),
                         ["train.save_total_limit=3"])
    args = peftkit.tasks.classification.training_arguments(recipe, tmp_path / "run")
    assert args.save_total_limit is None
    assert recipe.to_dict()["train"]["save_total_limit"] == 3, "the resolved recipe keeps the user's value"


# ---------------------------------------------------------------------------------------------
# Disk errors are recognised however the library reports them
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error,expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/r/metrics.json"),
     "could not write /r/metrics.json: No space left on device (disk full)"),
    (Exception("No space left on device (os error 28)"), "could not write into /r: No space left on device"),
    (RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                  "data/0: file write failed"), "could not write into /r ([enforce fail"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded (disk quota exceeded)"),
])
def test_storage_errors_get_one_clear_line(error, expected):
    message = storage_error(error, where="/r")
    assert message.startswith(expected) or expected in message, message
    assert "\n" not in message and "--resume" in message


def test_other_errors_are_not_mistaken_for_storage_errors():
    assert storage_error(OSError(errno.ENOENT, "No such file")) is None
    assert storage_error(ValueError("bad value")) is None
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert storage_error(wrapped).startswith("could not write a file: No space left")

