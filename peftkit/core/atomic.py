"""Atomic file writes: a crash mid-save leaves the previous file (or none), never half of one."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_yaml_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def replace_dir_atomic(tmp_dir: str | Path, final_dir: str | Path) -> None:
    """Move a fully written folder into place; the old one is removed only after the new one is complete."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = final_dir.with_name(f".{final_dir.name}.old")
    if old.exists():
        if not final_dir.exists():  # a crash between the two renames below: the old folder is the only copy
            os.replace(old, final_dir)
        else:
            shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    try:
        os.replace(tmp_dir, final_dir)
    except BaseException:
        if old.exists() and not final_dir.exists():
            os.replace(old, final_dir)
        raise
    if old.exists():
        shutil.rmtree(old)


def staging_dir(final_dir: str | Path) -> Path:
    """A fresh sibling folder to write into before replace_dir_atomic (same filesystem, so rename is atomic)."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))


# A full disk, a quota or a file-size limit: the user can fix these, so they get one line, not a traceback.
STORAGE_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                  errno.EFBIG: "file-size limit, see ulimit -f", errno.EROFS: "read-only file system"}


def storage_error(error: BaseException, where: str | os.PathLike | None = None) -> str | None:
    """A one-line message when `error` (or what caused it) is a failed write for lack of space, else None.

    Python raises OSError with an errno; Rust libraries (tokenizers, safetensors) raise a plain Exception whose
    text ends in "(os error 28)"; torch.save raises RuntimeError "... file write failed" and loses the errno.
    `where` names the folder being written when the error does not say which file.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code, filename = None, None
        if isinstance(error, OSError):
            code, filename = error.errno, error.filename
        else:
            match = re.search(r"os error (\d+)", str(error))
            code = int(match.group(1)) if match else None
        advice = ("Free some space (or raise the limit) and run the same command again; an interrupted "
                  "`peftkit train` continues from its last complete checkpoint with --resume")
        if code in STORAGE_ERRNOS:
            target = filename or (f"into {where}" if where else "a file")
            return f"could not write {target}: {os.strerror(code)} ({STORAGE_ERRNOS[code]}). {advice}"
        if isinstance(error, RuntimeError) and "file write failed" in str(error):
            target = f"into {where}" if where else "a file"
            return f"could not write {target} ({str(error).splitlines()[0][:200]}); is the disk full? {advice}"
        error = error.__cause__ or error.__context__
    return None
