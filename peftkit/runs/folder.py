"""The run folder: everything a later command (evaluate, merge, push) needs, side by side."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from peftkit.core.atomic import write_json_atomic, write_yaml_atomic
from peftkit.core.console import say
from peftkit.core.launch import is_main_process
from peftkit.errors import PeftkitError
from peftkit.recipe import Recipe, recipe_from_dict
from peftkit.runs.checkpoints import complete_checkpoints_in, incomplete_checkpoints_in
from peftkit.runs.layout import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS_FILE,
    CHECKPOINT_DIR,
    LABEL_MAP_FILE,
    LOCK_FILE,
    RECIPE_FILE,
    RUN_ARTIFACTS,
    SUMMARY_FILE,
    TRAINER_STATE_FILE,
)
from peftkit.runs.read import finished_run, read_run_recipe


def open_run_dir(recipe: Recipe, resume: bool) -> Path:
    """Create the run folder and take its lock, or refuse to mix a different run into an existing one; nothing in
    it is removed yet (``replace_previous_run`` does that once the new run is known to start).

    The same resolved recipe in an existing folder is the same run (a resume or a rerun); anything
    else would overwrite results, so it needs overwrite_output_dir: true. Checkpoints of the same run without
    ``--resume`` are refused here too, before anything is loaded.
    """
    run_dir = Path(recipe.output_dir)
    existing = run_dir / RECIPE_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise PeftkitError(f"output_dir {run_dir} is a file, not a folder; choose another output_dir")
    if existing.is_file() and not recipe.overwrite_output_dir:
        previous, added = with_current_defaults(read_run_recipe(existing))
        if comparable(previous) != comparable(recipe.to_dict()):
            changed = sorted(differences(comparable(previous), comparable(recipe.to_dict())))
            raise PeftkitError(
                f"output_dir {run_dir} already holds a different run (changed: {', '.join(changed[:5])}). "
                "Choose another output_dir, or set overwrite_output_dir: true to replace it")
        if added:
            say(f"{run_dir} was written by an earlier peftkit; settings its recipe did not have take today's "
                f"defaults: {', '.join(added[:8])}{' ...' if len(added) > 8 else ''}")
    elif foreign_files(run_dir) and not existing.is_file() and not recipe.overwrite_output_dir:
        raise PeftkitError(f"output_dir {run_dir} exists and is not a peftkit run folder; choose another "
                           "output_dir or set overwrite_output_dir: true")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".peftkit-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PeftkitError(f"output_dir {run_dir} is not writable ({e.strerror}); choose another folder") from None
    if is_main_process():
        hold_run_lock(run_dir)
    if not recipe.overwrite_output_dir:
        refuse_restart_over_checkpoints(run_dir, resume, recipe.source)
    return run_dir


def replace_previous_run(run_dir: Path, recipe: Recipe) -> Path:
    """With overwrite_output_dir, remove the previous run's files (main process only). Called after every check of
    the new run has passed, so a recipe that fails its checks never costs the previous run."""
    if is_main_process() and recipe.overwrite_output_dir and (run_dir / RECIPE_FILE).is_file():
        remove_run_artifacts(run_dir)
    return run_dir


def foreign_files(run_dir: Path) -> list[Path]:
    """What is in the folder apart from peftkit's own lock and write probe (which rank 0 of the same launch may
    have created a moment ago: other ranks must not take them for someone else's files)."""
    if not run_dir.is_dir():
        return []
    return [p for p in run_dir.iterdir() if not p.name.startswith(".peftkit-")]
_held_locks: dict[str, int] = {}


def hold_run_lock(run_dir: Path) -> None:
    """Lock the run folder for this process (until it exits), or refuse: one writer per run folder.

    Two trainings writing one folder corrupt it: checkpoints of both interleave, and `--resume` removes the
    other's half-written checkpoint as "incomplete". It happens more easily than it seems: SIGKILL of an
    `accelerate launch`/`torchrun` process leaves its ranks running (each rank has a session of its own), and a
    restarted job then meets them. A POSIX record lock is released by the kernel when its process dies, so a
    crashed run never leaves a stale lock; the main process (rank 0) holds it for the ranks of its launch.
    """
    import struct

    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no lock, as before
        return
    key = str(Path(run_dir).resolve())
    if key in _held_locks:  # the same process again (in-process callers): closing another fd would drop the lock
        return
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        try:
            query = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0)
            holder = f" (pid {struct.unpack('hhqqi4x', fcntl.fcntl(fd, fcntl.F_GETLK, query))[4]})"
        except (OSError, struct.error):
            pass
        os.close(fd)
        raise PeftkitError(f"output_dir {run_dir} is in use by another peftkit process{holder}; wait for it to "
                           "finish or stop it (an `accelerate launch` killed with -9 leaves its ranks running). "
                           "Two runs writing one folder would corrupt it") from None
    _held_locks[key] = fd


