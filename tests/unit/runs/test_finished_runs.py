"""Run folders after training: evaluation output folders, checkpoint pruning with the run folder's size, and
--resume of a finished run."""

from __future__ import annotations

import pytest

from peftkit.errors import PeftkitError


def test_evaluation_folders_of_same_named_files_differ(tmp_path):
    from peftkit.evaluation.metrics import evaluation_dir

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = evaluation_dir(tmp_path, str(tmp_path / "a" / "test.csv"))
    two = evaluation_dir(tmp_path, str(tmp_path / "b" / "test.csv"))
    assert one != two and one.name.startswith("eval-test-") and two.name.startswith("eval-test-")
    assert evaluation_dir(tmp_path, str(tmp_path / "a" / "test.csv")) == one  # the same file: the same folder
    assert evaluation_dir(tmp_path, None) == tmp_path


def make_checkpoints(run_dir, steps, size=1000):
    from peftkit.trainer.guards import COMPLETE_MARKER

    for step in steps:
        folder = run_dir / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x" * size)
        (folder / COMPLETE_MARKER).write_text(str(step))
    (run_dir / "adapter").mkdir(exist_ok=True)
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"y" * 500)


@pytest.mark.parametrize("keep,left", [("last", ["checkpoint-20"]), ("none", []),
                                       ("all", ["checkpoint-10", "checkpoint-20"])])
def test_finished_run_keeps_checkpoints_as_asked_and_says_the_size(tmp_path, keep, left):
    from peftkit.runs.folder import complete_checkpoints, finish_run_folder

    make_checkpoints(tmp_path, [10, 20], size=2_000_000)
    line = finish_run_folder(tmp_path, keep)
    assert [p.name for p in complete_checkpoints(tmp_path)] == left
    assert line.startswith(f"run folder: {tmp_path} (")
    assert "adapter 500 B" in line
    if keep == "last":
        assert "removed 1 checkpoint (2.0 MB" in line and "1 checkpoint 2.0 MB" in line
    if keep == "none":
        assert "removed 2 checkpoints (4.0 MB" in line and not (tmp_path / "checkpoints").exists()


def test_resume_of_a_finished_run_without_checkpoints_says_it_is_finished(tmp_path):
    from peftkit.runs.folder import resume_point
    from peftkit.runs.layout import SUMMARY_FILE

    make_checkpoints(tmp_path, [])
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / SUMMARY_FILE).write_text("{}")
    with pytest.raises(PeftkitError, match="holds a finished run .* nothing to resume"):
        resume_point(tmp_path, True, "r.yaml")
