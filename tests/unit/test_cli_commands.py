"""The command line is composed from one list: each command folder's command.py declares its parser, and
building every parser imports nothing heavy (``peftkit --help`` stays instant)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from peftkit import cli

PACKAGE = Path(__file__).resolve().parents[2] / "peftkit"
HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "fastapi", "huggingface_hub")


def test_every_command_folder_is_in_the_one_list():
    folders = sorted(p.parent.name for p in PACKAGE.glob("*/command.py"))
    assert folders, "no command folder found"
    missing = [f for f in folders if importlib.import_module(f"peftkit.{f}.command").add_parser not in cli.COMMANDS]
    assert not missing, f"command folders not in cli.COMMANDS: {missing}"


def test_the_parser_offers_every_command_once():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "==SUPPRESS==" and hasattr(a, "choices") and a.choices)
    assert {"init", "train", "validate", "sweep", "augment", "evaluate", "merge", "merge-adapters", "push", "serve",
            "generate"} <= set(sub.choices)


def test_building_every_parser_imports_no_heavy_library():
    code = ("import sys; from peftkit.cli import build_parser; build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "", f"building the parsers imported {out}"
