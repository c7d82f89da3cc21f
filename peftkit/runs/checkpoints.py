"""Checkpoint folders of a run: which exist, and which were fully written (they carry the completion marker).

Shared by the guard that writes the marker (guards.MarkCompleteCheckpoints) and the run folder that resumes
from marked checkpoints (runfolder.resume_point); neither needs the other.
"""

from __future__ import annotations

from pathlib import Path

COMPLETE_MARKER = ".peftkit-complete"


def checkpoint_folders(folder: Path) -> list[Path]:
    """checkpoint-N folders in the Trainer's output folder, by step."""
    folder = Path(folder)
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()] \
        if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def complete_checkpoints_in(folder: Path) -> list[Path]:
    """Checkpoint folders that were fully written, oldest first."""
    return [p for p in checkpoint_folders(folder) if (p / COMPLETE_MARKER).is_file()]


def incomplete_checkpoints_in(folder: Path) -> list[Path]:
    """Checkpoint folders without the marker: what a kill or a failure mid-save left."""
    return [p for p in checkpoint_folders(folder) if not (p / COMPLETE_MARKER).is_file()]