def remove_run_artifacts(run_dir: Path) -> None:
    """Remove what peftkit wrote (and only that), so an overwritten run never mixes with the old one."""
    import shutil

    for name in RUN_ARTIFACTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def with_current_defaults(previous: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A run folder's recipe as this peftkit resolves it, and the keys it did not have.

    A run written before a section existed (selection, imbalance, distill, ...) lacks those keys; compared as
    written, every such run looked different and `--resume` refused it after an upgrade. Keys the old recipe HAS
    are compared as they are; a recipe this version cannot read any more is compared as written.
    """
    try:
        resolved = recipe_from_dict(previous, f"the run folder's {RECIPE_FILE}").to_dict()
    except PeftkitError:
        return previous, []
    added = sorted(key for key in differences(comparable(previous), comparable(resolved))
                   if not has_key(previous, key))
    return resolved, added


def has_key(tree: dict[str, Any], dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def comparable(recipe_dict: dict[str, Any]) -> dict[str, Any]:
    """Keys that define what a run computes; switches that only steer the launcher are left out.

    output_dir is left out too: it says where the folder is, not what the run computes. A run folder that
    was moved (or named by a relative path from another directory) is the same run; treating it as a
    different one made `--resume` refuse it and suggested overwrite_output_dir, which deletes it.
    """
    out = json.loads(json.dumps(recipe_dict, default=str))
    out.pop("overwrite_output_dir", None)
    out.pop("output_dir", None)
    out.pop("keep_checkpoints", None)  # what is kept on disk at the end, not what the run computes
    return out


def differences(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return set().union(*(differences(a.get(k), b.get(k), f"{prefix}{k}.") for k in keys)) if keys else set()
    return set() if a == b else {prefix.rstrip(".")}


def save_run_files(run_dir: Path, recipe: Recipe, label_names: list[str] | None) -> None:
    write_yaml_atomic(run_dir / RECIPE_FILE, recipe.to_dict())
    if label_names is not None:
        write_json_atomic(run_dir / LABEL_MAP_FILE, {
            "id2label": {str(i): n for i, n in enumerate(label_names)},
            "label2id": {n: i for i, n in enumerate(label_names)},
        })


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-N folders of a run folder that were fully written (they carry the marker), oldest first."""
    return complete_checkpoints_in(Path(run_dir) / CHECKPOINT_DIR)


def incomplete_checkpoints(run_dir: Path) -> list[Path]:
    return incomplete_checkpoints_in(Path(run_dir) / CHECKPOINT_DIR)


def remove_incomplete_checkpoints(run_dir: Path, why: str) -> None:
    """Remove checkpoint folders without the marker (main process only): what a kill or a failure mid-save left."""
    import shutil

    if not is_main_process():
        return
    for broken in incomplete_checkpoints(run_dir):
        print(f"peftkit: removing incomplete checkpoint {broken} ({why})", flush=True)
        shutil.rmtree(broken, ignore_errors=True)


def refuse_restart_over_checkpoints(run_dir: Path, resume: bool, recipe_source: str | None) -> None:
    checkpoints = complete_checkpoints(run_dir)
    if not resume and checkpoints:
        raise PeftkitError(
            f"{run_dir} already has checkpoints (latest: {checkpoints[-1].name}). Continue that run with "
            f"`peftkit train {recipe_source or 'RECIPE'} --resume`, or set overwrite_output_dir: true to start over")


def resume_point(run_dir: Path, resume: bool, recipe_source: str | None) -> str | None:
    """The checkpoint to resume from, or None to start fresh. Never silently restarts over checkpoints.

    A checkpoint folder without the completion marker is what a kill during a save leaves behind:
    it is removed (on the main process) and the previous complete checkpoint is used.

    Why resuming is explicit (``--resume``) and not automatic -- a decision, for the lead:

    * open_run_dir proves the resolved recipe is the same, not the data: file paths are compared, file
      contents are not. Resuming on its own after someone regenerated train.tsv would silently continue a run
      on other data; ``--resume`` is the user saying "this is the same run".
    * A rerun without ``--resume`` over checkpoints is usually a mistake or a new experiment. The error names
      the exact command, comes before the model loads (seconds) and deletes nothing.
    * ``--resume`` is idempotent, so it is the switch for automation: with no checkpoint it starts at step 0,
      after a kill it continues from the last complete checkpoint, on a finished run it trains nothing and
      rewrites the same adapter and metrics (all tested). Job scripts that may be requeued (SLURM --requeue,
      spot/preemptible VMs, Kubernetes restarts) should always pass it: automatic resume exactly where it is
      wanted, without making it the default at the terminal.

    What would change this: a data fingerprint in the run folder (size and hash of each data file, checked on
    resume). With it, resuming automatically would be safe and could become the default, with --restart to
    opt out.
    """
    refuse_restart_over_checkpoints(run_dir, resume, recipe_source)
    checkpoints = complete_checkpoints(run_dir)
    if resume and checkpoints:
        checkpoints = loadable_checkpoints(run_dir, checkpoints)
    remove_incomplete_checkpoints(run_dir, "interrupted while saving")
    if not resume:
        return None
    if not checkpoints and finished_run(run_dir):
        raise PeftkitError(
            f"{run_dir} holds a finished run (adapter/ and {SUMMARY_FILE}) and no checkpoint to resume from (the "
            "recipe's keep_checkpoints removed them); nothing to resume. Evaluate it with `peftkit evaluate "
            f"{run_dir}`, or train again with overwrite_output_dir: true")
    if not checkpoints:
        print(f"peftkit: --resume: no complete checkpoint in {run_dir / CHECKPOINT_DIR}; starting from step 0",
              flush=True)
        return None
    print(f"peftkit: resuming from {checkpoints[-1]}", flush=True)
    return str(checkpoints[-1])


def folder_size(path: Path) -> int:
    """Bytes in the files under `path` (links not followed)."""
    total = 0
    for entry in Path(path).rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            total += entry.stat().st_size
    return total


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def finish_run_folder(run_dir: Path, keep: str, best: str | None = None) -> str:
    """At the end of a successful run (main process): keep checkpoints as the recipe's keep_checkpoints says
    (last | none | all; last keeps the best checkpoint too, which --resume of a finished run with a validation
    split reloads) and say how much the run folder holds. Returns the line to print."""
    import shutil

    run_dir = Path(run_dir)
    checkpoints = complete_checkpoints(run_dir)
    best_path = Path(best).resolve() if best else None
    drop = {"all": [], "last": [c for c in checkpoints[:-1] if c.resolve() != best_path],
            "none": checkpoints}[keep]
    freed = sum(folder_size(p) for p in drop)
    for path in drop:
        shutil.rmtree(path, ignore_errors=True)
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    if keep == "none" and checkpoint_dir.is_dir() and not any(checkpoint_dir.iterdir()):
        checkpoint_dir.rmdir()
    kept = complete_checkpoints(run_dir)
    parts = [f"adapter {human_size(folder_size(run_dir / ADAPTER_DIR))}"]
    if kept:
        parts.append(f"{len(kept)} checkpoint{'s' if len(kept) > 1 else ''} "
                     f"{human_size(sum(folder_size(p) for p in kept))}")
    line = f"run folder: {run_dir} ({human_size(folder_size(run_dir))}: {', '.join(parts)})"
    if drop:
        line += (f"; removed {len(drop)} checkpoint{'s' if len(drop) > 1 else ''} ({human_size(freed)}, "
                 f"keep_checkpoints: {keep})")
    elif kept and keep == "last":
        line += "; keep_checkpoints: none removes it (then --resume cannot reload the finished run)"
    return line


def checkpoint_damage(checkpoint: Path) -> str | None:
    """Why a complete checkpoint cannot be resumed from (a file damaged after it was marked), or None."""
    from peftkit.core.integrity import check_folder_files, read_json_object

    try:
        check_folder_files(checkpoint, torch_files=True)
        read_json_object(checkpoint / TRAINER_STATE_FILE)
        if not (checkpoint / ADAPTER_WEIGHTS_FILE).is_file() and not any(checkpoint.glob("adapter_model.*")):
            return f"{checkpoint}/{ADAPTER_WEIGHTS_FILE} is missing"
    except PeftkitError as e:
        return str(e)
    return None


def loadable_checkpoints(run_dir: Path, checkpoints: list[Path]) -> list[Path]:
    """--resume: the complete checkpoints up to the newest one that loads. A damaged newer one is skipped, said, and
    moved aside (checkpoint-N.damaged), never deleted: the run would otherwise write its new checkpoint-N into it."""
    damaged: list[tuple[Path, str]] = []
    for checkpoint in reversed(checkpoints):
        why = checkpoint_damage(checkpoint)
        if why is None:
            break
        damaged.append((checkpoint, why))
    else:
        details = "; ".join(f"{c.name}: {why}" for c, why in damaged)
        raise PeftkitError(f"--resume: no complete checkpoint loads in {run_dir / CHECKPOINT_DIR} ({details}). "
                           "Nothing was changed: restore the files, or start over with overwrite_output_dir: true")
    if is_main_process():
        for checkpoint, why in damaged:
            aside = checkpoint.with_name(f"{checkpoint.name}.damaged")
            n = 1
            while aside.exists():
                n += 1
                aside = checkpoint.with_name(f"{checkpoint.name}.damaged-{n}")
            os.replace(checkpoint, aside)
            print(f"peftkit: --resume: skipping {checkpoint.name} ({why}); kept as {aside.name}, not deleted",
                  flush=True)
    return [c for c in checkpoints if c not in {d for d, _ in damaged}]
